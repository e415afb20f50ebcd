"""The `finetune` stage: GLUE classification, extractive QA (SQuAD v1.1/v2.0) or token tagging
(CoNLL-2003). Each task trains with the same Lightning fit (best checkpoint and early stopping on
the task's main metric), scores its evaluation splits, and leaves the same outputs: an HF folder
in models/<name>, reports/metrics/<name>.json and a predictions JSONL (see training.py, outputs.py).
Every process of a multi-process run trains; global rank 0 alone scores the best weights on each
whole split and writes the outputs.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from datasets import DatasetDict
from transformers import (BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification,
                          GPT2ForSequenceClassification)

from lmforge.components.config import QA_TASKS, TAGGING_TASKS, FinetuneConfig, FinetuneRun, TrackingConfig
from lmforge.components.data import load_input
from lmforge.components.data.schemas import GLUE_TASKS
from lmforge.components.errors import LmforgeError
from lmforge.components.finetuning.checkpoints import load_init
from lmforge.components.finetuning.classification import ClassificationModule, encode_glue, glue_loader
from lmforge.components.finetuning.metrics import main_metric, task_score
from lmforge.components.finetuning.outputs import publish, run_metrics
from lmforge.components.finetuning.question_answering import QA_COLUMNS, QAModule, SquadScorer, encode_qa, qa_loader
from lmforge.components.finetuning.scoring import score_glue, score_qa, score_tagging
from lmforge.components.finetuning.token_classification import (TAGGING_COLUMNS, TaggingModule, encode_tagging, tag_names,
                                                        tagging_loader)
from lmforge.components.finetuning.training import fit
from lmforge.components.tracking import data_used
from lmforge.components.training.trainer import finished_model


def finetune(cfg: FinetuneConfig, run: FinetuneRun, init_dir: Path, raw_dir: Path, tracking: TrackingConfig) -> Path:
    """Fine-tune `run.model` on `run.task`, whichever kind of task it is, starting from the HF folder
    `init_dir` (run.init_dir(params.pretrain)); return the exported model folder."""
    if run.task in QA_TASKS:
        return finetune_qa(cfg, run, init_dir, raw_dir, tracking)
    if run.task in TAGGING_TASKS:
        return finetune_tagging(cfg, run, init_dir, raw_dir, tracking)
    return finetune_glue(cfg, run, init_dir, raw_dir, tracking)


def load_task_data(run: FinetuneRun, raw_dir: Path, splits: tuple[str, ...] = (),
                   columns: tuple[str, ...] = ()) -> DatasetDict:
    """The run's ingested dataset, checked to have `splits`, each with `columns`."""
    folder = Path(raw_dir) / (run.dataset or run.task)
    if not folder.exists():
        raise LmforgeError(f"task {run.task!r}: dataset {folder} not found; ingest it first (lmforge stage ingest)")
    data = load_input(folder)
    for split in splits:
        if split not in data:
            raise LmforgeError(f"task {run.task!r}: dataset {folder} has no {split!r} split (found {', '.join(data)})")
        missing = [c for c in columns if c not in data[split].column_names]
        if missing:
            raise LmforgeError(f"task {run.task!r}: dataset {folder} [{split}] has no column(s) {', '.join(missing)}; "
                               f"expected {', '.join(columns)} (found {', '.join(data[split].column_names)})")
    return data


def finetune_glue(cfg: FinetuneConfig, run: FinetuneRun, init_dir: Path, raw_dir: Path, tracking: TrackingConfig,
                  run_dir: Path | None = None) -> Path:
    """Fine-tune `run.model` on GLUE task `run.task` from `init_dir`; score every validation split
    (MNLI has two). `run_dir`: the training's folder (default cfg.run_dir(run.name))."""
    spec = GLUE_TASKS[run.task]
    data = load_task_data(run, raw_dir, ("train", spec.validation_splits[0]))
    labels = ["score"] if spec.is_regression else list(spec.label_names)
    gpt = run.model == "gpt"
    extra = {"problem_type": "regression"} if spec.is_regression else {}
    extra |= {"id2label": dict(enumerate(labels)), "label2id": {name: i for i, name in enumerate(labels)}}
    model_class = GPT2ForSequenceClassification if gpt else BertForSequenceClassification
    train = cfg.train
    # Seeded before the model is built: the seed fixes a new head's (or a scratch model's) weights too.
    L.seed_everything(train.seed, workers=True, verbose=False)
    model, tokenizer = load_init(run, init_dir, len(labels), model_class, max_seq_length=cfg.max_seq_length,
                                 **extra)
    if gpt:  # GPT-2 has no pad token: pad with end-of-text, which the head skips when finding the last token
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.eos_token_id
    if cfg.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)

    eval_splits = [s for s in spec.validation_splits if s in data]
    encoded = {s: encode_glue(data[s], run.task, tokenizer, cfg.max_seq_length, gpt) for s in ("train", *eval_splits)}
    train_loader = glue_loader(encoded["train"], tokenizer, train.batch_size, True, train.seed, train.num_workers)
    val_loader = glue_loader(encoded[eval_splits[0]], tokenizer, train.batch_size, False, train.seed)
    module = ClassificationModule(model, run.task, train, aux_lm_weight=run.aux_lm_weight)
    metric = main_metric(run.task)
    fitted = fit(module, train_loader, val_loader, cfg, run, tracking, metric, run_dir,
                 data_used(Path(raw_dir) / (run.dataset or run.task), data, ("train", *eval_splits)))
    best = finished_model(fitted.trainer, module, fitted.best_checkpoint)
    if best is None:  # not global rank 0: rank 0 scores and writes
        return Path(cfg.models_dir) / run.name

    scored = {s: score_glue(best, tokenizer, run.task, data[s], s, cfg, encoded[s]) for s in eval_splits}
    results = {split: r.metrics for split, r in scored.items()}
    predictions = [row for r in scored.values() for row in r.rows]
    score = sum(task_score(m) for m in results.values()) / len(results)
    metrics = run_metrics(run, metric, results, score, fitted.trainer.global_step)
    return publish(cfg, run, tracking, fitted.run_id, best, tokenizer, metrics, predictions)


