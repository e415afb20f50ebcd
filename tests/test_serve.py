"""`lmforge serve` against a temporary Prefect server: deployments, the retrain schedule, triggered runs
that read params.yaml as it is when they start; prefect.yaml declares the same deployments; the run
forms' typed fields. (tests/test_browser.py submits a run form in a browser.)"""

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


FORM_TAIL = ["overrides", "params", "params_file"]  # every run form ends with these


def form(flow) -> dict[str, dict]:
    """The run form Prefect builds for a flow: field name -> its JSON schema, in the form's order."""
    from prefect.utilities.callables import parameter_schema

    fields = parameter_schema(flow.fn).model_dump()["properties"]
    return dict(sorted(fields.items(), key=lambda item: item[1]["position"]))


def test_run_forms_show_the_typed_fields_first_then_overrides_and_the_whole_params():
    from lmforge.flows.pipeline import FLOWS

    fields = form(FLOWS["finetune"])
    assert list(fields) == ["tasks", "model", "init", "learning_rate", "epochs", "force", *FORM_TAIL]
    assert fields["tasks"]["type"] == "array" and "sst2" in fields["tasks"]["items"]["enum"]
    assert fields["model"]["enum"] == ["bert", "gpt"] and fields["force"]["type"] == "boolean"
    assert {t["type"] for t in fields["learning_rate"]["anyOf"]} == {"number", "null"}
    assert {t["type"] for t in fields["epochs"]["anyOf"]} == {"integer", "null"}
    assert fields["params"]["anyOf"][0]["$ref"] == "#/definitions/Params"  # the full object, still there
    assert list(form(FLOWS["pretrain"])) == ["models", "max_steps", "force", *FORM_TAIL]
    assert list(form(FLOWS["pipeline"])) == ["targets", "force", *FORM_TAIL]
    assert list(form(FLOWS["evaluate_and_register"])) == ["models", "force", *FORM_TAIL]
    assert list(form(FLOWS["retrain"])) == FORM_TAIL
    for name, flow in FLOWS.items():
        for field, schema in form(flow).items():
            # A description on every field; the UI renders it as markdown, where <model> is a tag it drops.
            assert schema.get("description") and not {"<", "*"} & set(schema["description"]), (name, field)


@pytest.fixture
def flows_offline(tmp_path, monkeypatch):
    """The flow functions called without Prefect or stages: run_flow records what it was asked to run.
    Returns (params file, the calls)."""
    import logging
    import shutil

    from lmforge.flows import pipeline

    calls = []
    monkeypatch.setattr(pipeline, "run_flow", lambda name, params, patterns, force, with_upstream=False:
                        calls.append((name, params, patterns)) or {})
    monkeypatch.setattr(pipeline, "get_run_logger", lambda: logging.getLogger("test"))
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path / "params.yaml", calls


def test_finetune_form_fields_train_the_new_runs_and_are_written_to_params_yaml(flows_offline):
    from lmforge.flows.pipeline import finetune

    path, calls = flows_offline
    before = yaml.safe_load(path.read_text())
    finetune.fn(tasks=["rte"], learning_rate=0.0042, epochs=2, params_file=str(path))

    [(name, params, patterns)] = calls
    assert patterns == ["finetune@bert-rte", "evaluate@bert-rte", "register@bert-rte"]
    train = params.finetune.train
    assert (train.learning_rate, train.max_epochs, train.max_steps) == (0.0042, 2, -1)  # the epochs decide
    after = yaml.safe_load(path.read_text())
    assert after["finetune"]["train"] == {**before["finetune"]["train"], "learning_rate": 0.0042, "max_epochs": 2,
                                          "max_steps": -1}
    assert list(after["finetune"]["runs"]) == [*before["finetune"]["runs"], "bert-rte"]
    added = after["finetune"]["runs"]["bert-rte"]
    assert (added["task"], added["model"], added["init"]) == ("rte", "bert", "pretrained")
    assert {k: v for k, v in after.items() if k != "finetune"} == {k: v for k, v in before.items() if k != "finetune"}


