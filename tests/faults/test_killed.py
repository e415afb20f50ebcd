"""Killed mid-stage (SIGKILL): earlier outputs stay whole, the next run completes, no MLflow run stays RUNNING

Each case starts the real `lmforge` executable on a copy of a small project and stops it at a
chosen moment of its work: `sitecustomize.py`, put on PYTHONPATH by the test, watches Python's
audit events and sends its own process SIGSTOP when it opens or renames a given path. The test
looks at the disk at that moment, SIGKILLs the process (and anything it started), and runs the
same command again.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from datasets import load_from_disk
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lmforge.components.training.run_record import read_run_record
from tests.conftest import make_project, run_stage_in

pytestmark = pytest.mark.slow

LMFORGE = Path(sys.executable).parent / "lmforge"

# Loaded by every Python process the test starts: freezes the process at the nth audit event in
# LMFORGE_TEST_FREEZE's events whose path argument contains its needle.
FREEZER = '''
import json, os, signal, sys

_spec = os.environ.get("LMFORGE_TEST_FREEZE")
if _spec:
    _spec = json.loads(_spec)
    _seen = [0]

    def _freeze(event, args):
        if event not in _spec["events"]:
            return
        paths = [os.fsdecode(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        if any(_spec["needle"] in p for p in paths):
            _seen[0] += 1
            if _seen[0] == _spec["nth"]:
                # The whole process group: a flow and the worker processes of its stages run at once, one
                # of which may be the one that got here (Frozen starts each command in a group of its own).
                os.killpg(os.getpgrp(), signal.SIGSTOP)

    sys.addaudithook(_freeze)
'''

# The stages the cases need done before them, in pipeline order (run in this process: they are not under test).
PREPARE = {"ingest": ("ingest",), "tokenizer": ("tokenizer",), "pretrain-bert": ("pretrain-bert",),
           "finetune": ("finetune", "finetune.task=rte")}


class Workspace:
    """One project whose stages run on demand, up to the one a case needs; each case gets a copy."""

    def __init__(self, root: Path):
        self.root, self.done = root, 0

    def copy(self, upto: str, dest: Path) -> Path:
        names = list(PREPARE)
        while self.done <= names.index(upto):
            # Tracking off: each copy's MLflow store starts empty, with its artifacts inside the copy.
            run_stage_in(self.root, *PREPARE[names[self.done]], "tracking.enabled=false")
            self.done += 1
        root = dest / "project"
        shutil.copytree(self.root, root, symlinks=True)
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["tracking"]["uri"] = f"sqlite:///{root}/mlflow.db"
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    # Flows as users run them, two stages at once: a kill lands in the flow or in a stage's worker.
    return Workspace(make_project(tmp_path_factory.mktemp("killed"), finetune_runs={
        "bert-rte": {"task": "rte", "model": "bert", "init": "pretrained"}}, prompt_runs={}, parallel_stages=None))


def child_env(root: Path, freeze: dict | None = None) -> dict:
    hooks = root.parent / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(FREEZER)
    # Flows run against the session's Prefect server (conftest.prefect_api) when the test asks for it.
    env = {**os.environ, "PATH": f"{LMFORGE.parent}:{os.environ['PATH']}", "PYTHONPATH": str(hooks),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           # One thread per process: tiny models gain nothing from two, and lose much when the cores are shared.
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("LMFORGE_TEST_FREEZE", None)
    if freeze is not None:
        env["LMFORGE_TEST_FREEZE"] = json.dumps(freeze)
    return env


def run(root: Path, *args: str) -> str:
    """Run `lmforge args` to completion; its output, or the test fails with it."""
    result = subprocess.run([str(LMFORGE), *args], cwd=root, env=child_env(root), capture_output=True, text=True)
    assert result.returncode == 0, f"lmforge {' '.join(args)} failed:\n{result.stdout}\n{result.stderr[-6000:]}"
    return result.stdout + result.stderr


class Frozen:
    """`lmforge args` started and stopped at the `nth` of `events` on a path containing `needle`."""

    def __init__(self, root: Path, args: tuple[str, ...], events: tuple[str, ...], needle: str, nth: int = 1):
        self.log = root.parent / f"killed-{len(list(root.parent.glob('killed-*')))}.log"
        self.what = f"lmforge {' '.join(args)} at {'/'.join(events)} #{nth} of *{needle}*"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen([str(LMFORGE), *args], cwd=root, stdout=out, stderr=subprocess.STDOUT,
                                            env=child_env(root, {"events": list(events), "needle": needle, "nth": nth}),
                                            start_new_session=True)
        self.wait_stopped()

    def wait_stopped(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.process.pid, os.WUNTRACED | os.WNOHANG)
            if pid == 0:
                time.sleep(0.02)
                continue
            if os.WIFSTOPPED(status):
                return
            self.process.returncode = os.waitstatus_to_exitcode(status)
            pytest.fail(f"{self.what}: exited ({self.process.returncode}) before getting there:\n{self.tail()}")
        self.kill()
        pytest.fail(f"{self.what}: not there after {timeout} s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the process, then what it started (a flow's Prefect server), which outlives it."""
        family = psutil.Process(self.process.pid).children(recursive=True)
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()  # reaped: its pid is gone, not a zombie
        for child in family:
            try:
                child.kill()
                child.wait(10)
            except psutil.NoSuchProcess:
                pass

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def mlflow_runs(root: Path, experiment: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"]) if found else []


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp-*")) + sorted(p.name for p in folder.glob(".*.old-*"))


def test_ingest(workspace, tmp_path):
    """SIGKILL in ingest while it writes the manifest of its new data: data/raw stays the previous data; the rerun replaces it and removes the killed attempt's folder"""
    root = workspace.copy("ingest", tmp_path)
    manifest = root / "data/raw/manifest.json"
    before = manifest.read_text()
    args = ("stage", "ingest", "-S", "ingest.demo.seed=1")

    frozen = Frozen(root, args, ("open",), "manifest.json.tmp-")
    partial = [p for p in (root / "data").glob(".raw.tmp-*")]
    assert len(partial) == 1 and (partial[0] / "corpus").is_dir()  # mid-write: the datasets saved, no manifest yet
    assert not (partial[0] / "manifest.json").exists()
    frozen.kill()
    assert manifest.read_text() == before and json.loads(before)["corpus"]["demo"]["seed"] == 0
    assert len(load_from_disk(str(root / "data/raw/corpus"))["train"]) > 0

    run(root, *args)
    assert json.loads(manifest.read_text())["corpus"]["demo"]["seed"] == 1
    assert load_from_disk(str(root / "data/raw/rte"))["train"].num_rows == 40
    assert leftovers(root / "data") == []


def test_tokenizer(workspace, tmp_path):
    """SIGKILL in the tokenizer stage while it saves the second tokenizer: both tokenizers stay the previous pair; the rerun replaces both"""
    root = workspace.copy("tokenizer", tmp_path)
    metrics = root / "reports/metrics/tokenizer.json"
    before = metrics.read_text()
    args = ("stage", "tokenizer", "-S", "tokenizer.bert.vocab_size=400", "-S", "tokenizer.gpt.vocab_size=400")

    frozen = Frozen(root, args, ("open",), ".gpt.tmp-")
    assert len(list((root / "data/tokenizers").glob(".bert.tmp-*"))) == 1  # saved, not moved into place
    frozen.kill()
    sizes = {name: len(AutoTokenizer.from_pretrained(root / "data/tokenizers" / name)) for name in ("bert", "gpt")}
    assert sizes == {"bert": 500, "gpt": 500} and metrics.read_text() == before

    run(root, *args)
    for name in ("bert", "gpt"):
        assert len(AutoTokenizer.from_pretrained(root / "data/tokenizers" / name)) == 400
        assert json.loads(metrics.read_text())[name]["vocab_size"] == 400
    assert leftovers(root / "data/tokenizers") == []


def test_pretraining(workspace, tmp_path):
    """SIGKILL in BERT pretraining at step 12: the next run resumes from last.ckpt (step 8) and ends at step 20 with the weights of an uninterrupted run; the killed MLflow run ends FAILED"""
    root = workspace.copy("pretrain-bert", tmp_path)
    model = root / "models/bert-pretrained/model.safetensors"
    uninterrupted, previous = load_file(model), model.read_bytes()  # the workspace's run: same params, no kill
    shutil.rmtree(root / "runs/pretrain-bert")
    ckpt = root / "runs/pretrain-bert/checkpoints/last.ckpt"
    # Checkpoints every 4 steps (the workspace's run: every 10); what is saved when does not change training.
    args = ("stage", "pretrain-bert", "-S", "pretrain.bert.train.checkpoint_every_n_steps=4")

    frozen = Frozen(root, args, ("os.rename",), "last.ckpt", nth=3)  # step 12's checkpoint, about to replace step 8's
    assert torch.load(ckpt, weights_only=True)["global_step"] == 8
    frozen.kill()
    assert model.read_bytes() == previous  # nothing exported by the killed attempt
    [killed] = mlflow_runs(root, "lmforge")
    assert killed.info.status == "RUNNING" and killed.data.tags["lmforge.pid"] == str(frozen.process.pid)

    out = run(root, *args)
    assert f"resuming from {ckpt.relative_to(root)}" in out
    assert json.loads((root / "reports/metrics/pretrain_bert.json").read_text())["steps"] == 20
    resumed = load_file(model)
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=0, atol=1e-6, msg=key)
    assert leftovers(ckpt.parent) == [] and leftovers(root / "models") == []

    import mlflow

    killed, finished = mlflow_runs(root, "lmforge")
    assert killed.info.status == "FAILED" and killed.data.tags["lmforge.killed"] == "true"
    assert finished.info.status == "FINISHED" and finished.data.tags["lmforge.resumed_from"] == killed.info.run_id
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    steps = [m.step for m in client.get_metric_history(finished.info.run_id, "train/loss")]
    assert steps and min(steps) > 8 and max(steps) <= 20  # this attempt trained steps 9-20 only
    assert read_run_record(root / "runs/pretrain-bert").mlflow_run_id == finished.info.run_id


