"""Beyond one process, proven on this CPU: Lightning's DDP on two CPU processes (gloo), two "nodes"
on 127.0.0.1, a kill -9 in the middle of a DDP run, and a deployment run by a Prefect worker.

Each run must log one MLflow run, export one model that the Auto classes load, and report the
validation numbers that one process gives for the exported weights.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from lmforge.components.training.run_record import read_run_record
from tests.conftest import free_port, make_project, run_stage_in, sh

pytestmark = pytest.mark.slow

LMFORGE = str(Path(sys.executable).parent / "lmforge")


def ddp(section: str, processes: int = 2, **train) -> list[str]:
    """-S overrides: `section`.train on `processes` CPU processes with DDP."""
    values = {"strategy": "ddp", "devices": processes, "accelerator": "cpu", **train}
    return [arg for key, value in values.items() for arg in ("-S", f"{section}.train.{key}={value}")]


def values(overrides: list[str]) -> list[str]:
    """["-S", "a=1", "-S", "b=2"] -> ["a=1", "b=2"], as load_params takes them."""
    return overrides[1::2]


def lmforge(root: Path, *args: str) -> str:
    result = subprocess.run([LMFORGE, *args], cwd=root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"lmforge {' '.join(args)}:\n{result.stdout}\n{result.stderr[-5000:]}"
    return result.stdout


def runs_named(root: Path, name: str | None, experiment: str = "lmforge") -> list:
    """The MLflow runs called `name` (None: every run) in `experiment`."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], filter_string=f"attributes.run_name = '{name}'" if name else "")


def prepared(tmp_path: Path, **runs) -> Path:
    root = make_project(tmp_path, prompt_runs={}, **runs)
    run_stage_in(root, "ingest")
    run_stage_in(root, "tokenizer")
    return root


