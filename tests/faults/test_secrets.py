"""No secrets: tokens and passwords in the environment never reach MLflow, Prefect, artifacts or logs.

A flow runs with `HF_TOKEN`, `MLFLOW_TRACKING_PASSWORD`, `MLFLOW_TRACKING_TOKEN` and
`AWS_SECRET_ACCESS_KEY` set to random values. Then every MLflow run name, param, tag and metric
name, every registered model and version (name, description, tags), every file the project holds
(artifacts, models, reports, DVC cache, the MLflow database itself), every Prefect flow run, task
run, log line and artifact, and all that the process printed, is searched for those values: none
may appear. A password written into the tracking URL is refused, not echoed.
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path

import pytest

from tests.conftest import make_project

SECRET_VARS = ("HF_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY")


def planted(monkeypatch) -> dict[str, str]:
    values = {name: f"{name.lower()}-{secrets.token_hex(16)}" for name in SECRET_VARS}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def found(values: dict[str, str], text: str | bytes) -> list[str]:
    """The names of the secrets whose values occur in `text`."""
    data = text.encode() if isinstance(text, str) else text
    return [name for name, value in values.items() if value.encode() in data]


def mlflow_text(uri: str) -> str:
    """Everything MLflow's store says about runs and registered models, as one JSON text."""
    import mlflow
    from mlflow.entities import ViewType

    client = mlflow.MlflowClient(tracking_uri=uri)
    records = []
    for experiment in client.search_experiments(view_type=ViewType.ALL):
        records.append({"experiment": experiment.name, "tags": experiment.tags,
                        "artifact_location": experiment.artifact_location})
        for run in client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL):
            records.append({"run": run.info.run_name, "params": run.data.params, "tags": run.data.tags,
                            "metrics": sorted(run.data.metrics), "inputs": str(run.inputs)})
    for model in client.search_registered_models():
        records.append({"model": model.name, "description": model.description, "tags": model.tags,
                        "aliases": model.aliases})
        for version in client.search_model_versions(f"name = '{model.name}'"):
            records.append({"version": version.version, "description": version.description, "tags": version.tags,
                            "source": version.source, "run_link": version.run_link})
    return json.dumps(records, default=str)


def prefect_text() -> str:
    """Every flow run (with its parameters), task run, log line and artifact the Prefect server holds."""
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # log lines go to the server in batches
    records = []
    with get_client(sync_client=True) as client:
        for read in (client.read_flow_runs, client.read_task_runs, client.read_logs, client.read_artifacts):
            while page := read(offset=sum(1 for r in records if r[0] == read.__name__), limit=200):
                records += [(read.__name__, r) for r in page]  # every page: the server answers 200 at most
    return json.dumps([r.model_dump(mode="json") for _, r in records])


def files_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


class Records(logging.Handler):
    """Every log record of the process, whatever handlers Prefect's logging setup leaves on the root."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()} {record.exc_text or ''}")


@pytest.mark.slow  # the pretrain flow on a Prefect test server
def test_env_secrets_never_reach_mlflow_prefect_artifacts_or_logs(tmp_path, monkeypatch, capfd, prefect_api):
    """HF_TOKEN, MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_TOKEN, AWS_SECRET_ACCESS_KEY set: no value in any param, tag, artifact, Prefect record or log"""
    from lmforge.components.params_file import load_params
    from lmforge.flows.pipeline import pretrain

    root = make_project(tmp_path, finetune_runs={}, prompt_runs={}, parallel_stages=None)  # workers log too
    monkeypatch.chdir(root)
    values = planted(monkeypatch)
    uri = load_params("params.yaml").tracking.uri

    records, root_logger = Records(), logging.getLogger()
    level = root_logger.level
    root_logger.addHandler(records)
    root_logger.setLevel(logging.INFO)
    try:
        result = pretrain(params_file="params.yaml")
    finally:
        root_logger.removeHandler(records)
        root_logger.setLevel(level)
    prefect = prefect_text()  # everything the server holds: this test's records and any earlier test's
    assert {r["model"] for r in result["registered"]} == {
        "lmforge-bert-pretrained", "lmforge-gpt-pretrained", "lmforge-seq2seq-pretrained"}

    # MLflow's records. (Not empty: the scan would see a leak if there were one.)
    mlflow = mlflow_text(uri)
    for expected in ("pretrain-bert", "train.learning_rate", "git.commit", "lmforge-gpt-pretrained", "prefect.flow_run_id"):
        assert expected in mlflow
    assert found(values, mlflow) == []

    # Every file of the project: MLflow's database and artifacts, models, reports, DVC cache, git.
    files = files_bytes(root)
    artifact_roots = {Path(e["artifact_location"].removeprefix("file://")) for e in json.loads(mlflow) if "experiment" in e}
    assert all(root in (p, *p.parents) for p in artifact_roots), artifact_roots  # inside the project: scanned below
    assert any(name.endswith("MLmodel") for name in files) and "mlflow.db" in files
    assert {name: hits for name, data in files.items() if (hits := found(values, data))} == {}

    # Prefect: flow and task runs with their parameters, every log line, the summary artifact.
    for expected in ("pretrain-bert", "lmforge-pretrain", "lmforge-gpt-pretrained"):
        assert expected in prefect
    assert found(values, prefect) == []

    # What the process printed and logged (Prefect's own log lines were checked on its server above).
    # Stages run beside another log from worker processes into the flow's log file, not this process's handlers.
    out, err = capfd.readouterr()
    flow_logs = "\n".join(p.read_text() for p in (root / "runs").glob("*/log.txt"))
    assert "pretrain-bert" in out + err + flow_logs  # its console line: the scan below has something to scan
    assert found(values, out + err) == []
    logged = "\n".join(records.lines) + flow_logs
    assert "GPT pretraining" in logged and "registered lmforge-bert-pretrained" in logged
    assert found(values, logged) == []


@pytest.mark.parametrize("where", ["params.yaml", "-S"])
def test_password_in_the_tracking_url_is_refused_without_echoing_it(where, tmp_path, monkeypatch, capsys):
    """A password written into tracking.uri (params.yaml or -S): refused at load, exit 2, the password not echoed"""
    import yaml

    from lmforge.components.cli import main

    monkeypatch.chdir(tmp_path)
    password = secrets.token_hex(16)
    uri = f"http://lmforge:{password}@127.0.0.1:5000"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tracking": {"uri": uri}} if where == "params.yaml" else {}))
    code = main(["params", *(["-S", f"tracking.uri={uri}"] if where == "-S" else [])])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.splitlines() == ["lmforge: error: params.yaml: tracking.uri: a password in the URL would be saved in "
                                "params.yaml and Prefect; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                                "in the environment instead"]
    assert password not in out + err