def test_finetuning(workspace, tmp_path):
    """SIGKILL in fine-tuning after its best checkpoint: the previous model and metrics stay; the rerun replaces them and ends the killed MLflow run FAILED"""
    root = workspace.copy("finetune", tmp_path)
    model_dir, metrics = root / "models/bert-rte", root / "reports/metrics/bert-rte.json"
    previous, before = (model_dir / "model.safetensors").read_bytes(), metrics.read_text()
    args = ("stage", "finetune", "-S", "finetune.task=rte", "-S", "finetune.train.seed=1")

    frozen = Frozen(root, args, ("os.rename", "open"), "best.ckpt")
    frozen.kill()
    assert (model_dir / "model.safetensors").read_bytes() == previous and metrics.read_text() == before
    [killed] = mlflow_runs(root, "lmforge")
    assert killed.info.status == "RUNNING" and killed.info.run_name == "finetune-bert-rte"

    run(root, *args)
    assert (model_dir / "model.safetensors").read_bytes() != previous  # seed 1: other weights
    assert AutoModelForSequenceClassification.from_pretrained(model_dir).num_labels == 2
    report = json.loads(metrics.read_text())
    assert report["task"] == "rte" and 0 <= report["validation"]["accuracy"] <= 1 and report["steps"] > 0
    killed, finished = mlflow_runs(root, "lmforge")
    assert (killed.info.status, killed.data.tags.get("lmforge.killed")) == ("FAILED", "true")
    assert finished.info.status == "FINISHED"
    assert read_run_record(root / "runs/finetune-bert-rte").mlflow_run_id == finished.info.run_id
    assert leftovers(root / "models") == []