def test_pretraining_on_two_processes_after_a_kill_and_on_two_nodes(tmp_path):
    """DDP on two CPU processes killed mid-run and resumed, two nodes on 127.0.0.1: one MLflow run per
    attempt and one export, the validation numbers one process gives for the exported weights."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from lmforge.components.params_file import load_params
    from lmforge.components.pretraining.pretrain import validate_exported

    # 1. BERT on two processes, killed (kill -9, every process) in the middle, then the same command again.
    root = prepared(tmp_path, finetune_runs={})
    overrides = ddp("pretrain.bert", max_steps=24, batch_size=4, checkpoint_every_n_steps=4)
    ckpt = root / "runs/pretrain-bert/checkpoints/last.ckpt"
    first = subprocess.Popen([LMFORGE, "stage", "pretrain-bert", *overrides], cwd=root, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)  # its own group: rank 1 with it
    step, deadline = 0, time.monotonic() + 300
    while step < 8 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
        try:
            step = torch.load(ckpt, weights_only=True)["global_step"] if ckpt.exists() else 0
        except Exception:  # noqa: BLE001 - caught between the writer's rename and our read: look again
            continue
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert 8 <= step < 24, f"killed at step {step}: the run should have been stopped in the middle"
    assert not (root / "models/bert-pretrained").exists()  # nothing half-exported

    out = subprocess.run([LMFORGE, "stage", "pretrain-bert", *overrides], cwd=root, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stderr.count(f"resuming from {Path('runs/pretrain-bert/checkpoints/last.ckpt')}") == 1  # rank 0 says it
    printed = out.stdout.splitlines()
    assert [line for line in printed if line.startswith(("models/", "reports/"))] == [
        "models/bert-pretrained", "reports/metrics/pretrain_bert.json"]  # printed once: by rank 0 alone
    killed, run = sorted(runs_named(root, "pretrain-bert"), key=lambda r: r.info.start_time)
    assert killed.info.status == "FAILED" and run.info.status == "FINISHED"  # one run per attempt, from rank 0
    assert run.data.tags["lmforge.resumed_from"] == killed.info.run_id and run.data.params["train.devices"] == "2"
    assert read_run_record(root / "runs/pretrain-bert").mlflow_run_id == run.info.run_id
    assert AutoModelForMaskedLM.from_pretrained(root / "models/bert-pretrained").config.hidden_size == 64
    reported = json.loads((root / "reports/metrics/pretrain_bert.json").read_text())
    assert reported["steps"] == 24
    # The validation numbers the two processes reported are those of the exported weights in one process.
    params = load_params(root / "params.yaml", values(overrides))
    alone = validate_exported(params.pretrain.bert, root / "data/raw/corpus", root / "models/bert-pretrained")
    for name, value in alone.items():
        assert reported[name.replace("val/", "val_")] == pytest.approx(value, rel=1e-5), name

    # 2. GPT on two nodes of one process each, on this machine: Lightning's environment variables, as a
    #    cluster sets them.
    overrides = ddp("pretrain.gpt", processes=1, num_nodes=2, max_steps=8, batch_size=2)
    port = str(free_port())
    nodes = [subprocess.Popen([LMFORGE, "-v", "stage", "pretrain-gpt", *overrides], cwd=root, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": str(n)})
             for n in (1, 0)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[1][-3000:] + outputs[0][-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[0]  # Lightning's line: shown with -v
    (run,) = runs_named(root, "pretrain-gpt")
    assert run.info.status == "FINISHED" and run.data.params["train.num_nodes"] == "2"
    assert AutoModelForCausalLM.from_pretrained(root / "models/gpt-pretrained").config.n_layer == 2
    reported = json.loads((root / "reports/metrics/pretrain_gpt.json").read_text())
    alone = validate_exported(load_params(root / "params.yaml", values(overrides)).pretrain.gpt, root / "data/raw/corpus",
                              root / "models/gpt-pretrained")
    assert reported["steps"] == 8 and reported["val_loss"] == pytest.approx(alone["val/loss"], rel=1e-5)


def test_finetuning_on_two_processes_keeps_the_best_checkpoint_by_the_whole_split(tmp_path, monkeypatch, prefect_api):
    """GLUE and QA with `lmforge stage`, tagging through the finetune flow, on two processes: each rank
    scores half the validation split; gathered, the numbers are those one process gives the exported weights."""
    from lmforge.components.config import EvaluateConfig, TrackingConfig
    from lmforge.components.params_file import load_params
    from lmforge.components.evaluation.evaluate import evaluate_model
    from lmforge.flows.pipeline import finetune

    root = prepared(tmp_path, finetune_runs={})
    run_stage_in(root, "pretrain-bert", "pretrain.bert.train.max_steps=4")
    monkeypatch.chdir(root)  # evaluate_model and the flow read paths relative to the project
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    for task in ("rte", "squad", "conll2003"):
        overrides = ["-S", f"finetune.task={task}", *ddp("finetune", max_epochs=2)]
        if task == "conll2003":  # the flow runs a multi-process stage as its own command, nested in the flow's run
            result = finetune(tasks=[task], params_file="params.yaml", overrides=values(overrides[2:]))
            assert [s["status"] for s in result["stages"]] == ["ran"] * 3 and result["registered"]
            (run,) = runs_named(root, f"finetune-bert-{task}", "lmforge-finetune")
            (flow_run,) = [r for r in runs_named(root, None, "lmforge-finetune") if "prefect.flow_run_id" in r.data.tags]
            assert run.data.tags["mlflow.parentRunId"] == flow_run.info.run_id
        else:
            printed = lmforge(root, "stage", "finetune", *overrides).splitlines()
            assert [line for line in printed if line.startswith(("models/", "reports/"))] == [
                f"models/bert-{task}", f"reports/metrics/bert-{task}.json"]  # printed once: by rank 0 alone
            (run,) = runs_named(root, f"finetune-bert-{task}")
        assert run.info.status == "FINISHED"
        report = json.loads((root / f"reports/metrics/bert-{task}.json").read_text())
        metric = report["main_metric"]
        history = client.get_metric_history(run.info.run_id, f"val/{metric}")
        params = load_params(root / "params.yaml", values(overrides))
        out = evaluate_model(EvaluateConfig(model=f"bert-{task}", out_dir=str(tmp_path / "eval" / task)),
                             Path("data/raw"), TrackingConfig(enabled=False), params.finetune)
        alone = json.loads((out / "metrics.json").read_text())["validation"][metric]
        assert len(history) == 2 and max(m.value for m in history) == pytest.approx(alone, rel=1e-5), task
        assert report["validation"][metric] == pytest.approx(alone, rel=1e-9), task


def test_a_deployment_runs_on_a_process_work_pool_through_a_prefect_worker(tmp_path, prefect_api):
    """`prefect deploy` from prefect.yaml to a process work pool; `prefect worker` runs it."""
    from prefect.client.orchestration import get_client

    from tests.conftest import REPO

    root = make_project(tmp_path, finetune_runs={}, prompt_runs={})
    # prefect.yaml as it is, its deployments renamed: the test server is shared with test_serve's `lmforge serve`,
    # whose deployments have the same names.
    declared = yaml.safe_load((REPO / "prefect.yaml").read_text())
    for deployment in declared["deployments"]:
        deployment["name"] += "-on-pool"
    (root / "prefect.yaml").write_text(yaml.safe_dump(declared, sort_keys=False))
    run_stage_in(root, "ingest")
    sh("dvc", "commit", "-f", "ingest", cwd=root)  # recorded: retrain re-ingests, finds the same data, stops
    # PWD as a shell in the project has it: prefect.yaml's pull step works in {{ $PWD }}.
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PWD": str(root)}
    prefect = [sys.executable, "-m", "prefect"]

    def run(*args: str) -> str:
        result = subprocess.run([*prefect, *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}\n{result.stderr[-3000:]}"
        return result.stdout

    pool = yaml.safe_load((root / "prefect.yaml").read_text())["definitions"]["work_pool"]["name"]
    run("work-pool", "create", pool, "--type", "process")
    run("--no-prompt", "deploy", "--all")
    flow_run_id = run("deployment", "run", "retrain/lmforge-retrain-on-pool").split("UUID:")[1].split()[0]
    log = tmp_path / "worker.log"
    with open(log, "w") as out:  # its flow run prints much: a file, not a pipe
        worker = subprocess.run([*prefect, "worker", "start", "--pool", pool, "--run-once"], cwd=root, env=env,
                                stdout=out, stderr=subprocess.STDOUT, timeout=300)
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    assert worker.returncode == 0 and state.is_completed(), (state, log.read_text()[-3000:])
    # It ran in the project: retrain re-ingested there and found the data it had.
    assert "data unchanged" in log.read_text() and (root / "mlflow.db").exists()
