"""One pretraining run, shared by both objectives: the data module, resume, the fit, its metrics.

The Trainer, MLflow bookkeeping and checkpoint IO are the shared training layer's
(lmforge/components/training/); what is particular to pretraining is here: one long epoch of batches that a
resumed run continues exactly (per rank), checkpoints every few steps, and validation batches that
are the same whatever the number of processes, so its numbers are too.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Sampler

from lmforge.components.config import TrackingConfig, TrainConfig
from lmforge.components.console import CONSOLE
from lmforge.components.errors import LmforgeError
from lmforge.components.pretraining.collate import IndexedDataset, ResumableBatchSampler
from lmforge.components.pretraining.module import PretrainModule
from lmforge.components.pretraining.throughput import ThroughputLogger, measure_peak_flops
from lmforge.components.tracking import mlflow_logger
from lmforge.components.training.checkpoints import load_checkpoint, resumable
from lmforge.components.training.run_record import read_run_record
from lmforge.components.training.distributed import resolve_accelerator
from lmforge.components.training.trainer import RunBookkeeping, build_trainer, total_steps

log = logging.getLogger(__name__)


class ValidationBatches(Sampler[list[tuple[int, int]]]):
    """The first `n_batches` batches of the validation examples in order, dealt round-robin to the
    ranks; each keyed by its number, so its masks are the same with any number of processes."""

    def __init__(self, n_examples: int, batch_size: int, n_batches: int, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size = n_examples, batch_size
        self.batches = list(range(rank, n_batches, world_size))

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for b in self.batches:
            yield [(i, b) for i in range(b * self.batch_size, min((b + 1) * self.batch_size, self.n))]


class PretrainDataModule(L.LightningDataModule):
    """Train batches from a ResumableBatchSampler that starts where the restored run stopped."""

    def __init__(self, train, val, train_collate: Callable, val_collate: Callable, cfg: TrainConfig):
        super().__init__()
        self.train, self.val = train, val
        self.train_collate, self.val_collate = train_collate, val_collate
        self.cfg, self.total_batches = cfg, 0  # set by `fit`, once the number of processes is known

    def _world(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._world()
        start = self.trainer.global_step * self.cfg.accumulate_grad_batches if self.trainer else 0
        sampler = ResumableBatchSampler(len(self.train), self.cfg.batch_size, self.total_batches, self.cfg.seed,
                                        rank=rank, world_size=world, start=start)
        return DataLoader(IndexedDataset(self.train), batch_sampler=sampler, collate_fn=self.train_collate,
                          num_workers=self.cfg.num_workers, persistent_workers=self.cfg.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._world()
        n_batches = min(self.cfg.limit_val_batches, math.ceil(len(self.val) / self.cfg.batch_size))
        if n_batches < world:
            raise LmforgeError(f"validation: {len(self.val)} held-out examples make {n_batches} batch(es) of "
                               f"train.batch_size {self.cfg.batch_size}, fewer than the {world} processes; hold out "
                               "more text (ingest.validation.fraction) or use fewer devices")
        sampler = ValidationBatches(len(self.val), self.cfg.batch_size, n_batches, rank, world)
        return DataLoader(IndexedDataset(self.val), batch_sampler=sampler, collate_fn=self.val_collate)


@dataclass
class FitResult:
    trainer: L.Trainer
    metrics: dict[str, float]
    run_id: str | None
    tokens_per_s: float
    mfu: float
    history: dict[str, list] = field(default_factory=dict)


def fit(module: PretrainModule, data: PretrainDataModule, cfg: TrainConfig, run_dir: Path, run_name: str,
        tracking: TrackingConfig, params: dict[str, Any], flops_per_token: float,
        callbacks: list[L.Callback] = ()) -> FitResult:
    """Train (resuming from run_dir/checkpoints/last.ckpt when its config matches) and validate.

    Each attempt is its own MLflow run; a resumed one is tagged `lmforge.resumed_from` with the run
    of the attempt it resumes, which ends FAILED if a killed process left it RUNNING.
    """
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    resume = resumable(run_dir, params) and ckpt.exists()
    if resume:  # a corrupt checkpoint fails now, before any run starts (memory-mapped: read once, for its checksums)
        load_checkpoint(ckpt, map_location="cpu", mmap=True, verify=True)
    previous_run = read_run_record(run_dir).mlflow_run_id if resume else None  # resumable: the record exists
    logger = mlflow_logger(tracking, run_name, task="pretrain", model=run_name.removeprefix("pretrain-"),
                           init="scratch", stage="pretrain")
    accelerator = resolve_accelerator(cfg.accelerator)
    peak = measure_peak_flops("cuda" if accelerator == "gpu" else "cpu",
                              torch.bfloat16 if "bf16" in cfg.precision else torch.float32)
    throughput = ThroughputLogger(flops_per_token, peak)
    record = RunBookkeeping(logger, params, run_dir, previous_run)
    checkpoints = ModelCheckpoint(dirpath=ckpt.parent, save_last=True, save_top_k=0,
                                  every_n_train_steps=cfg.checkpoint_every_n_steps)
    trainer = build_trainer(cfg, run_dir, logger, [record, checkpoints, throughput, *callbacks], max_steps=1,  # set below
                            val_check_interval=cfg.val_every_n_steps * cfg.accumulate_grad_batches,
                            check_val_every_n_epoch=None, use_distributed_sampler=False,  # our samplers shard
                            wrap=transformer_blocks(module.model))
    # Steps count batches of the global batch: batch_size x processes (x accumulation per step).
    global_batch = cfg.batch_size * trainer.world_size
    if len(data.train) < global_batch:
        raise LmforgeError(f"only {len(data.train)} training examples, fewer than one batch of train.batch_size "
                           f"{cfg.batch_size} x {trainer.world_size} processes; use a larger corpus or a smaller batch")
    module.total_steps = trainer.fit_loop.epoch_loop.max_steps = total_steps(cfg, len(data.train) // global_batch)
    data.total_batches = module.total_steps * cfg.accumulate_grad_batches
    if resume and rank_zero_only.rank == 0:  # said once, not by every process
        log.info("resuming from %s", ckpt, extra=CONSOLE)  # the user should know it did not start over
    trainer.fit(module, datamodule=data, ckpt_path=str(ckpt) if resume else None, weights_only=True)
    trainer.validate(module, datamodule=data, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    metrics["steps"] = trainer.global_step
    return FitResult(trainer, metrics, record.run_id, throughput.mean_tokens_per_s,
                     throughput.mean_tokens_per_s * flops_per_token / peak, module.history)


def transformer_blocks(model: torch.nn.Module) -> set[type]:
    """The classes of the model's repeated layers (BertLayer, GPT2Block, BART's): FSDP's unit of sharding."""
    from transformers.models.bart.modeling_bart import BartDecoderLayer, BartEncoderLayer
    from transformers.models.bert.modeling_bert import BertLayer
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    return {cls for cls in (BertLayer, GPT2Block, BartEncoderLayer, BartDecoderLayer)
            if any(isinstance(m, cls) for m in model.modules())}


def plot_losses(history: dict[str, list], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in history.items():
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o" if name.startswith("val") else None, label=name)
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def unigram_perplexity(train_ids, eval_ids, vocab_size: int, ignore: set[int]) -> float:
    """Perplexity of an add-one unigram model fitted on the train tokens: the baseline to beat."""
    counts = torch.ones(vocab_size, dtype=torch.float64)
    for ids in train_ids:
        counts += torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=vocab_size).double()
    mask = torch.ones(vocab_size, dtype=torch.bool)
    mask[list(ignore)] = False
    probs = torch.where(mask, counts, 0) / counts[mask].sum()
    total, n = 0.0, 0
    for ids in eval_ids:
        t = torch.tensor([i for i in ids if i not in ignore], dtype=torch.long)
        total -= torch.log(probs[t]).sum().item()
        n += len(t)
    return math.exp(total / max(n, 1))
