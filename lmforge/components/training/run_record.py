"""The run record: what a training folder (runs/pretrain-bert, runs/finetune-<name>, ...) says about
the training that used it, in one JSON file beside its checkpoints.

Written by global rank 0 when training starts (trainer.py's RunBookkeeping) and read by the next
attempt, which resumes only a run of the same params and tags its MLflow run as the continuation,
and by registration, whose lineage points back to the MLflow run that trained the model. The file
is runs/ scratch, not a DVC output: a model restored from the DVC cache has no record until its
stage runs here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmforge.components.atomic import write_json
from lmforge.components.errors import LmforgeError

RUN_RECORD = "run.json"


@dataclass(frozen=True)
class RunRecord:
    mlflow_run_id: str | None   # None: trained with tracking off
    params: dict[str, Any]      # the params the run trained under, as JSON: a resume must match them


def write_run_record(run_dir: Path, record: RunRecord) -> Path:
    """Write `record` to <run_dir>/run.json (whole or not at all); return its path."""
    params = json.loads(json.dumps(record.params, sort_keys=True))  # tuples as lists: as it reads back
    return write_json(Path(run_dir) / RUN_RECORD, asdict(RunRecord(record.mlflow_run_id, params)))


def has_run_record(run_dir: Path) -> bool:
    return (Path(run_dir) / RUN_RECORD).is_file()


def read_run_record(run_dir: Path) -> RunRecord:
    """The record of the training in `run_dir`; a missing or malformed one is a one-line LmforgeError."""
    path = Path(run_dir) / RUN_RECORD
    expected = "expected JSON {mlflow_run_id, params} written when training starts"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LmforgeError(f"{path}: run record not found ({expected}); run the stage that trains "
                           f"into {run_dir} first (the finetune or pretrain stage)") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise LmforgeError(f"{path}: unreadable run record ({str(e).splitlines()[0]}); {expected}: delete "
                           f"{run_dir} and run its stage again") from None
    well_formed = (isinstance(raw, dict) and isinstance(raw.get("mlflow_run_id", 0), (str, type(None)))
                   and isinstance(raw.get("params"), dict))
    if not well_formed:
        raise LmforgeError(f"{path}: malformed run record; {expected}: delete {run_dir} and run its stage again")
    return RunRecord(raw["mlflow_run_id"], raw["params"])
