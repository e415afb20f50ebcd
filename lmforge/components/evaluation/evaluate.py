"""The `evaluate` stage: score a fine-tuned model folder on a split without training.

Writes <out_dir>/<model>/ as one folder, atomically:
  metrics.json       {model, path, task, dataset, main_metric, score, <split>: metrics}, where each
                     split's metrics are what glue_metrics / squad_metrics (+ find_best_threshold for
                     v2) / seqeval_metrics give: the finetune stage's report for the same split
  predictions.jsonl  one row per example, as the finetune stage writes them: gold and prediction
  confusion.json     classification: {split: {labels, counts}}, gold down and predicted across
  *.png              confusion_<split> (classification), scatter_<split> (STS-B),
                     entity_f1_<split> (CoNLL), qa_<split> (SQuAD)
and, when tracking is on, an MLflow run `evaluate-<model>` with the metrics and these files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from transformers import (AutoConfig, AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, AutoTokenizer)

from lmforge.components.atomic import atomic_dir, write_json, write_text
from lmforge.components.config import QA_TASKS, TAGGING_TASKS, EvaluateConfig, FinetuneConfig, TrackingConfig
from lmforge.components.data import load_input
from lmforge.components.data.schemas import GLUE_TASKS
from lmforge.components.errors import LmforgeError
from lmforge.components.evaluation import plots
from lmforge.components.finetuning.scoring import SplitResult, score_glue, score_qa, score_tagging
from lmforge.components.finetuning.checkpoints import check_checkpoint
from lmforge.components.finetuning.metrics import main_metric, task_score
from lmforge.components.tracking import DataUsed, data_used

log = logging.getLogger(__name__)

# The head a task's model must have: loading a folder with another head would give a random one.
HEADS = {**{t: ("ForSequenceClassification", AutoModelForSequenceClassification) for t in GLUE_TASKS},
         **{t: ("ForQuestionAnswering", AutoModelForQuestionAnswering) for t in QA_TASKS},
         **{t: ("ForTokenClassification", AutoModelForTokenClassification) for t in TAGGING_TASKS}}


def evaluate_model(cfg: EvaluateConfig, raw_dir: Path, tracking: TrackingConfig,
                   finetune: FinetuneConfig | None = None) -> Path:
    """Score the fine-tuned model `cfg.model` on `cfg.split` (default: its task's validation splits).

    `finetune` gives the settings the score depends on, which must be those the model was
    fine-tuned with to reproduce its report: max_seq_length, train.batch_size, and for QA
    doc_stride, n_best, max_answer_length, null_score_threshold. Default: FinetuneConfig().
    Returns the output folder <cfg.out_dir>/<model folder name>.
    """
    ft = finetune or FinetuneConfig()
    folder = model_folder(cfg)
    task = model_task(folder)
    if task in QA_TASKS:
        ft.check_qa_windows()
    suffix, auto_class = HEADS[task]
    architectures = AutoConfig.from_pretrained(str(folder)).architectures or []
    if architectures and not any(a.endswith(suffix) for a in architectures):
        raise LmforgeError(f"evaluate {folder}: a {', '.join(architectures)} cannot be scored on {task!r}, "
                           f"which needs a *{suffix} model; pass a fine-tuned model folder")

    dataset = cfg.dataset or task
    data_dir = Path(raw_dir) / dataset
    if not data_dir.exists():
        raise LmforgeError(f"evaluate {folder.name}: dataset {data_dir} not found; "
                           "ingest it first (lmforge stage ingest)")
    data = load_input(data_dir)
    splits = _splits(cfg.split, task, data, data_dir)

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = auto_class.from_pretrained(str(folder), use_safetensors=True, attn_implementation="sdpa")
    _check_labels(model, task, folder)
    if model.config.model_type == "gpt2" and tokenizer.pad_token is None:  # as the finetune stage pads GPT
        tokenizer.pad_token = tokenizer.eos_token
    model.to("cuda" if torch.cuda.is_available() else "cpu")  # the device the finetune stage scored on

    results = {split: _score(model, tokenizer, task, data[split], split, ft) for split in splits}
    metric = main_metric(task)
    scores = [task_score(r.metrics) if task in GLUE_TASKS else r.metrics[metric] for r in results.values()]
    metrics = {"model": folder.name, "path": str(folder), "task": task, "dataset": dataset, "main_metric": metric,
               **{split: r.metrics for split, r in results.items()}, "score": float(np.mean(scores))}

    out = Path(cfg.out_dir) / folder.name
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_text(tmp / "predictions.jsonl",
                   "".join(json.dumps(row, ensure_ascii=False) + "\n" for r in results.values() for row in r.rows))
        _plot(results, task, folder.name, model.config, tmp)
    if tracking.enabled:
        _log_to_mlflow(tracking, metrics, results, out, run_labels(folder.name, task, model.config.model_type),
                       data_used(data_dir, data, splits))
    log.info("evaluate %s on %s: %s", folder.name, dataset, {s: r.metrics for s, r in results.items()})
    return out


def model_folder(cfg: EvaluateConfig) -> Path:
    """`cfg.model` under models_dir, or as a path when it names one (has a '/', or is absolute)."""
    name = Path(cfg.model)
    folder = name if name.is_absolute() or len(name.parts) > 1 else Path(cfg.models_dir) / name
    if not folder.is_dir():
        raise LmforgeError(f"evaluate: model folder {folder} not found; fine-tune it first (lmforge stage finetune) "
                           "or set evaluate.model to a fine-tuned Hugging Face model folder")
    check_checkpoint(folder, need_weights=True)
    return folder


def model_task(folder: Path) -> str:
    """The task a fine-tuned folder was trained on: config.finetuning_task, else the name's last
    '-' part (models/bert-scratch-sst2 -> sst2), for GLUE folders exported before the field was set."""
    recorded = json.loads((folder / "config.json").read_text()).get("finetuning_task")
    task = recorded or folder.name.rsplit("-", 1)[-1]
    if task not in HEADS:
        where = "its config.finetuning_task" if recorded else f"the end of its name {folder.name!r}"
        raise LmforgeError(f"evaluate {folder}: {where} names task {task!r}, expected one of {', '.join(HEADS)}; "
                           "set finetuning_task in its config.json")
    return task


def _splits(wanted: str | None, task: str, data, data_dir: Path) -> list[str]:
    if wanted is not None:
        if wanted not in data:
            raise LmforgeError(f"evaluate: dataset {data_dir} has no split {wanted!r} (found {', '.join(data)})")
        return [wanted]
    default = GLUE_TASKS[task].validation_splits if task in GLUE_TASKS else ("validation",)
    splits = [s for s in default if s in data]
    if not splits:
        raise LmforgeError(f"evaluate: dataset {data_dir} has none of {task!r}'s validation split(s) "
                           f"{', '.join(default)} (found {', '.join(data)}); set evaluate.split")
    return splits


def _check_labels(model, task: str, folder: Path) -> None:
    if task not in GLUE_TASKS:
        return
    spec = GLUE_TASKS[task]
    expected = 1 if spec.is_regression else len(spec.label_names)
    if model.config.num_labels != expected:
        raise LmforgeError(f"evaluate {folder}: its head has {model.config.num_labels} output(s) but task {task!r} "
                           f"has {expected}; is this folder fine-tuned on {task!r}?")


def _score(model, tokenizer, task: str, data, split: str, ft: FinetuneConfig) -> SplitResult:
    if task in GLUE_TASKS:
        return score_glue(model, tokenizer, task, data, split, ft)
    if task in QA_TASKS:
        return score_qa(model, tokenizer, task, data, split, ft)
    return score_tagging(model, tokenizer, data, split, ft)


def _plot(results: dict[str, SplitResult], task: str, name: str, config, out: Path) -> None:
    from sklearn.metrics import confusion_matrix

    confusion = {}
    for split, r in results.items():
        title = f"{name} on {task} [{split}]"
        if task == "stsb":
            m = r.metrics
            plots.score_scatter(r.gold, r.predicted, f"{title}\npearson {m['pearson']:.3f}, spearman "
                                f"{m['spearmanr']:.3f}", out / f"scatter_{split}.png")
        elif task in GLUE_TASKS:
            labels = [config.id2label[i] for i in range(config.num_labels)]
            counts = confusion_matrix(r.gold, r.predicted, labels=list(range(len(labels))))
            confusion[split] = {"labels": labels, "counts": counts.tolist()}
            summary = ", ".join(f"{k} {v:.3f}" for k, v in r.metrics.items())
            plots.confusion_plot(counts, labels, f"{title}\n{summary}", out / f"confusion_{split}.png")
        elif task in TAGGING_TASKS:
            plots.entity_f1_bars(r.metrics["per_entity"], r.metrics["f1"], f"{title}: entity F1",
                                 out / f"entity_f1_{split}.png")
        else:
            plots.qa_bars(r.metrics, f"{title}: EM / F1", out / f"qa_{split}.png")
    if confusion:
        write_json(out / "confusion.json", confusion)


def run_labels(name: str, task: str, model_type: str) -> dict[str, str]:
    """The MLflow labels of an evaluation of the folder `name`: its task, model family (bert, gpt) and
    init, read back from the name the finetune stage gives it (<model>[-<init>]-<task>...; a
    pretrained init is not named). An init the name does not tell is left empty."""
    model = {"gpt2": "gpt"}.get(model_type, model_type)
    init = ""
    if name.startswith(f"{model}-{task}"):
        init = "pretrained"
    elif name.startswith(f"{model}-") and f"-{task}" in name:
        init = name[len(model) + 1:name.rindex(f"-{task}")]
    return {"task": task, "model": model, "init": init, "stage": "evaluate"}


def _log_to_mlflow(tracking: TrackingConfig, metrics: dict, results: dict[str, SplitResult], out: Path,
                   labels: dict[str, str], data: DataUsed) -> None:
    from lmforge.components.tracking import client_run, log_data

    values = {}
    for split, r in results.items():
        for key, value in r.metrics.items():
            if key == "per_entity":  # tagging: F1 per entity type
                values |= {f"{split}/{kind}_f1": v["f1"] for kind, v in value.items()}
            elif isinstance(value, (int, float)):
                values[f"{split}/{key}"] = float(value)
    values["score"] = metrics["score"]
    with client_run(tracking, f"evaluate-{metrics['model']}", **labels) as (client, run_id):
        log_data(client, run_id, data)
        for key in ("model", "path", "task", "dataset"):
            client.log_param(run_id, key, metrics[key])
        client.log_param(run_id, "splits", ",".join(results))
        for key, value in values.items():
            client.log_metric(run_id, key, value)
        client.log_artifacts(run_id, str(out), "evaluation")
