"""A validation split for a dataset that has none, carved from its train split.

Each document goes to validation when a hash of (seed, the document) falls below the fraction,
rather than by shuffling and slicing: a document's side depends on itself alone, so when the user
appends data later no document moves from train to validation or back (the gate then compares
models on a held-out set that only grows), and two copies of a document never sit on both sides.

A document is a file for plain-text sources of several files (however the text is cut into rows),
and a row everywhere else (a corpus row is a document; a task row is an example).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from datasets import Dataset, DatasetDict

from lmforge.components.config import HoldoutConfig
from lmforge.components.errors import LmforgeError


def validation_split_name(task: str | None) -> str:
    """The split a task's evaluation reads first (MNLI: validation_matched)."""
    from lmforge.components.data.schemas import GLUE_TASKS

    return GLUE_TASKS[task].validation_splits[0] if task in GLUE_TASKS else "validation"


def has_validation(splits) -> bool:
    return any(str(s).startswith("validation") for s in splits)


def held_out(key: str, cfg: HoldoutConfig) -> bool:
    """Whether the document with this key belongs to validation."""
    return _rank(key, cfg) < cfg.fraction * 2**64


def _rank(key: str, cfg: HoldoutConfig) -> int:
    """A uniform 64-bit number for (seed, key)."""
    return int.from_bytes(hashlib.sha256(f"{cfg.seed}\0{key}".encode()).digest()[:8], "big")


def choose(keys: list[str], cfg: HoldoutConfig, what: str) -> list[bool]:
    """held_out for each key, with at least one document on each side."""
    if len(keys) < 2:
        raise LmforgeError(f"{what}: {len(keys)} document(s) in train, no validation split to hold out from; "
                           "expected at least 2, or give a validation split")
    chosen = [held_out(k, cfg) for k in keys]
    if not any(chosen):  # a small dataset where no hash fell below the fraction: the lowest one goes
        chosen[min(range(len(keys)), key=lambda i: _rank(keys[i], cfg))] = True
    if all(chosen):
        chosen[max(range(len(keys)), key=lambda i: _rank(keys[i], cfg))] = False
    return chosen


def carve_files(train_files: list[Path], base: Path, cfg: HoldoutConfig, what: str) -> tuple[list[Path], list[Path]]:
    """(train files, validation files): a plain-text source's files split by their path under `base`."""
    keys = [_relative(p, base) for p in train_files]
    chosen = choose(keys, cfg, what)
    return ([p for p, c in zip(train_files, chosen) if not c], [p for p, c in zip(train_files, chosen) if c])


def carve_rows(data: DatasetDict, split: str, cfg: HoldoutConfig, what: str) -> DatasetDict:
    """`data` with `split` carved from its train rows, each row keyed by its content (idx aside)."""
    train = data["train"]
    chosen = choose(row_keys(train), cfg, what)
    out = dict(data)
    out["train"] = train.select([i for i, c in enumerate(chosen) if not c])
    out[split] = train.select([i for i, c in enumerate(chosen) if c])
    return DatasetDict(out)


def row_keys(ds: Dataset) -> list[str]:
    columns = [c for c in ds.column_names if c != "idx"]  # GLUE's idx is a position, not content
    keys = []
    for batch in ds.select_columns(columns).iter(batch_size=10_000):
        rows = zip(*(batch[c] for c in columns))
        keys += [json.dumps(row, ensure_ascii=False, default=str) for row in rows]
    return keys


def _relative(path: Path, base: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(base).resolve()).as_posix()
    except ValueError:
        return Path(path).resolve().as_posix()
