"""Tracking server down: the stage fails in seconds naming the URL; work on disk is kept; registration retries alone.

An http(s) `tracking.uri` that refuses connections fails a stage before it trains, after
`tracking.http_retries` quick retries (MLflow's own defaults would wait minutes), as one
`TrackingUnavailable` line naming the URL. A real `mlflow server` that is killed mid-run ends the
stage the same way; the checkpoint stays and the stage resumes from it once the server is back; a
registration cut off halfway is registered whole, as one version, when run again alone.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset, DatasetDict

from lmforge.components.config import Params
from lmforge.components.training.run_record import read_run_record
from tests.conftest import CORPUS, STARTUP_S, free_port

MLFLOW_HTTP_VARS = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT")


@pytest.fixture(autouse=True)
def restore_mlflow_http_settings(monkeypatch):
    """lmforge sets MLflow's HTTP variables process-wide; put them back for the tests after these."""
    for name in MLFLOW_HTTP_VARS:
        monkeypatch.delenv(name, raising=False)


def workspace(root: Path, tokenizers_dir: Path, uri: str) -> Params:
    """A corpus in data/raw/corpus and params that pretrain a tiny GPT on it, logging to `uri`."""
    DatasetDict({"train": Dataset.from_dict({"text": CORPUS * 4}), "validation": Dataset.from_dict({"text": CORPUS[:10]})}
                ).save_to_disk(str(root / "data" / "raw" / "corpus"))
    return Params.model_validate({
        "ingest": {"demo": {"enabled": False}},
        "pretrain": {"gpt": {"tokenizer": str(tokenizers_dir / "gpt"), "block_size": 32,
                             "model": {"hidden_size": 64, "num_layers": 2, "num_heads": 2},
                             "train": {"max_steps": 10, "batch_size": 8, "val_every_n_steps": 5, "warmup_steps": 1,
                                       "checkpoint_every_n_steps": 2, "log_every_n_steps": 1}}},
        "registry": {"model": "gpt-pretrained"},
        "tracking": {"uri": uri, "experiment": "down"},
    })


