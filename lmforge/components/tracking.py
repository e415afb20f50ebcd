"""MLflow: where a stage's run goes (experiment, parent run), the Lightning logger, plain client runs.

A flow opens a parent run and sets `parent_run`; every stage run opened while it is set is
nested under it (MLflow's `mlflow.parentRunId` tag), so the UI shows a flow run with its stages.
Stages outside a flow (the CLI, `dvc repro`) get top-level runs. A ContextVar, not an environment
variable, because Prefect runs tasks in threads and copies the context into each of them.

A tracking server that is down (an http(s) `tracking.uri`) costs seconds, not minutes: MLflow's
request retries come from `tracking.http_*`, a stage checks that the server answers before it
trains, and a server that goes away mid-run ends the stage with one `TrackingUnavailable` naming
the URI. What the stage wrote to disk (checkpoints, an exported model) stays.

Every run lmforge creates carries the same labels as tags (`run_tags`): lmforge.task (sst2, squad,
pretrain, ...), lmforge.model (bert, gpt, seq2seq), lmforge.init (pretrained, scratch, a folder),
lmforge.stage (finetune, evaluate, prompt, pretrain, register, flow, ...) and lmforge.flow_run (the
Prefect flow run id, empty outside a flow), "" where a label does not apply; MLflow's UI filters and
groups by them, and `lmforge compare` groups by task and model. Fine-tuning and evaluation runs log
the data they read as MLflow dataset inputs (`log_data`), and every experiment lmforge creates is
marked a model-training experiment (`EXPERIMENT_KIND_TAG`), so MLflow 3's UI opens on its runs.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from time import sleep
from typing import Any

from lmforge.components.config import TrackingConfig
from lmforge.components.errors import LmforgeError

log = logging.getLogger(__name__)

# The flow run's MLflow run; a stage a flow runs in a process of its own (a multi-process training)
# finds it in the environment.
PARENT_RUN_ENV = "LMFORGE_PARENT_RUN_ID"
parent_run: ContextVar[str | None] = ContextVar("lmforge_parent_run", default=os.environ.get(PARENT_RUN_ENV) or None)
# The Prefect flow run's id, likewise (lmforge/flows/pipeline.py's flow_tracking sets both).
FLOW_RUN_ENV = "LMFORGE_FLOW_RUN_ID"
flow_run: ContextVar[str | None] = ContextVar("lmforge_flow_run", default=os.environ.get(FLOW_RUN_ENV) or None)

# What a run is, as tags every lmforge run carries: MLflow's UI and `lmforge compare` group by them.
TASK_TAG, MODEL_TAG, INIT_TAG, STAGE_TAG, FLOW_RUN_TAG = (
    "lmforge.task", "lmforge.model", "lmforge.init", "lmforge.stage", "lmforge.flow_run")
# MLflow 3's UI opens an experiment by its kind; without the tag it may take it for a GenAI one
# (traces overview). custom_model_development: runs, metrics, models.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def run_tags(extra: dict[str, str] | None = None, *, task: str = "", model: str = "", init: str = "",
             stage: str = "") -> dict[str, str]:
    """Tags for a new stage run: what it is (task, model, init, stage, the flow run it belongs to),
    nested under the current flow run, if any; owned by this process. `extra` wins."""
    tags = {**owner_tags(), TASK_TAG: task, MODEL_TAG: model, INIT_TAG: str(init), STAGE_TAG: stage,
            FLOW_RUN_TAG: flow_run.get() or "", **(extra or {})}
    if parent := parent_run.get():
        tags["mlflow.parentRunId"] = parent
    return tags


def mlflow_logger(tracking: TrackingConfig, run_name: str, **labels: str):
    """Lightning's MLFlowLogger on `tracking.uri` for a new run, or None when tracking is off.
    `labels` (task, model, init, stage) become the run's tags (`run_tags`).

    Every process of a multi-process run has one; the run itself is created when global rank 0
    first uses it (training/trainer.py's RunBookkeeping). A resumed stage gets a new run too, tagged
    with the one it resumes."""
    if not tracking.enabled:
        return None
    check_server(tracking)
    from lightning.fabric.utilities.rank_zero import rank_zero_only
    from lightning.pytorch.loggers import MLFlowLogger

    if rank_zero_only.rank == 0:  # not a process Lightning started for another rank
        # The experiment created here, race-safe, rather than by the logger's unguarded lookup-then-create.
        client = tracking_client(tracking, run_name)
        fail_dead_runs(client, experiment_id(client, tracking.experiment))
    logger = MLFlowLogger(experiment_name=tracking.experiment, tracking_uri=tracking.uri, run_name=run_name,
                          log_model=False, tags=run_tags(**labels))
    # Every request the logger makes (run creation, metrics, finalize) goes through this client.
    logger._mlflow_client = GuardedClient(logger._mlflow_client, tracking, run_name)
    return logger


@contextlib.contextmanager
def client_run(tracking: TrackingConfig, run_name: str, tags: dict[str, str] | None = None,
               **labels: str) -> Iterator[tuple[Any, str]]:
    """(MlflowClient, run_id) of a new run, ended FINISHED, or FAILED if the block raises.
    `labels` (task, model, init, stage) become the run's tags (`run_tags`), with `tags`.

    Through the client, not `mlflow.start_run`, so no process-wide active run leaks between
    stages that share a process (flow tasks run in threads).
    """
    check_server(tracking)
    client = tracking_client(tracking, run_name)
    experiment = experiment_id(client, tracking.experiment)
    fail_dead_runs(client, experiment)
    run = client.create_run(experiment, run_name=run_name, tags=run_tags(tags, **labels))
    try:
        yield client, run.info.run_id
    except BaseException as error:
        if not isinstance(error, TrackingUnavailable):  # with the server gone, the run cannot be ended
            client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")


def experiment_id(client, name: str) -> str:
    """The id of experiment `name`, created if missing (a model-training experiment: EXPERIMENT_KIND_TAG);
    safe when several processes create it at once. One created before the tag existed gets it."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_root(client.tracking_uri),
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:  # another process created it between the lookup and here
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # a kind chosen in the UI stays
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def artifact_root(uri: str) -> str | None:
    """Artifacts of a sqlite store go to `mlruns/` beside the database file. MLflow's default is
    `./mlruns` of whichever directory the process that created the experiment ran in; a server
    (http) chooses its own."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()


# ------------------------------------------------------------------ a tracking server that is down


class TrackingUnavailable(LmforgeError):
    """The MLflow tracking server does not answer. The user fixes it (start the server, correct the
    URI), so the CLI prints one line; it may also pass by itself, so flows retry it (`transient`)."""

    transient = True


def remote(tracking: TrackingConfig) -> bool:
    return tracking.uri.startswith(("http://", "https://"))


def use_http_settings(tracking: TrackingConfig) -> None:
    """MLflow's request retries, backoff and timeout from `tracking.http_*` (they win over the
    environment). MLflow reads these variables at each request, for every client in the process."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(tracking.http_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = str(tracking.http_backoff_factor)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(tracking.http_timeout_s)


