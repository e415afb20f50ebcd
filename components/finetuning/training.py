"""What every fine-tuning run shares: the LightningModule's training half, length-grouped batches
padded per batch, and one Lightning fit that keeps the checkpoint best on the task's main metric.

A task module subclasses `FinetuneModule` and adds only validation: it gathers a pass's outputs
and logs `val/<metric>` from the task's real metric (GLUE's, SQuAD's F1, seqeval's F1), which
`ModelCheckpoint` and `EarlyStopping` watch.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from datasets import Dataset
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader
from transformers import get_scheduler
from transformers.trainer_pt_utils import LengthGroupedSampler

from components.config import FinetuneConfig, FinetuneRun, TrackingConfig, TrainConfig
from components.errors import LmforgeError
from components.pretraining.module import clip_without_scaler, use_fused_adamw
from components.pretraining.trainer import resolve_accelerator
from components.tracking import flatten_params, mlflow_logger


class FinetuneModule(L.LightningModule):
    """Trains any *For<Task> model whose batches carry their labels (so `model(**batch).loss` is the loss)."""

    def __init__(self, model, task: str, train: TrainConfig, total_steps: int):
        super().__init__()
        # from_pretrained returns a model in eval mode and Lightning keeps each submodule's mode:
        # without this, a pretrained init would fine-tune with dropout off.
        self.model, self.task, self.train_cfg, self.total_steps = model.train(), task, train, total_steps
        self.last_metrics: dict[str, float] = {}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip_without_scaler(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def forward(self, batch: dict):
        return self.model(**batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self(batch).loss
        if not torch.isfinite(loss):
            raise LmforgeError(f"finetune {self.task}: training loss became {loss.item()} at step {self.global_step}; "
                               "nothing was exported. Lower finetune.train.learning_rate")
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def log_metrics(self, metrics: dict) -> None:
        """Log a validation pass's scores as val/<name>. Nested ones (per entity) are for the report,
        and counts (SQuAD's total) are the same every pass."""
        self.last_metrics = {k: float(v) for k, v in metrics.items()
                             if isinstance(v, (int, float)) and not k.endswith("total")}
        for name, value in self.last_metrics.items():
            self.log(f"val/{name}", value, prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.train_cfg.learning_rate,
                                      weight_decay=self.train_cfg.weight_decay,
                                      fused=use_fused_adamw(self.device, self.train_cfg))
        scheduler = get_scheduler(
            "constant_with_warmup" if self.train_cfg.schedule == "constant" else self.train_cfg.schedule,
            optimizer, num_warmup_steps=min(self.train_cfg.warmup_steps, self.total_steps),
            num_training_steps=self.total_steps,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def padded_loader(data: Dataset, collator, batch_size: int, shuffle: bool, seed: int = 0,
                  num_workers: int = 0) -> DataLoader:
    """Batches padded to their longest row by `collator`; when shuffling, rows of similar length
    are batched together (the `length` column), so a batch of short rows costs a short batch.
    Without shuffling the order is the dataset's, which post-processing relies on."""
    columns = [c for c in data.column_names if c != "length"]
    sampler = (
        LengthGroupedSampler(batch_size, lengths=data["length"], generator=torch.Generator().manual_seed(seed))
        if shuffle else None
    )
    return DataLoader(data.select_columns(columns), batch_size=batch_size, sampler=sampler, collate_fn=collator,
                      num_workers=num_workers)


def with_lengths(data: Dataset) -> Dataset:
    """Add the `length` column that `padded_loader` groups training rows by."""
    return data.add_column("length", [len(ids) for ids in data["input_ids"]])


def total_steps(train: TrainConfig, train_loader: DataLoader) -> int:
    steps_per_epoch = math.ceil(len(train_loader) / train.accumulate_grad_batches)
    return train.max_steps if train.max_steps > 0 else steps_per_epoch * train.max_epochs


def fit(module: FinetuneModule, train_loader: DataLoader, val_loader: DataLoader, cfg: FinetuneConfig,
        run: FinetuneRun, tracking: TrackingConfig, metric: str) -> L.Trainer:
    """Train with early stopping on val/<metric>, then load the best checkpoint's weights into
    `module`. The returned trainer's `logger` is the run's MLFlowLogger, or None with tracking off."""
    train = cfg.train
    run_dir = Path("runs") / f"finetune-{run.name}"
    best = ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor=f"val/{metric}", mode="max", save_top_k=1,
                           filename="best", save_last=True, enable_version_counter=False)
    logger = mlflow_logger(tracking, f"finetune-{run.name}")
    # Validate every val_every_n_steps optimizer steps, or once an epoch when an epoch is shorter.
    every = train.val_every_n_steps * train.accumulate_grad_batches
    trainer = L.Trainer(
        max_steps=module.total_steps, max_epochs=-1, accelerator=resolve_accelerator(train.accelerator),
        devices=train.devices, strategy=train.strategy, num_nodes=train.num_nodes, precision=train.precision,
        accumulate_grad_batches=train.accumulate_grad_batches, gradient_clip_val=train.gradient_clip or None,
        val_check_interval=min(every, len(train_loader)), check_val_every_n_epoch=1 if every >= len(train_loader) else None,
        num_sanity_val_steps=0, log_every_n_steps=train.log_every_n_steps,
        callbacks=[best, EarlyStopping(monitor=f"val/{metric}", mode="max", patience=cfg.patience)],
        logger=logger if logger is not None else False, default_root_dir=str(run_dir), enable_model_summary=False,
    )
    if logger is not None:
        logger.log_hyperparams({**flatten_params(cfg.model_dump(mode="json", exclude={"runs"})), **run.model_dump()})
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "mlflow_run_id").write_text(logger.run_id)  # the registry's lineage points back to this run
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    if best.best_model_path:  # the best validation score, not the last step
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    return trainer
