"""MLflow: where a stage's run goes (experiment, parent run), the Lightning logger, plain client runs.

A flow opens a parent run and sets `parent_run`; every stage run opened while it is set is
nested under it (MLflow's `mlflow.parentRunId` tag), so the UI shows a flow run with its stages.
Stages outside a flow (the CLI, `dvc repro`) get top-level runs. A ContextVar, not an environment
variable, because Prefect runs tasks in threads and copies the context into each of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from components.config import TrackingConfig

parent_run: ContextVar[str | None] = ContextVar("lmforge_parent_run", default=None)


def run_tags(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Tags for a new stage run: nested under the current flow run, if any."""
    tags = dict(extra or {})
    if parent := parent_run.get():
        tags["mlflow.parentRunId"] = parent
    return tags


def mlflow_logger(tracking: TrackingConfig, run_name: str, run_id_file: Path | None = None):
    """Lightning's MLFlowLogger on `tracking.uri`, or None when tracking is off.

    With `run_id_file` holding an earlier run's id, the logger continues that run (a resumed stage).
    """
    if not tracking.enabled:
        return None
    from lightning.pytorch.loggers import MLFlowLogger

    run_id = run_id_file.read_text().strip() if run_id_file is not None and run_id_file.exists() else None
    return MLFlowLogger(experiment_name=tracking.experiment, tracking_uri=tracking.uri, run_name=run_name,
                        run_id=run_id, log_model=False, tags=run_tags() if run_id is None else None)


@contextlib.contextmanager
def client_run(tracking: TrackingConfig, run_name: str, tags: dict[str, str] | None = None) -> Iterator[tuple[Any, str]]:
    """(MlflowClient, run_id) of a new run, ended FINISHED, or FAILED if the block raises.

    Through the client, not `mlflow.start_run`, so no process-wide active run leaks between
    stages that share a process (flow tasks run in threads).
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking.uri)
    experiment = client.get_experiment_by_name(tracking.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(tracking.experiment)
    run = client.create_run(experiment_id, run_name=run_name, tags=run_tags(tags))
    try:
        yield client, run.info.run_id
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")


def flatten_params(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"seed": 0}} -> {"train.seed": 0}: MLflow params are flat."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