def check_server(tracking: TrackingConfig) -> None:
    """Fail fast: TrackingUnavailable unless an http(s) tracking server answers its /health, within
    the same bounded retries as MLflow's requests. Stages call it before they train."""
    if not (tracking.enabled and remote(tracking)):
        return
    import requests

    use_http_settings(tracking)
    problem = ""
    for attempt in range(tracking.http_retries + 1):
        if attempt:
            sleep(tracking.http_backoff_factor * 2 ** (attempt - 1))
        try:
            response = requests.get(tracking.uri.rstrip("/") + "/health", timeout=tracking.http_timeout_s)
        except requests.RequestException as error:
            problem = _no_answer(error, tracking) or type(error).__name__
            continue
        if response.status_code < 500:  # any answer but a server error: it is up (/health may need no login)
            return
        problem = f"HTTP {response.status_code}"
    raise TrackingUnavailable(f"tracking.uri {tracking.uri}: the MLflow tracking server does not answer "
                              f"({problem}; {tracking.http_retries + 1} attempts); start it, or change tracking.uri")


@contextlib.contextmanager
def server_errors(tracking: TrackingConfig, during: str) -> Iterator[None]:
    """A request to the tracking server that got no answer (after MLflow's retries) leaves this
    block as one TrackingUnavailable naming the URI and `during`, not as MLflow's traceback."""
    try:
        yield
    except TrackingUnavailable:
        raise
    except Exception as error:
        problem = _no_answer(error, tracking)
        if problem is None:
            raise
        raise TrackingUnavailable(
            f"tracking.uri {tracking.uri}: the MLflow tracking server stopped answering during {during} "
            f"({problem}; {tracking.http_retries + 1} attempts); what was written to disk is kept: start the server "
            "and run it again") from None  # the message says it all; MLflow's is a page of urllib3


def tracking_client(tracking: TrackingConfig, during: str) -> GuardedClient:
    """An MlflowClient on `tracking.uri` whose calls raise TrackingUnavailable when the server is gone."""
    import mlflow

    use_http_settings(tracking)
    return GuardedClient(mlflow.MlflowClient(tracking_uri=tracking.uri), tracking, during)


class GuardedClient:
    """Wraps an MlflowClient: each call runs inside `server_errors`. Anything else passes through."""

    def __init__(self, client, tracking: TrackingConfig, during: str):
        self._client, self._tracking, self._during = client, tracking, during

    def __getattr__(self, name: str):
        if name.startswith("_"):  # keeps pickling and copying away from the wrapped client
            raise AttributeError(name)
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            with server_errors(self._tracking, self._during):
                return attr(*args, **kwargs)
        return call


def _no_answer(error: BaseException, tracking: TrackingConfig) -> str | None:
    """Why a request to the tracking server got no answer ("connection refused", ...), or None
    when `error` is not about reaching that server (a bad request, another host, a bug)."""
    if not remote(tracking):
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(tracking.uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    ours = (tracking.uri.rstrip("/"), f"host='{parts.hostname}', port={port}")
    seen: set[int] = set()
    while error is not None and id(error) not in seen:  # MLflow re-raises without `from`: follow the context
        seen.add(id(error))
        text = f"{type(error).__name__}: {error}"
        if any(marker in text for marker in ours):
            for marker, problem in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                                    ("too many 5", "server errors"), ("Max retries exceeded", "no connection"),
                                    ("RemoteDisconnected", "connection dropped"),
                                    ("Connection reset", "connection dropped"),
                                    ("Connection aborted", "connection dropped")):
                if marker in text:
                    return problem
        error = error.__cause__ or error.__context__
    return None


