"""MLflow: the Lightning logger for a stage's run, and flattening params for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import TrackingConfig


def mlflow_logger(tracking: TrackingConfig, run_name: str, run_id_file: Path | None = None):
    """Lightning's MLFlowLogger on `tracking.uri`, or None when tracking is off.

    With `run_id_file` holding an earlier run's id, the logger continues that run (a resumed stage).
    """
    if not tracking.enabled:
        return None
    from lightning.pytorch.loggers import MLFlowLogger

    run_id = run_id_file.read_text().strip() if run_id_file is not None and run_id_file.exists() else None
    return MLFlowLogger(experiment_name=tracking.experiment, tracking_uri=tracking.uri, run_name=run_name,
                        run_id=run_id, log_model=False)


def flatten_params(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"seed": 0}} -> {"train.seed": 0}: MLflow params are flat."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
