"""The `register` stage: one model of the workspace into the MLflow registry, through the gate.

`lmforge stage register -S registry.model=<name>` (what dvc.yaml's `register@<run>` and
`register-pretrained@<model>` stages run) registers a fine-tuning run's model or a pretrained
model, and writes the receipt `<registry.receipts_dir>/<name>.json`: the version, its aliases and
the gate's decision with both numbers. Every model has a scorer, so the gate can score the champion
again on today's evaluation data: a fine-tuned model by its task's main metric (as the evaluate
stage scores it), pretrained BERT by masked-word accuracy, GPT by bits per byte and seq2seq by
restored-word accuracy on the held-out documents of its corpus (lmforge/components/evaluation/heldout.py).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from lmforge.components.atomic import write_json
from lmforge.components.config import EvaluateConfig, Params, TrackingConfig
from lmforge.components.errors import LmforgeError
from lmforge.components.registry.gate import Candidate, register
from lmforge.components.registry.packaging import pipeline_task
from lmforge.components.tracking import tracking_client
from lmforge.components.training.run_record import read_run_record


@dataclass
class Scorer:
    """How a model is scored for the gate, and on what data."""

    metric: str
    higher_is_better: bool
    dataset_dir: Path                   # the ingested dataset whose validation split(s) it scores on
    score: Callable[[Path], float]      # a model folder -> its value on today's data


def pretrained_models(params: Params) -> dict[str, str]:
    """{registered name: pretrain section}: bert-pretrained -> bert, gpt-pretrained -> gpt."""
    return {f"{key}-pretrained": key for key in type(params.pretrain).model_fields}


def scorer(params: Params, name: str) -> Scorer:
    """The scorer of the model `name`: a finetune run, or a pretrained model."""
    raw = Path(params.ingest.out_dir)
    pretrained = pretrained_models(params)
    if name in pretrained:
        cfg = getattr(params.pretrain, pretrained[name])
        corpus = raw / cfg.corpus
        texts = lambda: heldout_texts(corpus, cfg.text_column, params.registry.heldout_documents)  # noqa: E731
        if pretrained[name] == "bert":
            from lmforge.components.evaluation.heldout import masked_word_accuracy

            return Scorer("masked_word_accuracy", True, corpus, lambda folder: masked_word_accuracy(
                folder, texts(), cfg.max_seq_length, cfg.masking.mlm_probability, params.registry.seed
            )["masked_word_accuracy"])
        if pretrained[name] == "seq2seq":
            from lmforge.components.evaluation.heldout import restored_word_accuracy

            return Scorer("restored_word_accuracy", True, corpus, lambda folder: restored_word_accuracy(
                folder, texts(), cfg.max_seq_length, cfg.corruption.infill_rate, cfg.corruption.span_lambda,
                params.registry.seed)["restored_word_accuracy"])
        from lmforge.components.evaluation.heldout import bits_per_byte

        return Scorer("bits_per_byte", False, corpus,
                      lambda folder: bits_per_byte(folder, texts(), cfg.block_size)["bits_per_byte"])
    run = params.finetune.runs.get(name)
    if run is None:
        raise LmforgeError(f"registry.model: {name!r} is neither a finetune run nor a pretrained model "
                           f"(known: {', '.join([*params.finetune.runs, *pretrained])})")
    from lmforge.components.finetuning.metrics import main_metric

    dataset = run.dataset or run.task
    return Scorer(main_metric(run.task), True, raw / dataset,
                  lambda folder: evaluate_value(folder, dataset, params))


def evaluate_value(folder: Path, dataset: str, params: Params) -> float:
    """A fine-tuned model folder's main metric on the dataset's validation splits, as the evaluate stage scores it."""
    from lmforge.components.evaluation.evaluate import evaluate_model

    with tempfile.TemporaryDirectory() as tmp:
        cfg = EvaluateConfig(model=str(folder), dataset=dataset, out_dir=tmp)
        out = evaluate_model(cfg, Path(params.ingest.out_dir), TrackingConfig(enabled=False), params.finetune)
        return validation_value(json.loads((out / "metrics.json").read_text()))


def heldout_texts(corpus_dir: Path, text_column: str, limit: int) -> list[str]:
    """The first `limit` non-blank documents of the corpus's validation split."""
    from lmforge.components.tokenizer import load_corpus

    _, heldout = load_corpus(corpus_dir, text_column)
    texts = [t for t in heldout["text"] if t and t.strip()]
    if not texts:
        raise LmforgeError(f"{corpus_dir} [validation]: no held-out text to score a pretrained model on")
    return texts[:limit]