def test_registration(workspace, tmp_path, prefect_api):
    """SIGKILL in the evaluate_and_register flow while it saves the model to register: nothing is registered; the rerun registers version 1, ends the killed flow's MLflow runs FAILED and, with stages recorded at once (orchestration.record_within_s 0), does not redo the evaluation"""
    import mlflow

    root = workspace.copy("finetune", tmp_path)
    args = ("flow", "evaluate_and_register", "--models", "bert-rte")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")

    # Each stage recorded in dvc.lock as it ends (by default within 30 s: a kill in between reruns it).
    frozen = Frozen(root, (*args, "-S", "orchestration.record_within_s=0"), ("open",), "MLmodel")
    frozen.kill()
    runs = mlflow_runs(root, "lmforge-evaluate_and_register")
    killed = {r.info.run_id: r for r in runs if r.info.status == "RUNNING"}
    # Left RUNNING by the kill: the flow's parent run and its registration run (the evaluation had finished).
    assert sorted(r.data.tags.get("lmforge.stage", "flow") for r in killed.values()) == ["flow", "register"]
    assert not client.search_registered_models("name = 'lmforge-bert-rte'") or \
        not client.search_model_versions("name = 'lmforge-bert-rte'")

    out = run(root, *args)
    assert "lmforge-bert-rte v1: champion now" in out
    assert int(client.get_model_version_by_alias("lmforge-bert-rte", "champion").version) == 1
    after = mlflow_runs(root, "lmforge-evaluate_and_register")
    for run_ in after:
        if run_.info.run_id in killed:
            assert (run_.info.status, run_.data.tags.get("lmforge.killed")) == ("FAILED", "true"), run_.info.run_name
        else:
            assert run_.info.status == "FINISHED", run_.info.run_name
    assert len(after) == len(runs) + 2  # the rerun's flow and registration runs: the evaluation was not redone