def test_finetune_form_fields_left_empty_change_nothing(flows_offline):
    from lmforge.flows.pipeline import finetune

    path, calls = flows_offline
    before = yaml.safe_load(path.read_text())
    finetune.fn(tasks=["sst2"], params_file=str(path))  # bert-sst2 is already in params.yaml
    assert yaml.safe_load(path.read_text()) == before
    assert calls[0][1].finetune.train.learning_rate == before["finetune"]["train"]["learning_rate"]


def test_a_form_value_out_of_range_fails_naming_its_key_and_writes_nothing(flows_offline):
    from lmforge.components.errors import LmforgeError
    from lmforge.flows.pipeline import finetune

    path, calls = flows_offline
    before = path.read_text()
    with pytest.raises(LmforgeError, match=r"finetune\.train\.learning_rate: must be <= 1\.0, got 5\.0"):
        finetune.fn(tasks=["rte"], learning_rate=5.0, params_file=str(path))
    assert path.read_text() == before and calls == []


def test_pretrain_form_fields_choose_the_models_and_their_steps(flows_offline):
    from lmforge.flows.pipeline import pretrain

    path, calls = flows_offline
    before = yaml.safe_load(path.read_text())
    pretrain.fn(models=["gpt"], max_steps=7, params_file=str(path))

    [(name, params, patterns)] = calls
    assert patterns == ["register-pretrained@gpt"] and params.pretrain.gpt.train.max_steps == 7
    after = yaml.safe_load(path.read_text())
    assert after["pretrain"]["gpt"]["train"]["max_steps"] == 7
    assert after["pretrain"]["bert"] == before["pretrain"]["bert"]  # only the chosen model's steps
    pretrain.fn(params_file=str(path))  # every model, as before the fields existed
    assert calls[-1][2] == ["register-pretrained@bert", "register-pretrained@gpt", "register-pretrained@seq2seq"]


def test_a_server_lmforge_starts_tells_its_ui_where_its_api_is(monkeypatch):
    """`prefect server start` on another port than 4200: its UI asks for the API on that port."""
    import subprocess

    from lmforge.flows import serve

    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda command, **kwargs: started.append(kwargs["env"]))
    monkeypatch.delenv("PREFECT_UI_API_URL", raising=False)
    serve.launch_server("http://127.0.0.1:4321/api")
    monkeypatch.setenv("PREFECT_UI_API_URL", "https://proxy.example/api")  # the user's own setting wins
    serve.launch_server("http://127.0.0.1:4321/api")
    assert [env["PREFECT_UI_API_URL"] for env in started] == ["http://127.0.0.1:4321/api", "https://proxy.example/api"]


@pytest.mark.slow
def test_serve_publishes_deployments_and_runs_read_params_yaml_when_they_start(tmp_path, prefect_api):
    import mlflow
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from lmforge.components.params_file import load_params
    from lmforge.flows.serve import server_is_up

    root = make_project(tmp_path)
    # The data is already ingested and recorded, so retrain re-ingests, sees the same hash and stops early.
    run_stage_in(root, "ingest")
    sh("dvc", "commit", "-f", "ingest", cwd=root)

    api = prefect_api
    # The runner looks for due runs every second, not Prefect's default 10 s: the test waits on it twice.
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
           "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
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
        flow_run = run_deployment("retrain/lmforge-retrain", timeout=300, poll_interval=1)
        assert flow_run.state.is_completed(), flow_run.state
        client = mlflow.MlflowClient(tracking_uri=load_params(root / "params.yaml").tracking.uri)
        experiment = client.get_experiment_by_name("edited-retrain")  # the flow's experiment: <experiment>-retrain
        assert experiment is not None and client.search_runs([experiment.experiment_id])
        assert (root / "params.yaml").read_text() == edited  # nothing written back over the edit

        # 2. A parameter given in the run form applies to that run, is recorded, and reverts nothing else.
        flow_run = run_deployment("retrain/lmforge-retrain", timeout=300, poll_interval=1,
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