def flatten_params(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"seed": 0}} -> {"train.seed": 0}: MLflow params are flat."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ------------------------------------------------------------------ runs of killed processes

# Every run lmforge creates names its process, so a later run can tell a live run from one whose
# process was killed (SIGKILL, out of memory, a lost machine) and so never ended it.
PID_TAG, HOST_TAG, KILLED_TAG = "lmforge.pid", "lmforge.host", "lmforge.killed"


def owner_tags() -> dict[str, str]:
    from lmforge.components.atomic import HOST

    return {PID_TAG: str(os.getpid()), HOST_TAG: HOST}


def fail_dead_runs(client, experiment: str) -> list[str]:
    """End FAILED (tagged lmforge.killed=true) every RUNNING run of `experiment` that a process of
    this host created and that process is gone; return their ids. A stage calls it before it
    creates its run, so a killed attempt does not stay RUNNING beside the run that replaces it."""
    from lmforge.components.atomic import HOST

    runs = client.search_runs([experiment], filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{HOST}'",
                              max_results=1000)
    return [run.info.run_id for run in runs if fail_if_dead(client, run)]


def fail_if_dead(client, run) -> bool:
    """End `run` (an mlflow Run) FAILED if it is RUNNING and the process on this host that created it is gone."""
    from lmforge.components.atomic import HOST, process_alive

    tags = run.data.tags
    pid = tags.get(PID_TAG, "")
    if run.info.status != "RUNNING" or tags.get(HOST_TAG) != HOST or not pid.isdigit():
        return False  # not ours, ended, or on another machine, where its process cannot be checked
    if process_alive(int(pid), since=run.info.start_time / 1000):
        return False
    client.set_tag(run.info.run_id, KILLED_TAG, "true")
    client.set_terminated(run.info.run_id, "FAILED")
    log.warning("MLflow run %s (%s) was left RUNNING by process %s, which is gone: marked FAILED",
                run.info.run_id, run.info.run_name, pid)
    return True


# ------------------------------------------------------------------ the data a run used


@dataclass(frozen=True)
class DataUsed:
    """The data a run read, for MLflow's dataset inputs (the UI's Dataset column)."""

    name: str                               # the dataset's name: its folder under data/raw, e.g. sst2
    folder: Path                            # the ingested dataset, a folder per split
    splits: tuple[tuple[str, str, Any], ...]  # (context, split, datasets.Dataset): ("training", "train", ...)


def data_used(folder: str | Path, data, splits: list[str] | tuple[str, ...]) -> DataUsed:
    """`splits` of the ingested dataset `data` (a DatasetDict) read from `folder`, each in its context:
    train -> training, validation* -> validation, test* -> testing."""
    def context(split: str) -> str:
        for prefix, name in (("train", "training"), ("validation", "validation"), ("test", "testing")):
            if split.startswith(prefix):
                return name
        return split

    folder = Path(folder)
    return DataUsed(folder.name, folder, tuple((context(s), s, data[s]) for s in dict.fromkeys(splits)))


def log_data(client, run_id: str, used: DataUsed) -> None:
    """Log each split of `used` as an MLflow dataset input of the run: named after the dataset, tagged
    with its context (mlflow.data.context), its digest the DVC hash of the split's folder (what
    dvc.lock records for it), else MLflow's own digest of its rows. A split's own digest: MLflow keeps
    one dataset per (name, digest), so training and validation must not share one; two splits with
    the same rows (one folder's copy of another) are told apart by name, <name>-<split>."""
    import warnings

    import mlflow.data.huggingface_dataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from lmforge.components.versioning import dvc_hash

    inputs, seen = [], set()
    for context, split, dataset in used.splits:
        folder = used.folder / split
        digest = dvc_hash(folder) if folder.is_dir() else None
        name = used.name if digest is None or digest not in seen else f"{used.name}-{split}"
        seen.add(digest)
        options = dict(name=name, digest=digest, targets="label" if "label" in dataset.column_names else None)
        with warnings.catch_warnings():  # MLflow's schema inference warns about integer columns (labels)
            warnings.simplefilter("ignore")
            try:  # the folder as the dataset's source (MLflow's local-artifact source)
                found = mlflow.data.huggingface_dataset.from_huggingface(dataset, source=str(folder.resolve()),
                                                                        **options)
            except MlflowException:  # a path no source resolver takes: the code that ran, MLflow's default
                found = mlflow.data.huggingface_dataset.from_huggingface(dataset, **options)
            entity = found._to_mlflow_entity()
        inputs.append(DatasetInput(entity, [InputTag(MLFLOW_DATASET_CONTEXT, context),
                                            InputTag("lmforge.split", split)]))
    client.log_inputs(run_id, inputs)
