"""The `finetune` stage for GLUE tasks: train, keep the best checkpoint by the task's main metric,
score every validation split, export an HF folder, write metrics and predictions."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import lightning as L
import torch
from datasets import DatasetDict
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from transformers import BertForSequenceClassification, GPT2ForSequenceClassification

from components.data import load_input
from components.atomic import atomic_dir, write_json, write_text
from components.config import FinetuneConfig, FinetuneRun, TrackingConfig
from components.data.schemas import GLUE_TASKS
from components.errors import LmforgeError
from components.finetuning.checkpoints import load_init
from components.finetuning.classification import ClassificationModule, encode_glue, glue_loader, predict_dataset
from components.finetuning.metrics import glue_metrics, main_metric, task_score
from components.pretraining.trainer import resolve_accelerator, unwrap
from components.tracking import flatten_params, mlflow_logger

log = logging.getLogger(__name__)


def load_task_data(run: FinetuneRun, raw_dir: Path) -> DatasetDict:
    folder = Path(raw_dir) / (run.dataset or run.task)
    if not folder.exists():
        raise LmforgeError(f"task {run.task!r}: dataset {folder} not found; ingest it first (lmforge stage ingest)")
    return load_input(folder)


def finetune_glue(cfg: FinetuneConfig, run: FinetuneRun, raw_dir: Path, tracking: TrackingConfig) -> Path:
    """Fine-tune `run.model` on GLUE task `run.task`; return the exported model folder."""
    spec = GLUE_TASKS[run.task]
    data = load_task_data(run, raw_dir)
    select_split = spec.validation_splits[0]
    for split in ("train", select_split):
        if split not in data:
            raise LmforgeError(f"task {run.task!r}: dataset has no {split!r} split (found {', '.join(data)})")
    labels = ["score"] if spec.is_regression else list(spec.label_names)
    gpt = run.model == "gpt"
    extra = {"problem_type": "regression"} if spec.is_regression else {}
    extra |= {"id2label": dict(enumerate(labels)), "label2id": {name: i for i, name in enumerate(labels)}}
    model_class = GPT2ForSequenceClassification if gpt else BertForSequenceClassification
    model, tokenizer = load_init(run, cfg.models_dir, len(labels), model_class, **extra)
    if gpt:  # GPT-2 has no pad token: pad with end-of-text, which the head skips when finding the last token
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.eos_token_id

    train_cfg = cfg.train
    L.seed_everything(train_cfg.seed, workers=True, verbose=False)
    encoded = {s: encode_glue(data[s], run.task, tokenizer, cfg.max_seq_length, gpt)
               for s in ("train", *spec.validation_splits) if s in data}
    train_loader = glue_loader(encoded["train"], tokenizer, train_cfg.batch_size, True, train_cfg.seed, train_cfg.num_workers)
    val_loader = glue_loader(encoded[select_split], tokenizer, train_cfg.batch_size, False, train_cfg.seed)
    steps_per_epoch = math.ceil(len(train_loader) / train_cfg.accumulate_grad_batches)
    total = train_cfg.max_steps if train_cfg.max_steps > 0 else steps_per_epoch * train_cfg.max_epochs
    module = ClassificationModule(model, run.task, train_cfg, total)

    metric = main_metric(run.task)
    run_dir = Path("runs") / f"finetune-{run.name}"
    best = ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor=f"val/{metric}", mode="max", save_top_k=1,
                           filename="best", save_last=True, enable_version_counter=False)
    logger = mlflow_logger(tracking, f"finetune-{run.name}")
    trainer = L.Trainer(
        max_steps=total, max_epochs=-1, accelerator=resolve_accelerator(train_cfg.accelerator), devices=train_cfg.devices,
        strategy=train_cfg.strategy, num_nodes=train_cfg.num_nodes, precision=train_cfg.precision,
        accumulate_grad_batches=train_cfg.accumulate_grad_batches, gradient_clip_val=train_cfg.gradient_clip or None,
        val_check_interval=min(train_cfg.val_every_n_steps * train_cfg.accumulate_grad_batches, len(train_loader)),
        check_val_every_n_epoch=1 if train_cfg.val_every_n_steps * train_cfg.accumulate_grad_batches >= len(train_loader) else None,
        num_sanity_val_steps=0, log_every_n_steps=train_cfg.log_every_n_steps,
        callbacks=[best, EarlyStopping(monitor=f"val/{metric}", mode="max", patience=cfg.patience)],
        logger=logger if logger is not None else False, default_root_dir=str(run_dir), enable_model_summary=False,
    )
    if logger is not None:
        logger.log_hyperparams({**flatten_params(cfg.model_dump(mode="json", exclude={"runs"})), **run.model_dump()})
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    if best.best_model_path:  # the best validation score, not the last step
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)

    model = unwrap(module.model)
    results, predictions = {}, {}
    for split in spec.validation_splits:
        if split not in encoded:
            continue
        preds, gold = predict_dataset(model, glue_loader(encoded[split], tokenizer, train_cfg.batch_size, False, 0),
                                      spec.is_regression)
        results[split] = glue_metrics(run.task, preds, gold)
        predictions[split] = [
            {"split": split, **{c: row[c] for c in spec.text_columns}, "label": row["label"], "prediction": p.item()}
            for row, p in zip(data[split], preds)
        ]
    metrics = {"task": run.task, "model": run.model, "init": run.init, "main_metric": metric,
               **results, "score": sum(task_score(m) for m in results.values()) / len(results),
               "steps": trainer.global_step}

    out = Path(cfg.models_dir) / run.name
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    write_json(Path(cfg.reports_dir) / f"{run.name}.json", metrics)
    rows = [row for split_rows in predictions.values() for row in split_rows]
    write_text(Path(cfg.predictions_dir) / f"{run.name}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if logger is not None:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=tracking.uri)
        for split, values in results.items():
            for name, value in values.items():
                client.log_metric(logger.run_id, f"{split}/{name}", value)
        client.log_artifact(logger.run_id, str(Path(cfg.reports_dir) / f"{run.name}.json"), "reports")
    log.info("finetune %s: %s", run.name, metrics)
    return out
