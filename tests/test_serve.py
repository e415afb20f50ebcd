"""`lmforge serve` against a temporary Prefect server: deployments, the retrain schedule, triggered runs
that read params.yaml as it is when they start; prefect.yaml declares the same deployments."""

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import REPO, make_project, run_stage_in, sh


def test_prefect_yaml_declares_the_deployments_serve_serves():
    """Defined once: prefect.yaml (for `prefect deploy` to a work pool) agrees with lmforge/flows/serve.py."""
    from lmforge.components.config import OrchestrationConfig
    from lmforge.flows.pipeline import FLOWS
    from lmforge.flows.serve import DEPLOYMENTS, SCHEDULED

    declared = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert [d["name"] for d in declared] == list(DEPLOYMENTS)
    for d in declared:
        flow_name, parameters = DEPLOYMENTS[d["name"]]
        path, _, function = d["entrypoint"].partition(":")
        assert path == "lmforge/flows/pipeline.py" and FLOWS[flow_name].fn.__name__ == function
        assert d.get("parameters", {}) == parameters
        schedules = d.get("schedules", [])
        if d["name"] == SCHEDULED:
            assert schedules == [{"cron": OrchestrationConfig().retrain_cron, "active": False}]
        else:
            assert schedules == []


@pytest.mark.slow
def test_serve_publishes_deployments_and_runs_read_params_yaml_when_they_start(tmp_path, prefect_api):
    import mlflow
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from lmforge.components.config import load_params
    from lmforge.flows.serve import server_is_up

    root = make_project(tmp_path)
    # The data is already ingested and recorded, so retrain re-ingests, sees the same hash and stops early.
    run_stage_in(root, "ingest")
    sh("dvc", "commit", "-f", "ingest", cwd=root)

    api = prefect_api
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    log = tmp_path / "serve.log"
    served = subprocess.Popen(["lmforge", "serve", "--no-server", "-S", f"orchestration.prefect_api_url={api}",
                               "-S", "orchestration.retrain_cron=15 4 * * *"],
                              cwd=root, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        assert server_is_up(api)

        async def deployments():  # those `serve` publishes: on no work pool (other tests' may share the server)
            async with get_client() as client:
                return [d for d in await client.read_deployments() if d.work_pool_name is None]

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
        # No copy of params.yaml in the deployment: a run reads the file when it starts.
        assert set(retrain.parameters) == {"params_file"}

        # 1. The user edits params.yaml while serve runs: the next triggered run uses the edit.
        edited = (root / "params.yaml").read_text().replace("experiment: lmforge\n", "experiment: edited\n")
        edited = edited.replace("min_improvement: 0.0\n", "min_improvement: 0.25\n")
        (root / "params.yaml").write_text(edited)
        flow_run = run_deployment("retrain/lmforge-retrain", timeout=300)
        assert flow_run.state.is_completed(), flow_run.state
        client = mlflow.MlflowClient(tracking_uri=load_params(root / "params.yaml").tracking.uri)
        experiment = client.get_experiment_by_name("edited-retrain")  # the flow's experiment: <experiment>-retrain
        assert experiment is not None and client.search_runs([experiment.experiment_id])
        assert (root / "params.yaml").read_text() == edited  # nothing written back over the edit

        # 2. A parameter given in the run form applies to that run, is recorded, and reverts nothing else.
        flow_run = run_deployment("retrain/lmforge-retrain", timeout=300,
                                  parameters={"overrides": ["registry.min_improvement=0.5"]})
        assert flow_run.state.is_completed(), flow_run.state
        after = load_params(root / "params.yaml")
        assert after.registry.min_improvement == 0.5 and after.tracking.experiment == "edited"
        assert "min_improvement: 0.5" in (root / "params.yaml").read_text()
    finally:
        served.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops it
        try:
            served.wait(timeout=60)
        except subprocess.TimeoutExpired:
            served.kill()