def seeded(cfg: FinetuneConfig, run: FinetuneRun) -> FinetuneConfig:
    """cfg with the run's own seed, when it has one: the training, its data order and its new head."""
    if run.seed is None:
        return cfg
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": run.seed})})


def finetune_aside(cfg: FinetuneConfig, run: FinetuneRun, init_dir: Path, raw_dir: Path, tracking: TrackingConfig,
                   run_dir: Path) -> tuple[Path, dict]:
    """A GLUE fine-tuning whose every output stays in run_dir, not in models/ and reports/: for the
    reports that fine-tune on the side (crosslingual, when-BERT-learns). `run.init` pretrained
    starts from `init_dir`'s weights, scratch from its config. Returns (model folder, metrics)."""
    import json

    aside = seeded(cfg, run).model_copy(update={"models_dir": str(Path(run_dir) / "models"),
                                                "reports_dir": str(Path(run_dir) / "metrics"),
                                                "predictions_dir": str(Path(run_dir) / "predictions")})
    folder = finetune_glue(aside, run, init_dir, raw_dir, tracking, run_dir=Path(run_dir))
    return folder, json.loads((Path(aside.reports_dir) / f"{run.name}.json").read_text())


def finetune_qa(cfg: FinetuneConfig, run: FinetuneRun, init_dir: Path, raw_dir: Path, tracking: TrackingConfig) -> Path:
    """Fine-tune BERT from `init_dir` for extractive QA on `run.task` (squad, or squad_v2 with
    unanswerable questions)."""
    cfg.check_qa_windows()
    data = load_task_data(run, raw_dir, ("train", "validation"), QA_COLUMNS)
    version_2 = run.task == "squad_v2"
    train = cfg.train
    L.seed_everything(train.seed, workers=True, verbose=False)
    # Two outputs per token: its start and its end logit.
    model, tokenizer = load_init(run, init_dir, 2, BertForQuestionAnswering, max_seq_length=cfg.max_seq_length)

    train_windows = encode_qa(data["train"], tokenizer, cfg, train=True)
    val_windows = encode_qa(data["validation"], tokenizer, cfg, train=False)
    scorer = SquadScorer(data["validation"], val_windows, cfg, version_2)
    train_loader = qa_loader(train_windows, tokenizer, train.batch_size, True, train.seed, train.num_workers)
    val_loader = qa_loader(val_windows, tokenizer, train.batch_size, False)
    module = QAModule(model, run.task, train, 0, scorer)
    fitted = fit(module, train_loader, val_loader, cfg, run, tracking, "f1",
                 data=data_used(Path(raw_dir) / (run.dataset or run.task), data, ("train", "validation")))
    best = finished_model(fitted.trainer, module, fitted.best_checkpoint)
    if best is None:
        return Path(cfg.models_dir) / run.name

    scored = score_qa(best, tokenizer, run.task, data["validation"], "validation", cfg, val_windows, scorer)
    metrics = run_metrics(run, "f1", {"validation": scored.metrics}, scored.metrics["f1"], fitted.trainer.global_step)
    return publish(cfg, run, tracking, fitted.run_id, best, tokenizer, metrics, scored.rows)


def finetune_tagging(cfg: FinetuneConfig, run: FinetuneRun, init_dir: Path, raw_dir: Path,
                     tracking: TrackingConfig) -> Path:
    """Fine-tune BERT from `init_dir` for token tagging (NER) on `run.task`; score validation, and
    test when it has labels."""
    data = load_task_data(run, raw_dir, ("train", "validation"), TAGGING_COLUMNS)
    labels = tag_names(data["train"])
    train = cfg.train
    L.seed_everything(train.seed, workers=True, verbose=False)
    model, tokenizer = load_init(run, init_dir, len(labels), BertForTokenClassification,
                                 max_seq_length=cfg.max_seq_length, id2label=dict(enumerate(labels)),
                                 label2id={name: i for i, name in enumerate(labels)})

    eval_splits = [s for s in ("validation", "test") if s in data and set(TAGGING_COLUMNS) <= set(data[s].column_names)]
    folder = Path(raw_dir) / (run.dataset or run.task)
    encoded = {s: encode_tagging(data[s], tokenizer, cfg.max_seq_length, labels, f"{folder} [{s}]")
               for s in ("train", *eval_splits)}
    train_loader = tagging_loader(encoded["train"], tokenizer, train.batch_size, True, train.seed, train.num_workers)
    val_loader = tagging_loader(encoded["validation"], tokenizer, train.batch_size, False)
    module = TaggingModule(model, run.task, train, 0, labels)
    fitted = fit(module, train_loader, val_loader, cfg, run, tracking, "f1",
                 data=data_used(folder, data, ("train", *eval_splits)))
    best = finished_model(fitted.trainer, module, fitted.best_checkpoint)
    if best is None:
        return Path(cfg.models_dir) / run.name

    scored = {s: score_tagging(best, tokenizer, data[s], s, cfg, encoded[s]) for s in eval_splits}
    results = {split: r.metrics for split, r in scored.items()}
    predictions = [row for r in scored.values() for row in r.rows]
    metrics = run_metrics(run, "f1", results, results["validation"]["f1"], fitted.trainer.global_step)
    return publish(cfg, run, tracking, fitted.run_id, best, tokenizer, metrics, predictions)