class MlflowServer:
    """`mlflow server` on 127.0.0.1 over one sqlite store, which outlives kills and restarts."""

    def __init__(self, root: Path):
        self.root, self.port, self.process = root, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = STARTUP_S) -> None:
        mlflow = Path(sys.executable).parent / "mlflow"
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the server's output, read on failure
        self.process = subprocess.Popen(
            [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root}/m.db", "--artifacts-destination", str(self.root / "artifacts")],
            # Without MLflow 3's job runner: its ~12 consumer processes (for GenAI jobs lmforge never
            # submits) each imported MLflow, ~20 CPU-s per start on the suite's 2 cores.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # its own group: uvicorn runs as a child
        import requests

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.root / "server.log").read_text()[-3000:]
            try:
                if requests.get(f"{self.uri}/health", timeout=1).ok:
                    return
            except requests.RequestException:  # not listening yet, or too busy starting to answer
                time.sleep(0.3)
        raise AssertionError(f"mlflow server did not start in {timeout_s} s")

    def kill(self) -> None:
        """Gone at once, as a crashed or unplugged server: SIGKILL to its process group."""
        self.stop(signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None


@pytest.fixture
def server(tmp_path):
    server = MlflowServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------ a server that refuses connections


def waits_between_attempts(monkeypatch) -> list[float]:
    """The seconds lmforge waits between attempts to reach the server, recorded instead of slept."""
    import lmforge.components.tracking

    waits: list[float] = []
    monkeypatch.setattr(lmforge.components.tracking, "sleep", waits.append)
    return waits


def test_refused_connection_fails_the_stage_before_training_in_seconds(tmp_path, tokenizers_dir, monkeypatch, capsys):
    """Tracking URL refuses connections: `lmforge stage` exits 2 in seconds with one line naming the URL; nothing trained"""
    from lmforge.components.cli import main

    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    params = workspace(tmp_path, tokenizers_dir, uri)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    monkeypatch.setattr(sys.modules["datasets.utils.tqdm"], "_hf_datasets_progress_bars_disabled", True)  # tokenizing's
    waits = waits_between_attempts(monkeypatch)
    capsys.readouterr()

    code = main(["stage", "pretrain-gpt", "-p", "params.yaml"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"lmforge: error: tracking.uri {uri}: the MLflow tracking server does not answer "
                   "(connection refused; 3 attempts); start it, or change tracking.uri"]
    assert waits == [1, 2]  # bounded: 3 attempts, 1 + 2 s apart (tracking.http_retries 2, http_backoff_factor 1)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "models").exists()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "20"


def test_refused_connection_is_retried_by_the_flow_a_bounded_number_of_times(tmp_path, tokenizers_dir, monkeypatch,
                                                                               prefect_api):
    """Tracking URL refuses connections inside a Prefect flow: the stage is tried 1 + orchestration.retries times, then fails naming the URL"""
    from prefect import flow

    from lmforge.components import stages
    from lmforge.components.stages import PlannedStage
    from lmforge.components.tracking import TrackingUnavailable
    from lmforge.flows.tasks import run_stage, stage_options

    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{free_port()}"
    params = workspace(tmp_path, tokenizers_dir, uri)
    calls, waits = [], waits_between_attempts(monkeypatch)

    def pretrain_gpt(p):
        calls.append(p)
        return stages.pretrain_gpt(p)

    @flow
    def one_stage():
        options = stage_options(params.orchestration.retries, delay_s=0.0)  # as lmforge/flows/pipeline.py runs stages
        return run_stage.with_options(**options)(PlannedStage("pretrain-gpt", pretrain_gpt, params))

    refused = f"tracking.uri {uri}: the MLflow tracking server does not answer " + r"\(connection refused; 3 attempts\)"
    with pytest.raises(TrackingUnavailable, match=refused):
        one_stage()
    assert params.orchestration.retries == 2 and len(calls) == 3
    assert waits == [1, 2] * 3  # each try: 3 attempts, 1 + 2 s apart
    assert not (tmp_path / "runs").exists() and not (tmp_path / "models").exists()


# ------------------------------------------------------------------ a real server that goes away


@pytest.mark.slow
def test_server_killed_mid_run_keeps_the_work_and_registration_retries_alone(tmp_path, tokenizers_dir, server, monkeypatch,
                                                                             caplog):
    """MLflow server killed mid-training, then mid-registration: each fails naming the URL; checkpoint resumes, registration retries alone"""
    import mlflow

    from lmforge.components import stages
    from lmforge.components.pretraining.module import GptPretrainModule
    from lmforge.components.registry import gate as registry
    from lmforge.components.registry.gate import register
    from lmforge.components.registry.register import candidate
    from lmforge.components.tracking import TrackingUnavailable

    monkeypatch.chdir(tmp_path)
    server.start()
    params = workspace(tmp_path, tokenizers_dir, server.uri)
    run_dir, model_dir = tmp_path / "runs" / "pretrain-gpt", tmp_path / "models" / "gpt-pretrained"
    down = f"tracking.uri {server.uri}: the MLflow tracking server stopped answering during "

    # 1. Killed at step 6 of 10: the stage fails naming the URL; the step-6 checkpoint stays; nothing exported.
    original = GptPretrainModule.training_step

    def killed_at_step_6(self, batch, batch_idx):
        if self.global_step == 6 and server.process is not None:
            server.kill()
        return original(self, batch, batch_idx)

    monkeypatch.setattr(GptPretrainModule, "training_step", killed_at_step_6)
    with pytest.raises(TrackingUnavailable, match=f"{down}pretrain-gpt " + r"\(connection refused; 3 attempts\)"):
        stages.pretrain_gpt(params)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"  # MLflow's own retries, bounded as params say
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert not model_dir.exists() and not (tmp_path / params.pretrain.gpt.metrics).exists()

    # 2. Server back: the stage resumes from that checkpoint (not from step 0), logs to MLflow and exports.
    monkeypatch.setattr(GptPretrainModule, "training_step", original)
    server.start()
    caplog.set_level(logging.INFO, logger="lmforge.components.pretraining.trainer")
    stages.pretrain_gpt(params)
    assert f"resuming from {Path('runs/pretrain-gpt/checkpoints/last.ckpt')}" in caplog.text
    assert (model_dir / "model.safetensors").exists()
    assert json.loads((tmp_path / params.pretrain.gpt.metrics).read_text())["steps"] == 10
    client = mlflow.MlflowClient(tracking_uri=server.uri)
    run = client.get_run(read_run_record(run_dir).mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == 9
    weights = (model_dir / "model.safetensors").read_bytes()

    # 3. Killed during registration, after the version was created and before the gate moved the aliases.
    gate = registry._gate

    def gate_then_kill(*args, **kwargs):
        server.kill()
        return gate(*args, **kwargs)

    monkeypatch.setattr(registry, "_gate", gate_then_kill)
    with pytest.raises(TrackingUnavailable, match=f"{down}register-gpt-pretrained"):
        register(candidate(params, "gpt-pretrained"), params.registry, params.tracking)
    assert (model_dir / "model.safetensors").read_bytes() == weights  # the trained model is untouched

    # 4. Server back: registration alone (no training) leaves one whole version, champion.
    monkeypatch.setattr(registry, "_gate", gate)
    server.start()
    assert [v.tags.get("gate.decision") for v in client.search_model_versions("name = 'lmforge-gpt-pretrained'")
            ] == [None]  # the interrupted version: created, never gated
    done = register(candidate(params, "gpt-pretrained"), params.registry, params.tracking)
    assert done.promoted and not done.skipped
    versions = client.search_model_versions("name = 'lmforge-gpt-pretrained'")
    assert [v.version for v in versions] == [str(done.version)] and versions[0].tags["gate.decision"] == "champion"
    assert client.get_model_version_by_alias("lmforge-gpt-pretrained", "champion").version == str(done.version)
    again = register(candidate(params, "gpt-pretrained"), params.registry, params.tracking)
    assert again.skipped and again.version == done.version  # a third try registers nothing new
