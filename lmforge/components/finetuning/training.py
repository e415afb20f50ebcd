"""What every fine-tuning run shares: the LightningModule's training half, length-grouped batches
padded per batch, and one Lightning fit that keeps the checkpoint best on the task's main metric.

A task module subclasses `FinetuneModule` and says only what one validation example yields
(`validation_items`) and how a whole split of them scores (`score`). The base gathers the items of
every rank back into the split's order before scoring, so `val/<metric>` (which `ModelCheckpoint`
and `EarlyStopping` watch) is the task's real metric over the whole split, with one process or many.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from datasets import Dataset
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader
from transformers.trainer_pt_utils import LengthGroupedSampler

from lmforge.components.config import FinetuneConfig, FinetuneRun, TrackingConfig
from lmforge.components.tracking import DataUsed, mlflow_logger
from lmforge.components.training.distributed import gather_in_order
from lmforge.components.training.module import TrainingModule
from lmforge.components.training.trainer import RunBookkeeping, build_trainer, total_steps


class FinetuneModule(TrainingModule):
    """Trains any *For<Task> model whose batches carry their labels (so `model(**batch).loss` is the loss)."""

    nonfinite_hint = "Lower finetune.train.learning_rate"

    def __init__(self, model, task: str, train, total_steps: int = 0):
        # from_pretrained returns a model in eval mode and Lightning keeps each submodule's mode:
        # without .train(), a pretrained init would fine-tune with dropout off.
        super().__init__(model.train(), train, total_steps)
        self.task, self.stage_name = task, f"finetune {task}"
        self.last_metrics: dict[str, float] = {}
        self._items: list[Any] = []

    def forward(self, batch: dict):
        return self.model(**batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self(batch).loss
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_items(self, batch: dict) -> list[Any]:
        """One item per example of the batch (a prediction with its gold answer), in batch order."""
        raise NotImplementedError

    def score(self, items: list[Any]) -> dict:
        """The task's metrics over a whole split's items, in the split's order."""
        raise NotImplementedError

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._items += self.validation_items(batch)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._items = []
            return
        rows = len(self.trainer.val_dataloaders.dataset)
        items, self._items = gather_in_order(self._items, rows), []  # every rank: the whole split, in order
        if items:
            self.log_metrics(self.score(items))

    def log_metrics(self, metrics: dict) -> None:
        """Log a validation pass's scores as val/<name>. Nested ones (per entity) are for the report,
        and counts (SQuAD's total) are the same every pass. Every rank holds the same numbers."""
        self.last_metrics = {k: float(v) for k, v in metrics.items()
                             if isinstance(v, (int, float)) and not k.endswith("total")}
        for name, value in self.last_metrics.items():  # sync_dist: the mean of equal numbers, itself
            self.log(f"val/{name}", value, prog_bar=True, sync_dist=True)


# Tensor cores want sequence lengths in multiples of 8; a CPU gains nothing from it and would compute
# the extra padding (measured: 18% of the positions of a short-sentence task at batch 32, against 2%).
PAD_MULTIPLE = 8 if torch.cuda.is_available() else None


def padded_loader(data: Dataset, collator, batch_size: int, shuffle: bool, seed: int = 0,
                  num_workers: int = 0) -> DataLoader:
    """Batches padded to their longest row by `collator`; when shuffling, rows of similar length
    are batched together (the `length` column), so a batch of short rows costs a short batch.
    Without shuffling the order is the dataset's, which post-processing relies on."""
    columns = [c for c in data.column_names if c != "length"]
    # A list: `data["length"]` is a lazy Column, and the sampler's lookups one by one cost 0.4 s an
    # epoch of 5,000 rows (measured), 10 % of a tiny model's epoch.
    sampler = (
        LengthGroupedSampler(batch_size, lengths=data["length"][:], generator=torch.Generator().manual_seed(seed))
        if shuffle else None
    )
    return DataLoader(data.select_columns(columns), batch_size=batch_size, sampler=sampler, collate_fn=collator,
                      num_workers=num_workers)


def with_lengths(data: Dataset) -> Dataset:
    """Add the `length` column that `padded_loader` groups training rows by."""
    return data.add_column("length", [len(ids) for ids in data["input_ids"]])


@dataclass
class Fitted:
    trainer: L.Trainer
    best_checkpoint: str     # "" when no validation ran
    run_id: str | None       # the MLflow run (None with tracking off), on every rank


def fit(module: FinetuneModule, train_loader: DataLoader, val_loader: DataLoader, cfg: FinetuneConfig,
        run: FinetuneRun, tracking: TrackingConfig, metric: str, run_dir: Path | None = None,
        data: DataUsed | None = None) -> Fitted:
    """Train with early stopping on val/<metric>, keeping the checkpoint best on it. The run's folder
    (default cfg.run_dir(run.name): runs/finetune-<name>) also names its MLflow run, tagged with the
    run's task, model and init; `data` (what it trains and validates on) becomes the run's MLflow
    dataset inputs."""
    train = cfg.train
    run_dir = Path(run_dir or cfg.run_dir(run.name))
    best = ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor=f"val/{metric}", mode="max", save_top_k=1,
                           filename="best", save_last=True, enable_version_counter=False)
    logger = mlflow_logger(tracking, run_dir.name, task=run.task, model=run.model, init=run.init, stage="finetune")
    record = RunBookkeeping(logger, {**cfg.model_dump(mode="json", exclude={"runs"}), **run.model_dump()}, run_dir,
                            data=data)
    stop = EarlyStopping(monitor=f"val/{metric}", mode="max", patience=cfg.patience)
    trainer = build_trainer(train, run_dir, logger, [record, best, stop], max_steps=1, val_check_interval=1.0,
                            check_val_every_n_epoch=1)  # both set below, once the number of processes is known
    # Each process trains on its share of the batches; steps and validation count those.
    per_device = math.ceil(len(train_loader) / trainer.world_size)
    module.total_steps = trainer.fit_loop.epoch_loop.max_steps = total_steps(train, per_device)
    # Validate every val_every_n_steps optimizer steps, or once an epoch when an epoch is shorter.
    every = train.val_every_n_steps * train.accumulate_grad_batches
    trainer.val_check_interval = min(every, per_device)
    trainer.check_val_every_n_epoch = 1 if every >= per_device else None
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    return Fitted(trainer, best.best_model_path, record.run_id)
