"""Datasets from the Hugging Face Hub by name: `hf:<dataset>[:<config>]`."""

from __future__ import annotations

from datasets import DatasetDict, load_dataset

from lmforge.components.data.schemas import GLUE_TASKS
from lmforge.components.errors import LmforgeError


def parse_hub_spec(spec: str) -> tuple[str, str | None]:
    """`hf:nyu-mll/glue:sst2` -> ("nyu-mll/glue", "sst2")."""
    if not spec.startswith("hf:") or not spec[3:]:
        raise LmforgeError(f"source {spec!r}: expected 'hf:<dataset>[:<config>]'")
    name, _, config = spec[3:].partition(":")
    return name, (config or None)


def infer_hub_task(name: str, config: str | None) -> str | None:
    """The lmforge task a well-known Hub dataset maps to, so it is validated without saying so."""
    base = name.rsplit("/", 1)[-1].lower()
    if base == "glue" and config in GLUE_TASKS:
        return config
    if base in ("squad", "squad_v2", "conll2003"):
        return base
    return None


def load_hub(spec: str, revision: str | None = None) -> DatasetDict:
    """Load every split of a Hub dataset (or a local dataset folder given by path), as `datasets` does."""
    name, config = parse_hub_spec(spec)
    try:
        data = load_dataset(name, config, revision=revision)
    except Exception as e:  # datasets raises many types (network, missing config, bad files); all are the user's
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LmforgeError(f"source {spec!r}: could not load dataset {name!r}: {first_line}") from None
    if not isinstance(data, DatasetDict):
        data = DatasetDict({"train": data})
    return data
