"""`lmforge serve` against a temporary Prefect server: deployments, the retrain schedule, a triggered run."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import make_project, sh

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_publishes_deployments_with_schedule_and_runs_retrain(tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.serve import server_is_up, start_server

    root = make_project(tmp_path)
    # The data is already ingested and recorded, so retrain re-ingests, sees the same hash and stops early.
    sh("lmforge", "stage", "ingest", cwd=root)
    sh("dvc", "commit", "-f", "ingest", cwd=root)

    api = f"http://127.0.0.1:{free_port()}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api,
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    monkeypatch.setenv("PREFECT_HOME", env["PREFECT_HOME"])  # the server started below keeps its database there
    server = start_server(api)
    log = tmp_path / "serve.log"
    served = subprocess.Popen(["lmforge", "serve", "--no-server", "-S", f"orchestration.prefect_api_url={api}",
                               "-S", "orchestration.retrain_cron=15 4 * * *"],
                              cwd=root, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        assert server_is_up(api)
        with temporary_settings(updates={PREFECT_API_URL: api}):
            async def deployments():
                async with get_client() as client:
                    return await client.read_deployments()

            found, deadline = [], time.monotonic() + 120
            while len(found) < 5 and time.monotonic() < deadline and served.poll() is None:
                time.sleep(2)
                found = asyncio.run(deployments())
            assert served.poll() is None, log.read_text()
            by_name = {d.name: d for d in found}
            assert set(by_name) == {"lmforge-pipeline", "lmforge-pretrain", "lmforge-finetune",
                                    "lmforge-evaluate_and_register", "lmforge-retrain"}
            retrain = by_name["lmforge-retrain"]
            assert [s.schedule.cron for s in retrain.schedules] == ["15 4 * * *"]
            assert retrain.paused  # the schedule waits until orchestration.retrain_schedule_active
            assert retrain.parameters["params"]["ingest"]["demo"]["corpus_documents"] == 120  # params.yaml's values

            flow_run = run_deployment("retrain/lmforge-retrain", timeout=300)
            assert flow_run.state.is_completed(), flow_run.state
    finally:
        served.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops it
        try:
            served.wait(timeout=60)
        except subprocess.TimeoutExpired:
            served.kill()
        server.terminate()
        server.wait(timeout=60)
