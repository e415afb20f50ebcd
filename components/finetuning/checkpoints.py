"""Where a fine-tuning run's weights start: our pretrained model, random weights, or any local HF folder."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from components.config import FinetuneRun
from components.errors import LmforgeError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def init_folder(run: FinetuneRun, models_dir: str) -> Path:
    """The HF folder whose config (and, unless scratch, weights) the run starts from."""
    if run.init in ("pretrained", "scratch"):
        return Path(models_dir) / f"{run.model}-pretrained"
    return Path(run.init)


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


def load_init(run: FinetuneRun, models_dir: str, num_labels: int, model_class, **config_overrides):
    """(model, tokenizer) for a run: `model_class` with a fresh task head on the chosen init."""
    folder = init_folder(run, models_dir)
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
    if scratch:
        model = model_class._from_config(config, attn_implementation="sdpa")
    else:
        model = model_class.from_pretrained(str(folder), config=config, use_safetensors=True,
                                            attn_implementation="sdpa")
    return model, tokenizer
