"""One Lightning run, shared by both objectives: data module, callbacks, MLflow, resume, export."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from torch.utils.data import DataLoader

from components.atomic import atomic_dir, atomic_file
from components.config import TrackingConfig, TrainConfig
from components.errors import LmforgeError
from components.pretraining.collate import IndexedDataset, ResumableBatchSampler
from components.pretraining.module import PretrainModule
from components.pretraining.throughput import ThroughputLogger, measure_peak_flops
from components.tracking import flatten_params, mlflow_logger

log = logging.getLogger(__name__)


class PretrainDataModule(L.LightningDataModule):
    """Train batches from a ResumableBatchSampler that starts where the restored run stopped."""

    def __init__(self, train, val, train_collate: Callable, val_collate: Callable, cfg: TrainConfig, total_batches: int):
        super().__init__()
        self.train, self.val = train, val
        self.train_collate, self.val_collate = train_collate, val_collate
        self.cfg, self.total_batches = cfg, total_batches

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        start = trainer.global_step * self.cfg.accumulate_grad_batches if trainer else 0
        sampler = ResumableBatchSampler(
            len(self.train), self.cfg.batch_size, self.total_batches, self.cfg.seed,
            rank=trainer.global_rank if trainer else 0, world_size=trainer.world_size if trainer else 1, start=start,
        )
        return DataLoader(IndexedDataset(self.train), batch_sampler=sampler, collate_fn=self.train_collate,
                          num_workers=self.cfg.num_workers, persistent_workers=self.cfg.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        world = self.trainer.world_size if self.trainer else 1
        batch_size = max(1, min(self.cfg.batch_size, len(self.val) // world))
        batches = max(1, min(self.cfg.limit_val_batches, len(self.val) // (batch_size * world)))
        sampler = ResumableBatchSampler(len(self.val), batch_size, batches, self.cfg.seed, shuffle=False,
                                        rank=self.trainer.global_rank if self.trainer else 0, world_size=world)
        return DataLoader(IndexedDataset(self.val), batch_sampler=sampler, collate_fn=self.val_collate)


@dataclass
class FitResult:
    module: PretrainModule
    metrics: dict[str, float]
    run_id: str | None
    tokens_per_s: float
    mfu: float
    history: dict[str, list] = field(default_factory=dict)


def total_steps(cfg: TrainConfig, n_examples: int, world_size: int = 1) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    per_epoch = n_examples // (cfg.batch_size * world_size * cfg.accumulate_grad_batches)
    return max(1, per_epoch * cfg.max_epochs)


def fit(
    module: PretrainModule,
    data: PretrainDataModule,
    cfg: TrainConfig,
    run_dir: Path,
    run_name: str,
    tracking: TrackingConfig,
    params: dict[str, Any],
    flops_per_token: float,
) -> FitResult:
    """Train (resuming from run_dir/checkpoints/last.ckpt when its config matches) and return metrics.

    Each attempt is its own MLflow run; a resumed one is tagged `lmforge.resumed_from` with the run
    of the attempt it resumes, which ends FAILED if a killed process left it RUNNING.
    """
    run_dir = Path(run_dir)
    checkpoint_dir = run_dir / "checkpoints"
    ckpt = checkpoint_dir / "last.ckpt"
    resume = _resumable(run_dir, params) and ckpt.exists()
    if resume:  # a corrupt checkpoint fails now, before any run starts (memory-mapped: read once, for its checksums)
        load_checkpoint(ckpt, map_location="cpu", mmap=True, verify=True)
    run_id_file = run_dir / "mlflow_run_id"
    previous_run = run_id_file.read_text().strip() if resume and run_id_file.exists() else None
    logger = mlflow_logger(tracking, run_name)
    accelerator = resolve_accelerator(cfg.accelerator)
    peak = measure_peak_flops("cuda" if accelerator == "gpu" else "cpu",
                              torch.bfloat16 if "bf16" in cfg.precision else torch.float32)
    throughput = ThroughputLogger(flops_per_token, peak)
    callbacks = [
        ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, save_top_k=0,
                        every_n_train_steps=cfg.checkpoint_every_n_steps),
        throughput,
    ]
    if logger is not None:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer = L.Trainer(
        max_steps=module.total_steps,
        max_epochs=-1,
        accelerator=accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        num_nodes=cfg.num_nodes,
        precision=cfg.precision,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=cfg.gradient_clip or None,
        val_check_interval=cfg.val_every_n_steps * cfg.accumulate_grad_batches,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.log_every_n_steps,
        use_distributed_sampler=False,  # our sampler shards by rank itself
        deterministic=accelerator == "cpu",
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
        enable_model_summary=False,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    if logger is not None:
        logger.log_hyperparams(flatten_params(params))
        if previous_run:
            _continues(logger.experiment, logger.run_id, previous_run)
        run_id_file.write_text(logger.run_id)
    (run_dir / "params.json").write_text(json.dumps(params, sort_keys=True))
    if resume:
        log.info("resuming from %s", ckpt)
    trainer.fit(module, datamodule=data, ckpt_path=str(ckpt) if resume else None, weights_only=True)
    trainer.validate(module, datamodule=data, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    metrics["steps"] = trainer.global_step
    return FitResult(module, metrics, logger.run_id if logger else None, throughput.mean_tokens_per_s,
                     throughput.mean_tokens_per_s * flops_per_token / peak, module.history)


def _continues(client, run_id: str, previous_run: str) -> None:
    """Tag run `run_id` as the resumption of `previous_run`, and end that one FAILED if it was killed."""
    from mlflow.exceptions import MlflowException

    from components.tracking import fail_if_dead

    client.set_tag(run_id, "lmforge.resumed_from", previous_run)
    try:
        fail_if_dead(client, client.get_run(previous_run))
    except MlflowException:  # deleted, or in another tracking store
        log.info("the resumed attempt's MLflow run %s is not in this tracking store", previous_run)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written whole or not at all, and one clear error for one that cannot be read.

    Lightning's own writer moves a finished file from the system temporary folder into place,
    which is a plain copy (a half-written `last.ckpt` if the process dies) when that folder is on
    another disk: here the temporary file sits beside the checkpoint and is renamed over it.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_file(path, "wb", durable=True) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return load_checkpoint(Path(path), map_location)


def load_checkpoint(path: Path, map_location=None, mmap: bool = False, verify: bool = False) -> dict:
    """A Lightning checkpoint of a pretraining run, loaded with weights_only=True; LmforgeError naming
    the file when it is truncated, corrupt or not such a checkpoint. With `verify`, every part of
    the file is checked against the CRC-32 torch.save recorded for it (bytes changed on disk)."""
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    start_over = f"delete it to start the run over from step 0 (or delete {path.parent.parent} to start afresh)"
    problem = _checkpoint_problem(path, verify)
    if problem is None:
        try:
            checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except Exception as error:  # torch's zip reader and unpickler raise many kinds
            problem = f"torch.load: {(str(error).strip() or type(error).__name__).splitlines()[0].split('. ')[0][:160]}"
    if problem is not None:
        raise LmforgeError(f"{path}: cannot resume from this checkpoint, it is truncated or corrupt ({problem}); "
                           f"{start_over}")
    missing = [k for k in ("state_dict", "global_step", "optimizer_states") if not isinstance(checkpoint, dict)
               or k not in checkpoint]
    if missing:
        raise LmforgeError(f"{path}: cannot resume from this checkpoint, it is not a Lightning training checkpoint "
                           f"(no {', '.join(missing)}); {start_over}")
    return checkpoint


def _checkpoint_problem(path: Path, verify: bool) -> str | None:
    """What is wrong with the file at `path` as a checkpoint torch.save wrote (a zip archive), or None."""
    import zipfile

    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
    if size == 0:
        return "an empty file"
    if magic != b"PK\x03\x04":
        return f"{size} bytes that do not begin as a PyTorch checkpoint"
    if not zipfile.is_zipfile(path):
        return f"{size} bytes, cut short: the end of its zip archive is missing"
    if verify:
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            return f"its zip archive is damaged: {str(error).splitlines()[0][:120]}"
        if bad is not None:
            return f"{bad} does not match its CRC-32: bytes changed after it was written"
    return None


def _resumable(run_dir: Path, params: dict) -> bool:
    """Resume only a run of the same params: a changed config starts afresh."""
    saved = run_dir / "params.json"
    return saved.exists() and json.loads(saved.read_text()) == json.loads(json.dumps(params, sort_keys=True))


def resolve_accelerator(name: str) -> str:
    if name != "auto":
        return name
    return "gpu" if torch.cuda.is_available() else "cpu"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Undo torch.compile on the model or its submodules, so save_pretrained sees plain names."""
    model = getattr(model, "_orig_mod", model)
    for name, child in list(model.named_children()):
        if hasattr(child, "_orig_mod"):
            setattr(model, name, child._orig_mod)
    return model


def export(model: torch.nn.Module, tokenizer, out_dir: Path) -> Path:
    """save_pretrained (safetensors) beside the tokenizer, moved into place only when complete."""
    model = unwrap(model)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)


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
