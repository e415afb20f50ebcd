"""Checkpoints of training runs, and the model folders they end in: written whole or not at all,
read with weights_only=True, one clear error for a file that is truncated, corrupt or not a
Lightning checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from lmforge.components.atomic import atomic_dir, atomic_file
from lmforge.components.errors import LmforgeError


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


def resumable(run_dir: Path, params: dict) -> bool:
    """Resume only a run of the same params (its run record's): a changed config starts afresh."""
    from lmforge.components.training.run_record import has_run_record, read_run_record

    return has_run_record(run_dir) and read_run_record(run_dir).params == json.loads(json.dumps(params, sort_keys=True))


def export(model: torch.nn.Module, tokenizer, out_dir: Path) -> Path:
    """save_pretrained (safetensors) beside the tokenizer, moved into place only when complete."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)
