"""One way to build a Lightning Trainer for every lmforge run, and what each run does around it.

`build_trainer` passes `train.*` (accelerator, devices, strategy, num_nodes, precision, ...) to
Lightning, so scaling out is Lightning's: DDP on CPU processes (gloo) or GPUs, FSDP, several
nodes with torchrun, SLURM or Lightning's own environment variables. The rules for several
processes are here, once:

- the batch a step sees is train.batch_size per device x devices x num_nodes x accumulate_grad_batches,
  and `total_steps` counts optimizer steps of that global batch, so max_steps, warm-up and the
  schedule mean the same with one process or many;
- the MLflow run is created by global rank 0 only, once the ranks are known (`RunBookkeeping`), and its
  id broadcast to every rank; every file (export, metrics, plots, receipts) is written by rank 0;
- the trained weights are gathered whole before export (`finished_model`), whatever the strategy
  shards (FSDP).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
import torch

from lmforge.components.config import TrainConfig
from lmforge.components.console import through_root
from lmforge.components.errors import LmforgeError
from lmforge.components.tracking import DataUsed, flatten_params, log_data
from lmforge.components.training.attention import sdpa_twin
from lmforge.components.training.checkpoints import AtomicCheckpointIO, load_checkpoint
from lmforge.components.training.distributed import resolve_accelerator
from lmforge.components.training.run_record import RunRecord, write_run_record


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    """Optimizer steps of the run: max_steps, or max_epochs of `batches_per_epoch` (per device) in
    groups of accumulate_grad_batches."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    return max(1, math.ceil(batches_per_epoch / cfg.accumulate_grad_batches) * cfg.max_epochs)


def strategy(cfg: TrainConfig, accelerator: str, wrap: set[type] | None = None):
    """Lightning's strategy for `cfg.strategy`, or a one-line error where it cannot run here."""
    name = cfg.strategy
    if name.startswith("fsdp"):
        if accelerator != "gpu":
            raise LmforgeError(f"train.strategy {name}: FSDP shards the model over GPUs (NCCL); on "
                               f"accelerator {accelerator} use strategy ddp (or auto for one process)")
        from lightning.pytorch.strategies import FSDPStrategy

        # The parameters keep their names (use_orig_params), so weight decay still skips biases and
        # LayerNorm; each transformer block is one shard unit; checkpoints hold the full state.
        return FSDPStrategy(auto_wrap_policy=wrap, use_orig_params=True, state_dict_type="full")
    if name.startswith("deepspeed"):
        import importlib.util

        if accelerator != "gpu":
            raise LmforgeError(f"train.strategy {name}: DeepSpeed trains on GPUs; on accelerator {accelerator} use "
                               "strategy ddp (or auto for one process)")
        if importlib.util.find_spec("deepspeed") is None:
            raise LmforgeError(f"train.strategy {name}: DeepSpeed is not installed; pip install deepspeed, "
                               "or use strategy ddp or fsdp")
    return name


through_root("lightning")


class ProgressBar(RichProgressBar):
    """Lightning's rich bar, counting epochs from 1 out of those max_steps makes: every run here
    stops at max_steps (max_epochs is -1), where Lightning's own bar says "Epoch 0/-2". It shows the
    losses only: the run's version and tokens/s wrapped the bar over five lines on a narrow terminal."""

    SHOWN = ("train/loss", "val/loss")

    def _get_train_description(self, current_epoch: int) -> str:
        batches = self.trainer.num_training_batches
        steps = self.trainer.max_steps * self.trainer.accumulate_grad_batches
        known = steps > 0 and batches not in (0, float("inf"))
        text = f"Epoch {current_epoch + 1}" + (f"/{math.ceil(steps / batches)}" if known else "")
        width = len(self.validation_description)  # as Lightning pads it: no flicker between the two bars
        return f"{text:{width}}" if width > len(text) else text

    def get_metrics(self, trainer, pl_module) -> dict:
        return {k: v for k, v in super().get_metrics(trainer, pl_module).items() if k in self.SHOWN}


def live_bar() -> bool:
    """A bar only where someone watches it: on a terminal. Written to a file or a pipe (CI, `make demo >
    log`), rich prints each finished bar whole, several lines per run, into the output. Not for a stage
    run beside another (PROGRESS_BAR_ENV 0): their bars would overwrite each other's line."""
    from lmforge.components.console import PROGRESS_BAR_ENV

    return sys.stdout.isatty() and os.environ.get(PROGRESS_BAR_ENV) != "0"


