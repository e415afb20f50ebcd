"""What several processes need to agree on, written once: how many a run has, gathering every rank's
objects, putting a sharded evaluation back in dataset order, and which process is the one that writes.
Without Lightning: a flow asks how many processes a stage needs before it imports any training.

Lightning runs the processes (DDP, FSDP, several nodes); with one process each function here
returns what it was given, so the same code serves both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from lmforge.components.config import TrainConfig


def resolve_accelerator(name: str) -> str:
    if name != "auto":
        return name
    return "gpu" if torch.cuda.is_available() else "cpu"


def processes(cfg: TrainConfig) -> int:
    """How many processes Lightning will run for `cfg` (devices x num_nodes), as it counts devices."""
    devices = cfg.devices
    if devices in ("auto", -1, "-1"):
        per_node = torch.cuda.device_count() if resolve_accelerator(cfg.accelerator) == "gpu" else 1
    elif isinstance(devices, int):
        per_node = devices
    elif devices.strip().isdigit():
        per_node = int(devices)
    else:  # "0,1": a list of device indices
        per_node = len([d for d in devices.split(",") if d.strip()])
    return max(1, per_node) * cfg.num_nodes


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_objects(obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order (a collective: every rank must call it)."""
    rank, size = world()
    if size == 1:
        return [obj]
    gathered: list[Any] = [None] * size
    dist.all_gather_object(gathered, obj)
    return gathered


def in_dataset_order(per_rank: list[list[Any]], n: int) -> list[Any]:
    """The items of a split of `n` rows that a DistributedSampler without shuffling dealt out:
    rank r got rows r, r + W, r + 2W, ..., the last rows padded with the first ones so every rank
    has as many. Returns the `n` items in row order, each once (the padding dropped)."""
    size = len(per_rank)
    out: list[Any] = [None] * n
    for rank, items in enumerate(per_rank):
        for j, item in enumerate(items):
            row = rank + j * size
            if row < n:
                out[row] = item
    missing = [row for row, item in enumerate(out) if item is None]
    if missing:
        raise RuntimeError(f"rows {missing[:5]} of {n} were scored by no rank: the evaluation sampler is not "
                           "the DistributedSampler this expects")
    return out


def gather_in_order(items: list[Any], n: int) -> list[Any]:
    """Every rank's evaluation items, gathered and put back in the split's row order, on every rank."""
    per_rank = gather_objects(items)
    return items if len(per_rank) == 1 else in_dataset_order(per_rank, n)
