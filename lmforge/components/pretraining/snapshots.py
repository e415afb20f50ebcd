"""Snapshots: the model exported at chosen steps of pretraining, for "when does BERT learn?".

Each is a whole Hugging Face folder (<dir>/step-<N>, step 0 before any training), written by global
rank 0 the moment its step is reached and moved into place complete; <dir>/steps.json lists the
steps asked for, so the folder (a DVC output) is never empty, even with no snapshots. A fresh run starts the folder
empty; a resumed one keeps the snapshots of the steps it already passed (they are the same weights
it would write again), so a killed run resumed leaves the same snapshots as one never stopped.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import lightning as L
import torch

from lmforge.components.atomic import write_json
from lmforge.components.training.attention import sdpa_twin
from lmforge.components.training.checkpoints import export

STEP = re.compile(r"step-(\d+)")


def snapshot_folders(folder: Path) -> dict[int, Path]:
    """{step: folder} of the snapshots in `folder`, by step."""
    found = {int(m.group(1)): p for p in Path(folder).glob("step-*") if (m := STEP.fullmatch(p.name)) and p.is_dir()}
    return dict(sorted(found.items()))


class Snapshots(L.Callback):
    def __init__(self, steps: list[int], folder: Path, tokenizer):
        self.steps, self.folder, self.tokenizer = set(steps), Path(folder), tokenizer
        self.saved: set[int] = set()

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.folder.mkdir(parents=True, exist_ok=True)
            for step, path in snapshot_folders(self.folder).items():
                if step > trainer.global_step or step not in self.steps or trainer.global_step == 0:
                    shutil.rmtree(path)  # not this run's: a later step, or another run's
            write_json(self.folder / "steps.json", {"snapshot_steps": sorted(self.steps)})
        self._maybe_save(trainer, module)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args) -> None:
        self._maybe_save(trainer, module)

    def _maybe_save(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        step = trainer.global_step  # counts optimizer steps: the same for every accumulated batch of one
        if step in self.steps and step not in self.saved:
            self.saved.add(step)
            if trainer.is_global_zero:
                export(plain_copy(module.model), self.tokenizer, self.folder / f"step-{step}")


def plain_copy(model):
    """A copy of the training model as a plain `transformers` model: torch.compile's wrappers off
    the weight names, the training model itself and the run's random state untouched (a run with
    snapshots trains exactly as one without)."""
    base = getattr(model, "_orig_mod", model)
    with torch.random.fork_rng(devices=[]):  # building it draws initial weights: not from the run's RNG
        copy = sdpa_twin(base)
    copy.load_state_dict({k.replace("_orig_mod.", ""): v for k, v in model.state_dict().items()})
    return copy.eval()