def candidate(params: Params, name: str, score: Scorer | None = None) -> Candidate:
    """The model `name` of this workspace as a candidate: its folder, value, data hash and lineage."""
    from lmforge.components.tracking import parent_run

    score = score or scorer(params, name)
    from lmforge.components.versioning import DvcProject, git_state, params_hash, tree_hash

    pretrained = pretrained_models(params)
    if name in pretrained:
        cfg = getattr(params.pretrain, pretrained[name])
        model_dir, run_dir = params.pretrain.model_dir(pretrained[name]), Path(cfg.run_dir)
        section = cfg.model_dump(mode="json")
        labels = {"task": "pretrain", "model": pretrained[name], "init": "scratch"}
    else:
        run = params.finetune.runs[name]
        model_dir, run_dir = Path(params.finetune.models_dir) / name, params.finetune.run_dir(name)
        labels = {"task": run.task, "model": run.model, "init": run.init}
        section = {**params.finetune.model_dump(mode="json", exclude={"runs"}), **run.model_dump(mode="json")}
    if not model_dir.is_dir():
        raise LmforgeError(f"registry: model folder {model_dir} not found; run its stage first")
    if name in pretrained:  # scored here, by the same scorer that rescores its champion
        value = score.score(model_dir)
    else:  # the finetune stage scored it on the same splits with the same code as evaluate does
        value = validation_value(read_metrics(Path(params.finetune.reports_dir) / f"{name}.json"))

    training_run = read_run_record(run_dir).mlflow_run_id  # the lineage points back to the run that trained it
    dvc = DvcProject(".")
    commit, dirty = git_state(".")
    lineage = {"git.commit": commit, "git.dirty": str(dirty), "dvc.data": dvc.out_hash(params.ingest.out_dir) or "",
               "dvc.tokenizer": dvc.out_hash(params.tokenizer.out_dir) or "",
               "dvc.model": dvc.out_hash(model_dir) or tree_hash(model_dir), "params.hash": params_hash(section),
               "lineage.training_run": training_run or "",
               "lineage.flow_run": parent_run.get() or ""}
    return Candidate(name, model_dir, score.metric, float(value), score.higher_is_better,
                     validation_hash(score.dataset_dir), input_example(pipeline_task(model_dir), score.dataset_dir,
                                                                       model_dir), lineage, labels)


def register_model(params: Params) -> Path:
    """The stage: register `registry.model` through the gate; write and return its receipt."""
    cfg = params.registry
    receipt = Path(cfg.receipts_dir) / f"{cfg.model}.json"
    if not (cfg.enabled and params.tracking.enabled):
        off = "registry.enabled" if not cfg.enabled else "tracking.enabled"
        return write_json(receipt, {"model": f"{cfg.prefix}{cfg.model}", "registered": False,
                                    "reason": f"{off} is false"})
    score = scorer(params, cfg.model)
    done = register(candidate(params, cfg.model, score), cfg, params.tracking, score.score)
    client = tracking_client(params.tracking, f"registration of {done.model}")
    aliases = sorted(client.get_model_version(done.model, str(done.version)).aliases)  # as they stand now
    return write_json(receipt, {"registered": True, "aliases": aliases, **asdict(done)})


def validation_hash(dataset_dir: Path) -> str:
    """What the gate's numbers were measured on: a hash of the rows of the dataset's validation split(s),
    their Arrow files (not the metadata beside them, which names how the rows were read)."""
    from lmforge.components.versioning import tree_hash

    splits = sorted(p for p in dataset_dir.iterdir() if p.is_dir() and p.name.startswith("validation")) \
        if dataset_dir.is_dir() else []
    if not splits:
        raise LmforgeError(f"{dataset_dir}: no validation split to register a model against; "
                           "run `lmforge stage ingest` (it carves one from train)")
    return "-".join(tree_hash(p, "*.arrow") for p in splits)


def input_example(task: str, dataset_dir: Path, tokenizer_dir: Path):
    """A real row of the evaluation data, shaped as the served pipeline takes it."""
    from datasets import load_from_disk

    if task in ("fill-mask", "text-generation", "text2text-generation"):
        from transformers import AutoTokenizer

        text = load_from_disk(str(dataset_dir / "validation"))[0]["text"].split(".")[0].strip()
        if task == "text-generation":
            return " ".join(text.split()[:6])
        words = text.split()
        words[len(words) // 2] = AutoTokenizer.from_pretrained(str(tokenizer_dir)).mask_token
        return " ".join(words)
    split = sorted(p.name for p in dataset_dir.iterdir() if p.is_dir() and p.name.startswith("validation"))[0]
    row = load_from_disk(str(dataset_dir / split))[0]
    if task == "question-answering":
        return {"question": row["question"], "context": row["context"]}
    if task == "token-classification":
        return " ".join(row["tokens"])
    return next(v for k, v in row.items() if isinstance(v, str) and k != "idx")


def validation_value(metrics: dict) -> float:
    """A fine-tuned model's gate number: the main metric, averaged over validation splits (MNLI has two)."""
    splits = [v for k, v in metrics.items() if k.startswith("validation") and isinstance(v, dict)]
    return sum(s[metrics["main_metric"]] for s in splits) / len(splits)


def read_metrics(path: Path) -> dict:
    if not path.exists():
        raise LmforgeError(f"registry: metrics {path} not found; run the stage that writes it first")
    return json.loads(path.read_text())
