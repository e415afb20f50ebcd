"""A fine-tuning run's starting folder, checked and loaded: our pretrained model, its architecture with
random weights (scratch), or any local HF folder. The caller resolves the folder
(FinetuneRun.init_dir: pretrain.<model>.out_dir unless `init` names one)."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from lmforge.components.config import FinetuneRun
from lmforge.components.errors import LmforgeError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def check_checkpoint(folder: Path, need_weights: bool) -> None:
    """A clear error for a missing folder, a folder without config or safetensors weights."""
    if not folder.is_dir():
        raise LmforgeError(
            f"init checkpoint {folder}: folder not found; expected a Hugging Face model folder "
            "(config.json + model.safetensors), or run the pretraining stage first"
        )
    if not (folder / "config.json").exists():
        raise LmforgeError(f"init checkpoint {folder}: no config.json; expected a Hugging Face model folder")
    if need_weights and not any((folder / name).exists() for name in WEIGHT_FILES):
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise LmforgeError(
            f"init checkpoint {folder}: no model.safetensors (found {found}); lmforge loads weights only "
            "from safetensors"
        )
    if need_weights:
        for file in weight_files(folder):
            check_safetensors(file, folder)


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of an HF folder: model.safetensors, or the shards its index lists."""
    single, index = folder / WEIGHT_FILES[0], folder / WEIGHT_FILES[1]
    if single.exists() or not index.exists():
        return [single]
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise LmforgeError(f"{index}: not a safetensors index (JSON with a weight_map); it is corrupt: "
                           f"delete {folder} and run the stage that writes it again") from None
    return [folder / shard for shard in shards]


def check_safetensors(file: Path, folder: Path) -> None:
    """LmforgeError naming `file` unless it is a whole safetensors file: a JSON header whose tensors
    end where the file ends. Reads the header only; catches a truncated copy or a garbage file
    before `from_pretrained` fails deep inside safetensors."""
    from safetensors import SafetensorError, safe_open

    fix = f"delete {folder} and run the stage that writes it again (or copy it again from where it came)"
    if not file.exists():
        raise LmforgeError(f"{file}: missing, but {folder} names it as a weight shard; {fix}")
    problem = _safetensors_problem(file)
    if problem is None:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as error:
            problem = str(error).splitlines()[0][:160]
    if problem is not None:
        raise LmforgeError(f"{file}: not a whole safetensors file, it is truncated or corrupt ({problem}); {fix}")


def _safetensors_problem(file: Path) -> str | None:
    """Why `file` is not a whole safetensors file (8-byte header length, JSON header, data), or None."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            return f"{size} bytes, shorter than a safetensors header"
        length = int.from_bytes(prefix, "little")
        if length > size - 8:
            return f"its header claims {length} bytes but the file has {size}"
        try:
            header = json.loads(f.read(length))
            ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            return "its header is not safetensors' JSON"
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        return f"{size} bytes where its header describes {expected}"
    if size > expected:
        return f"{size} bytes where its header describes {expected}: extra bytes at the end"
    return None


def load_init(run: FinetuneRun, folder: Path, num_labels: int, model_class, *, max_seq_length: int,
              **config_overrides):
    """(model, tokenizer) for a run: `model_class` with a fresh task head on `folder`'s weights (its
    config alone when the run is scratch).

    Fails before loading weights when finetune.max_seq_length exceeds the model's positions."""
    folder = Path(folder)
    scratch = run.init == "scratch"
    check_checkpoint(folder, need_weights=not scratch)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    config = AutoConfig.from_pretrained(str(folder), num_labels=num_labels, **config_overrides)
    saved = json.loads((folder / "config.json").read_text())
    saved_labels = saved.get("id2label")
    is_task_model = any("ForSequenceClassification" in a or "ForTokenClassification" in a
                        for a in saved.get("architectures") or [])
    if is_task_model and saved_labels and len(saved_labels) != num_labels:
        raise LmforgeError(
            f"init checkpoint {folder}: its head has {len(saved_labels)} labels "
            f"({', '.join(saved_labels.values())}) but task {run.task!r} has {num_labels}; "
            "start from a pretrained (not fine-tuned) checkpoint or one fine-tuned on this label set"
        )
    if config.vocab_size < len(tokenizer):
        raise LmforgeError(
            f"init checkpoint {folder}: the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{config.vocab_size}; the tokenizer does not belong to this model"
        )
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and max_seq_length > positions:
        raise LmforgeError(
            f"init checkpoint {folder}: finetune.max_seq_length {max_seq_length} exceeds the model's "
            f"max_position_embeddings {positions}; expected finetune.max_seq_length <= {positions}"
        )
    if scratch:
        model = model_class._from_config(config, attn_implementation="sdpa")
    else:
        model = model_class.from_pretrained(str(folder), config=config, use_safetensors=True,
                                            attn_implementation="sdpa")
    return model, tokenizer
