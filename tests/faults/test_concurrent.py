"""Concurrent runs: flows at once on one MLflow sqlite store and one DVC repository lose nothing."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from tests.conftest import REPO, make_project, run_stage_in, sh, shell_env

# A child process: register one candidate (a JSON spec) as a version of a shared registered model.
REGISTER_ONE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from lmforge.components.config import RegistryConfig, TrackingConfig
    from lmforge.components.registry.gate import Candidate, register
    spec = json.loads(sys.argv[1])
    candidate = Candidate(spec["name"], Path(spec["model_dir"]), "accuracy", spec["value"], True, "same-eval-data",
                          "a sentence", {"dvc.model": spec["hash"]})
    registration = register(candidate, RegistryConfig(min_improvement=0.0), TrackingConfig(uri=spec["uri"]))
    print(json.dumps({"version": registration.version, "promoted": registration.promoted}))
""")


def child_env() -> dict:
    return {**shell_env(), "PYTHONPATH": str(REPO), "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}


def test_registrations_of_one_model_at_once_keep_every_version_and_the_best_champion(tmp_path, tokenizers_dir):
    """Three processes register versions of one model at once: three versions, `champion` on the best, `candidate` on the last."""
    import mlflow
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizers_dir / "bert"))
    BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=128, num_labels=2)
                                  ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.MlflowClient(tracking_uri=uri).search_experiments()  # the schema, created once before the race

    values = {"weights-a": 0.6, "weights-b": 0.8, "weights-c": 0.7}
    children = [subprocess.Popen([sys.executable, "-c", REGISTER_ONE, json.dumps(
        {"name": "race", "model_dir": str(folder), "value": value, "hash": weights, "uri": uri})],
        cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for weights, value in values.items()]
    outputs = [child.communicate(timeout=300) for child in children]
    for child, (out, err) in zip(children, outputs):
        assert child.returncode == 0, err[-3000:]

    client = mlflow.MlflowClient(tracking_uri=uri)
    versions = {int(v.version): v for v in client.search_model_versions("name = 'lmforge-race'")}
    assert sorted(versions) == [1, 2, 3]
    assert sorted(v.tags["dvc.model"] for v in versions.values()) == sorted(values)
    champion = client.get_model_version_by_alias("lmforge-race", "champion")
    assert champion.tags["dvc.model"] == "weights-b"  # 0.8: whatever order they registered in
    assert int(client.get_model_version_by_alias("lmforge-race", "candidate").version) == 3
    # Each gate decision was taken against the champion of its time: replaying them in order agrees.
    best = None
    for number in sorted(versions):
        value = float(versions[number].tags["metric.value"])
        promoted = versions[number].tags["gate.decision"] == "champion"
        assert promoted == (best is None or value >= best[1]), versions[number].tags["gate.reason"]
        best = (number, value) if promoted else best
    assert best[0] == int(champion.version)
    runs = client.search_runs([client.get_experiment_by_name("lmforge").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3


def test_params_written_by_flows_at_once_keep_every_run(tmp_path):
    """Three flows add their fine-tuning runs to params.yaml at once: all three runs are in the file."""
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    add_run = textwrap.dedent("""
        import sys
        from lmforge.components.config import FinetuneRun
        from lmforge.components.params_file import load_params, write_params
        base = load_params(sys.argv[1])
        for step in range(5):  # several read-modify-writes each, interleaving with the others'
            params = load_params(sys.argv[1]) if step else base
            wanted = params.model_copy(deep=True)
            run = FinetuneRun(task=sys.argv[2], model="bert", init=f"checkpoints/step{step}")
            wanted.finetune.runs[run.name] = run
            write_params(wanted, sys.argv[1], base=params)
    """)
    children = [subprocess.Popen([sys.executable, "-c", add_run, str(params), task], cwd=tmp_path, env=child_env(),
                                 stderr=subprocess.PIPE, text=True) for task in ("rte", "sst2", "mrpc")]
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err[-3000:]
    runs = yaml.safe_load(params.read_text())["finetune"]["runs"]
    added = {f"bert-step{step}-{task}" for task in ("rte", "sst2", "mrpc") for step in range(5)}
    assert added <= set(runs)
    assert "bert-sst2" in runs and "# `dvc repro` runs each of these" in params.read_text()  # the rest, comments kept


def test_dvc_lock_held_by_another_process_makes_a_stage_fail_clearly(tmp_path, monkeypatch):
    """Another process holds DVC's lock past the wait: recording fails with the repository named; dvc.lock untouched."""
    from lmforge.components import versioning
    from lmforge.components.errors import LmforgeError

    root = make_project(tmp_path, finetune_runs={}, prompt_runs={})
    run_stage_in(root, "ingest")
    sh("dvc", "commit", "-f", "ingest", cwd=root)
    before = (root / "dvc.lock").read_text()
    monkeypatch.setattr(versioning, "LOCK_WAIT_S", 2)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from dvc.repo import Repo
        with Repo(sys.argv[1]).lock:
            print("locked", flush=True)
            time.sleep(60)
    """), str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LmforgeError, match=rf"DVC repository {root}: could not take its lock for 2 s to record ingest"):
            versioning.DvcProject(root).record("ingest")
    finally:
        holder.kill()
        holder.wait()
    assert (root / "dvc.lock").read_text() == before
    # Once the other process is gone the lock is free again, and the recorded stage is still current.
    assert "up to date" in sh("dvc", "status", "ingest", cwd=root)


@pytest.mark.slow
def test_three_finetune_flows_at_once_record_every_run_version_and_stage(tmp_path, prefect_api):
    """Three finetune flows at once (one Prefect server, one sqlite store, one DVC repo): every run, version and stage recorded."""
    import mlflow

    root = make_project(tmp_path, finetune_runs={}, prompt_runs={})
    for stage in ("ingest", "tokenizer", "pretrain-bert"):
        run_stage_in(root, stage)
    sh("dvc", "commit", "-f", "ingest", "tokenizer", "pretrain-bert", cwd=root)
    env = {**child_env(), "PREFECT_API_URL": prefect_api}  # as a shell starts them (conftest.shell_env)
    flow = "import sys; from lmforge.flows.pipeline import finetune; finetune(tasks=[sys.argv[1]], params_file='params.yaml')"
    children = {task: subprocess.Popen([sys.executable, "-c", flow, task], cwd=root, env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for task in ("rte", "sst2", "mrpc")}
    for task, child in children.items():
        out, _ = child.communicate(timeout=500)
        assert child.returncode == 0, f"{task}:\n{out[-4000:]}"
        # Flows Prefect runs itself (a worker's) never pass through the CLI's console setup: the libraries'
        # own bars stayed on (datasets drew ~50 lines per stage, "Saving the dataset", "Map").
        assert "examples/s" not in out, f"{task}:\n{out[-4000:]}"

    names = [f"bert-{task}" for task in ("rte", "sst2", "mrpc")]
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert set(params["finetune"]["runs"]) == set(names)  # no flow wrote back the file without the others' runs
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    stages = [f"{kind}@{name}" for name in names for kind in ("finetune", "evaluate")]
    assert set(stages) <= set(lock)
    assert "up to date" in sh("dvc", "status", *stages, cwd=root)  # dvc.lock matches every output on disk

    client = mlflow.MlflowClient(tracking_uri=params["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("lmforge-finetune").experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"}
    parents = [r for r in runs if "prefect.flow_run_id" in r.data.tags]
    assert len(parents) == 3
    for parent in parents:
        children_of = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
        assert len(children_of) == 3 and sum(n.startswith("finetune-") for n in children_of) == 1, children_of
    for name in names:
        version = client.get_model_version_by_alias(f"lmforge-{name}", "champion")
        assert int(version.version) == 1 == int(client.get_model_version_by_alias(f"lmforge-{name}", "candidate").version)
        md5 = next(o["md5"] for o in lock[f"finetune@{name}"]["outs"] if o["path"] == f"models/{name}")
        assert version.tags["dvc.model"] == md5
