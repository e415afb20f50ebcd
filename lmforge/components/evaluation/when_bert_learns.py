"""When does BERT learn? The lecture's open question, measured over the course of pretraining.

Each snapshot pretrain-bert kept (pretrain.bert.snapshot_steps, step 0 before any training) is
scored four ways, so the curve of "knowing" is visible step by step:
  masked_word_accuracy  whole held-out words filled in (the registry's pretraining score)
  probe                 a linear probe (logistic regression) on the frozen encoder's mean-pooled
                        last layer, for one task: what the representation holds without training it
  finetuned             the same task's score after fine-tuning the whole model (finetune.train)
  sense_gap             the why-BERT report's contextual sense separation of one word: the mean
                        similarity of same-sense uses minus different-sense uses
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from lmforge.components.atomic import write_json
from lmforge.components.config import FinetuneRun, Params
from lmforge.components.errors import LmforgeError
from lmforge.components.finetuning.metrics import glue_metrics, main_metric, task_score

log = logging.getLogger(__name__)


def when_bert_learns_report(params: Params) -> Path:
    """Write when_bert_learns.{json,png} (paths in params.when_bert_learns); return the JSON's path."""
    from lmforge.components.data.schemas import GLUE_TASKS
    from lmforge.components.evaluation.heldout import masked_word_accuracy
    from lmforge.components.finetuning.finetune import finetune_aside, load_task_data
    from lmforge.components.pretraining.snapshots import snapshot_folders
    from lmforge.components.tokenizer import load_corpus

    cfg, bert = params.when_bert_learns, params.pretrain.bert
    if not cfg.enabled:
        from lmforge.components.evaluation.plots import not_run

        return not_run("when_bert_learns", Path(cfg.out), Path(cfg.plot))
    raw_dir = Path(params.ingest.out_dir)
    snapshots = snapshot_folders(Path(bert.snapshots_dir))
    if not snapshots:
        raise LmforgeError(f"when-bert-learns: no snapshots in {bert.snapshots_dir}; set pretrain.bert.snapshot_steps "
                           "(e.g. [0, 100, 500]) and run pretrain-bert")
    _, heldout = load_corpus(raw_dir / bert.corpus, bert.text_column)
    texts = [t for t in heldout[bert.text_column] if t][: cfg.heldout_documents]
    split = GLUE_TASKS[cfg.probe_task].validation_splits[0]
    probe_data = load_task_data(FinetuneRun(task=cfg.probe_task), raw_dir, ("train", split))

    sentences = params.evaluate.sense_sentences()
    finetune = params.finetune
    if cfg.max_epochs is not None:
        finetune = finetune.model_copy(update={"train": finetune.train.model_copy(
            update={"max_epochs": cfg.max_epochs, "max_steps": -1})})
    rows = []
    for step, folder in snapshots.items():
        mlm = masked_word_accuracy(folder, texts, bert.max_seq_length, seed=params.registry.seed)
        run = FinetuneRun(task=cfg.finetune_task, model="bert", init="pretrained")
        _, finetuned = finetune_aside(finetune, run, folder, raw_dir, params.tracking,
                                      Path(cfg.run_dir) / f"step-{step}")
        model, tokenizer = encoder(folder)  # loaded once for the probe and the sense gap
        rows.append({"step": step, "masked_word_accuracy": mlm["masked_word_accuracy"],
                     "probe": linear_probe(model, tokenizer, probe_data, cfg.probe_task, split),
                     "finetuned": finetuned["score"],
                     "sense_gap": sense_gap(model, tokenizer, params.evaluate.why_bert_word, sentences)})
        log.info("when-bert-learns: step %d: %s", step, rows[-1])
    result = {"rows": rows, "probe_task": cfg.probe_task, "probe_metric": main_metric(cfg.probe_task),
              "finetune_task": cfg.finetune_task, "finetune_metric": main_metric(cfg.finetune_task),
              "word": params.evaluate.why_bert_word}
    path = write_json(Path(cfg.out), result)
    plot(result, Path(cfg.plot))
    if params.tracking.enabled:
        from lmforge.components.tracking import client_run

        with client_run(params.tracking, "when-bert-learns", {"lmforge.stage": "when-bert-learns"}) as (client, run_id):
            for r in rows:
                for key in ("masked_word_accuracy", "probe", "finetuned", "sense_gap"):
                    client.log_metric(run_id, key, r[key], step=r["step"])
            client.log_artifact(run_id, str(path), "reports")
            client.log_artifact(run_id, str(cfg.plot), "plots")
    return path


@torch.no_grad()
def features(model, tokenizer, data, task: str, batch_size: int = 64) -> np.ndarray:
    """The mean of the last layer over each example's tokens (a pair encoded as BERT pairs them)."""
    from lmforge.components.data.schemas import GLUE_TASKS

    columns = GLUE_TASKS[task].text_columns
    out = []
    for i in range(0, len(data), batch_size):
        rows = data[i:i + batch_size]
        enc = tokenizer(*[rows[c] for c in columns], truncation=True, max_length=128, padding=True,
                        return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(out)


def encoder(folder: Path):
    """(BertModel, tokenizer) of a snapshot, for the probe and the sense gap."""
    from transformers import AutoModel, AutoTokenizer

    return (AutoModel.from_pretrained(str(folder), use_safetensors=True, attn_implementation="sdpa").eval(),
            AutoTokenizer.from_pretrained(str(folder)))


def linear_probe(model, tokenizer, data, task: str, split: str) -> float:
    """The task's score of a logistic regression (ridge for STS-B) on frozen features of train,
    scored on `split`."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler
    from lmforge.components.data.schemas import GLUE_TASKS

    train, test = (features(model, tokenizer, data[s], task) for s in ("train", split))
    scale = StandardScaler().fit(train)
    regression = GLUE_TASKS[task].is_regression
    probe = Ridge() if regression else LogisticRegression(max_iter=2000)
    probe.fit(scale.transform(train), np.array(data["train"]["label"]))
    predictions = probe.predict(scale.transform(test))
    return task_score(glue_metrics(task, predictions, np.array(data[split]["label"])))


def sense_gap(model, tokenizer, word: str, sentences: list[str]) -> float | None:
    """Same-sense minus different-sense mean cosine of the word's contextual vectors (why_bert.py)."""
    from lmforge.components.evaluation.why_bert import cosine_matrix, sense_groups, sense_means, word_tokens, word_vectors

    positions = [word_tokens(tokenizer, word, s, i) for i, s in enumerate(sentences)]
    same, different = sense_means(cosine_matrix(word_vectors(model, tokenizer, sentences, positions)),
                                  sense_groups(len(sentences)))
    return None if same is None or different is None else same - different


def plot(result: dict, path: Path) -> Path:
    from lmforge.components.evaluation.plots import _pyplot, save_figure

    plt = _pyplot()
    steps = [r["step"] for r in result["rows"]]
    panels = [("masked_word_accuracy", "held-out masked-word accuracy"),
              ("probe", f"linear probe: {result['probe_task']} {result['probe_metric']}"),
              ("finetuned", f"fine-tuned: {result['finetune_task']} {result['finetune_metric']}"),
              ("sense_gap", f"sense separation of {result['word']!r} (same − different)")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (key, title) in zip(axes, panels):
        values = [np.nan if r[key] is None else r[key] for r in result["rows"]]
        ax.plot(steps, values, marker="o")
        ax.set(title=title, xlabel="pretraining step")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        if key != "sense_gap":
            ax.set_ylim(0, 1)
    fig.suptitle("When does BERT learn? Each pretraining snapshot, scored four ways")
    fig.tight_layout()
    return save_figure(fig, path)