def build_trainer(cfg: TrainConfig, run_dir: Path, logger, callbacks: list, *, max_steps: int,
                  val_check_interval: int | float, check_val_every_n_epoch: int | None = 1,
                  use_distributed_sampler: bool = True, limit_val_batches: int | float | None = None,
                  wrap: set[type] | None = None) -> L.Trainer:
    """The Trainer for a run under `cfg`, its checkpoints written whole (AtomicCheckpointIO)."""
    accelerator = resolve_accelerator(cfg.accelerator)
    callbacks = [*callbacks, ProgressBar()] if live_bar() else list(callbacks)
    if logger is not None:
        from lightning.pytorch.callbacks import LearningRateMonitor

        callbacks = [*callbacks, LearningRateMonitor(logging_interval="step")]
    return L.Trainer(
        max_steps=max_steps, max_epochs=-1, accelerator=accelerator, devices=cfg.devices,
        strategy=strategy(cfg, accelerator, wrap), num_nodes=cfg.num_nodes, precision=cfg.precision,
        accumulate_grad_batches=cfg.accumulate_grad_batches, gradient_clip_val=cfg.gradient_clip or None,
        val_check_interval=val_check_interval, check_val_every_n_epoch=check_val_every_n_epoch,
        limit_val_batches=limit_val_batches, num_sanity_val_steps=0, log_every_n_steps=cfg.log_every_n_steps,
        use_distributed_sampler=use_distributed_sampler, deterministic=cfg.deterministic,
        logger=logger if logger is not None else False, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir), enable_model_summary=False, enable_progress_bar=live_bar(),
    )


class RunBookkeeping(L.Callback):
    """A run's MLflow bookkeeping, done by global rank 0 once the processes know their ranks (before
    that, a process of a second node takes itself for rank 0): the params, the attempt a resumed run
    continues, the data it trains on (`data`, MLflow dataset inputs), and the run record (run_record.py)
    that the next attempt resumes by and the registry's lineage reads; then the run id is broadcast."""

    def __init__(self, logger, params: dict[str, Any], run_dir: Path, previous_run: str | None = None,
                 data: DataUsed | None = None):
        self.logger, self.params, self.run_dir, self.previous_run = logger, params, Path(run_dir), previous_run
        self.data = data
        self.run_id: str | None = None
        self._done = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._done:  # validate() after fit() sets up again
            return
        self._done = True
        run_id = None
        if trainer.is_global_zero:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.logger is not None:
                self.logger.log_hyperparams(flatten_params(self.params))
                run_id = self.logger.run_id
                if self.previous_run:
                    continues(self.logger.experiment, run_id, self.previous_run)
                if self.data is not None:
                    log_data(self.logger.experiment, run_id, self.data)
            # Written once the MLflow run is set up: an attempt that failed before keeps the last record.
            write_run_record(self.run_dir, RunRecord(run_id, self.params))
        self.run_id = trainer.strategy.broadcast(run_id)


def continues(client, run_id: str, previous_run: str) -> None:
    """Tag run `run_id` as the resumption of `previous_run`, and end that one FAILED if it was killed."""
    import logging

    from mlflow.exceptions import MlflowException

    from lmforge.components.tracking import fail_if_dead

    client.set_tag(run_id, "lmforge.resumed_from", previous_run)
    try:
        fail_if_dead(client, client.get_run(previous_run))
    except MlflowException:  # deleted, or in another tracking store
        logging.getLogger(__name__).info("the resumed attempt's MLflow run %s is not in this tracking store",
                                         previous_run)


def finished_model(trainer: L.Trainer, module: L.LightningModule, checkpoint: str | Path | None = None):
    """The trained model, whole, as a plain `transformers` model on the CPU, on global rank 0 (None on
    the others): from `checkpoint` (a best checkpoint), or gathered from the ranks (a collective)."""
    if checkpoint:
        state = load_checkpoint(Path(checkpoint), map_location="cpu")["state_dict"] if trainer.is_global_zero else None
    else:  # DDP: this rank's copy; FSDP: the shards gathered into rank 0's full state dict
        state = trainer.strategy.lightning_module_state_dict()
    if not trainer.is_global_zero:
        return None
    trained = unwrap(module.model)
    model = sdpa_twin(trained)
    weights = {_plain_name(k): v for k, v in state.items() if k.startswith("model.")}
    model.load_state_dict(weights)
    return model.to(module.device).eval()  # scored where it trained


def _plain_name(key: str) -> str:
    """model.bert._orig_mod.encoder... -> bert.encoder...: the module's prefix and torch.compile's wrapper off."""
    return key.removeprefix("model.").replace("_orig_mod.", "")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Undo torch.compile on the model or its submodules, so save_pretrained sees plain names."""
    model = getattr(model, "_orig_mod", model)
    for name, child in list(model.named_children()):
        if hasattr(child, "_orig_mod"):
            setattr(model, name, child._orig_mod)
    return model
