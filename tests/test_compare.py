"""`lmforge compare` and what it reads: runs grouped by task/model against the champion, the lmforge.*
tags every run carries, the data a run used as MLflow dataset inputs, the experiment's kind."""

import pytest

from lmforge.components.compare import collect_groups, compare_runs, plot_groups, render
from lmforge.components.config import TrackingConfig
from lmforge.components.errors import LmforgeError
from lmforge.components.tracking import (EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, client_run, flow_run, parent_run)

EXPERIMENT = "lmforge-pipeline"
FLOW_ID = "0f3c2a51-9d1e-4c47-b0a2-5a6f3b1c7e88"


def log(tracking, name, labels, params, metrics, tags=None):
    with client_run(tracking, name, tags, **labels) as (client, run_id):
        for key, value in params.items():
            client.log_param(run_id, key, value)
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An MLflow store of a flow run's runs (two tasks, two models), an older run without lmforge tags,
    a finetune run outside the flow, and a champion for bert-sst2 only. The tests only read it."""
    import mlflow

    tmp_path = tmp_path_factory.mktemp("store")
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment=EXPERIMENT)
    ids = {}
    flow_token = flow_run.set(FLOW_ID)
    with client_run(tracking, "crimson-fox", {"prefect.flow_run_id": FLOW_ID}, stage="flow") as (_, parent):
        token = parent_run.set(parent)
        shared = {"models_dir": "models", "max_seq_length": "128"}
        bert, gpt = {"model": "bert", "stage": "finetune"}, {"model": "gpt", "stage": "finetune"}
        ids["bert-sst2"] = log(tracking, "finetune-bert-sst2", {"task": "sst2", "init": "pretrained", **bert},
                               {**shared, "task": "sst2", "model": "bert", "init": "pretrained",
                                "run_dir": "runs/finetune-bert-sst2", "train.learning_rate": "5e-05"},
                               {"validation/accuracy": 0.80, "val/accuracy": 0.79})
        ids["bert-scratch-sst2"] = log(tracking, "finetune-bert-scratch-sst2", {"task": "sst2", "init": "scratch", **bert},
                                       {**shared, "task": "sst2", "model": "bert", "init": "scratch",
                                        "run_dir": "runs/finetune-bert-scratch-sst2", "train.learning_rate": "0.0001"},
                                       {"validation/accuracy": 0.60})
        ids["evaluate-bert-sst2"] = log(tracking, "evaluate-bert-sst2",
                                        {"task": "sst2", "model": "bert", "init": "pretrained", "stage": "evaluate"},
                                        {"model": "bert-sst2", "path": "models/bert-sst2", "task": "sst2",
                                         "splits": "validation"}, {"validation/accuracy": 0.81, "score": 0.81})
        ids["gpt-sst2"] = log(tracking, "finetune-gpt-sst2", {"task": "sst2", "init": "pretrained", **gpt},
                              {**shared, "task": "sst2", "model": "gpt", "train.learning_rate": "5e-05"},
                              {"validation/accuracy": 0.70})
        ids["bert-mrpc"] = log(tracking, "finetune-bert-mrpc", {"task": "mrpc", "init": "pretrained", **bert},
                               {**shared, "task": "mrpc", "seed": "None"},
                               {"validation/f1": 0.70, "validation/accuracy": 0.65})
        ids["bert-mrpc-seed1"] = log(tracking, "finetune-bert-mrpc-seed1", {"task": "mrpc", "init": "pretrained", **bert},
                                     {**shared, "task": "mrpc", "seed": "1"},
                                     {"validation/f1": 0.75, "validation/accuracy": 0.60})
        log(tracking, "register-bert-sst2", {"task": "sst2", "model": "bert", "stage": "register"}, {},
            {"gate/candidate_accuracy": 0.8})
        parent_run.reset(token)
    flow_run.reset(flow_token)
    ids["parent"] = parent
    # Outside the flow; and a run from before the tags (its params say what it is).
    ids["bert-mrpc-lr"] = log(tracking, "finetune-bert-mrpc-lr", {"task": "mrpc", "init": "pretrained", **bert},
                              {**shared, "task": "mrpc", "seed": "None", "train.learning_rate": "1e-4"},
                              {"validation/f1": 0.72})
    client = mlflow.MlflowClient(tracking_uri=tracking.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    old = client.create_run(experiment, run_name="finetune-bert-sst2-old", tags={})
    for key, value in {"task": "sst2", "model": "bert", "init": "pretrained", "train.learning_rate": "3e-05",
                       **shared}.items():
        client.log_param(old.info.run_id, key, value)
    client.log_metric(old.info.run_id, "validation/accuracy", 0.78)
    client.set_terminated(old.info.run_id)
    ids["old"] = old.info.run_id

    # The registry: bert-sst2's champion was trained by finetune-bert-sst2 (the gate's lineage tag).
    client.create_registered_model("lmforge-bert-sst2")
    version = client.create_model_version("lmforge-bert-sst2", str(tmp_path), run_id=ids["bert-sst2"],
                                          tags={"lineage.training_run": ids["bert-sst2"], "metric.name": "accuracy",
                                                "metric.value": "0.8"})
    client.set_registered_model_alias("lmforge-bert-sst2", "champion", version.version)
    return tracking, ids


def by_key(groups):
    return {(g.task, g.model): g for g in groups}


def test_runs_group_by_task_and_model_with_differing_params_and_the_gap_to_the_champion(store, tmp_path):
    tracking, ids = store
    groups = by_key(collect_groups(tracking, EXPERIMENT))
    assert list(groups) == [("mrpc", "bert"), ("sst2", "bert"), ("sst2", "gpt")]  # not the flow, not register

    sst2 = groups["sst2", "bert"]
    assert sst2.metric == "validation/accuracy" and sst2.higher_is_better  # sst2's main metric
    assert [r.name for r in sst2.rows] == ["evaluate-bert-sst2", "finetune-bert-sst2", "finetune-bert-sst2-old",
                                           "finetune-bert-scratch-sst2"]  # best first
    assert sst2.params == ["train.learning_rate"]  # run_dir is a path, max_seq_length the same, path one value
    assert sst2.champion.model == "lmforge-bert-sst2" and sst2.champion.value == pytest.approx(0.80)
    assert [round(r.delta, 4) for r in sst2.rows] == [0.01, 0.0, -0.02, -0.2]
    assert [r.is_champion for r in sst2.rows] == [False, True, False, False]
    assert sst2.rows[2].labels.task == "sst2" and sst2.rows[2].labels.stage == "finetune"  # from its params, name

    mrpc = groups["mrpc", "bert"]
    assert mrpc.metric == "validation/f1"  # mrpc's main metric, not accuracy
    assert [r.name for r in mrpc.rows] == ["finetune-bert-mrpc-seed1", "finetune-bert-mrpc-lr", "finetune-bert-mrpc"]
    assert mrpc.params == ["seed"]  # not the learning rate, which one run alone logs
    assert mrpc.champion is None and "no champion: lmforge-bert-mrpc" in mrpc.champion_note
    assert all(r.delta is None for r in mrpc.rows)

    text = render(list(groups.values()))
    assert "sst2 / bert: validation/accuracy (higher is better), 4 runs" in text
    assert "champion lmforge-bert-sst2 v1: 0.8000" in text and "no champion: lmforge-bert-mrpc" in text
    assert "+0.0100" in text and "-0.2000" in text and "finetune-bert-sst2 *" in text
    assert "models_dir" not in text and "run_dir" not in text and "max_seq_length" not in text
    assert max(len(line) for line in text.splitlines()) < 120  # a terminal's width

    figure = plot_groups(list(groups.values()), tmp_path / "compare.png")
    assert sorted(ax.get_title() for ax in figure.axes) == ["mrpc", "sst2"]  # one panel per task
    assert (tmp_path / "compare.png").stat().st_size > 0


def test_filters_by_task_model_flow_run_and_metric(store, tmp_path):
    tracking, ids = store
    assert list(by_key(collect_groups(tracking, EXPERIMENT, task="mrpc"))) == [("mrpc", "bert")]
    assert list(by_key(collect_groups(tracking, EXPERIMENT, model="gpt"))) == [("sst2", "gpt")]
    in_flow = by_key(collect_groups(tracking, EXPERIMENT, flow_run=FLOW_ID[:8], task="mrpc"))
    assert [r.name for r in in_flow["mrpc", "bert"].rows] == ["finetune-bert-mrpc-seed1", "finetune-bert-mrpc"]
    assert list(by_key(collect_groups(tracking, EXPERIMENT, flow_run="crimson-fox"))) == [
        ("mrpc", "bert"), ("sst2", "bert"), ("sst2", "gpt")]  # the flow run's name works too
    (only,) = collect_groups(tracking, EXPERIMENT, metric="score")
    assert (only.task, [r.name for r in only.rows]) == ("sst2", ["evaluate-bert-sst2"])
    limited = by_key(collect_groups(tracking, EXPERIMENT, max_runs=1))
    assert [len(g.rows) for g in limited.values()] == [1, 1, 1]
    filtered = collect_groups(tracking, EXPERIMENT, filter_string="tags.`lmforge.init` = 'scratch'")
    assert [r.name for g in filtered for r in g.rows] == ["finetune-bert-scratch-sst2"]
    with pytest.raises(LmforgeError, match="no run with a task and model for task 'qnli'"):
        collect_groups(tracking, EXPERIMENT, task="qnli")
    with pytest.raises(LmforgeError, match="not found"):
        collect_groups(tracking, "nope")

    text = compare_runs(tracking, EXPERIMENT, "validation/accuracy", plot_path=tmp_path / "c.png")
    assert "finetune-bert-sst2" in text and "finetune-gpt-sst2" in text and (tmp_path / "c.png").exists()


def test_cli_compare(store, tmp_path, capsys):
    from lmforge.components.cli import main

    tracking, _ = store
    params = tmp_path / "params.yaml"
    params.write_text(f"tracking:\n  uri: {tracking.uri}\n  experiment: lmforge\n")
    assert main(["compare", "-p", str(params), "--task", "sst2", "--model", "bert", "--out",
                 str(tmp_path / "cli.png")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sst2 / bert: validation/accuracy") and "mrpc" not in out and "plot: " in out
    assert main(["compare", "-p", str(params), "--task", "qnli"]) == 2


# ------------------------------------------------------------------ what a real run leaves in MLflow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """data/raw/sst2 (demo) and models/bert-pretrained, a tiny random BERT."""
    from lmforge.components.config import BertTokenizerConfig, DemoConfig, ModelConfig
    from lmforge.components.data.demo import build_demo
    from lmforge.components.pretraining.models import build_bert
    from lmforge.components.tokenizer import train_bert_tokenizer

    root = tmp_path_factory.mktemp("compare")
    demo = build_demo(DemoConfig(entities=40, corpus_documents=60, glue_train=32, glue_eval=16))
    demo["sst2"].save_to_disk(str(root / "raw" / "sst2"))
    tokenizer = train_bert_tokenizer(demo["corpus"]["train"], BertTokenizerConfig(vocab_size=400, min_frequency=1))
    model = build_bert(ModelConfig(hidden_size=32, num_layers=1, num_heads=2), len(tokenizer), tokenizer.pad_token_id,
                       "sop")
    model.save_pretrained(root / "models" / "bert-pretrained")
    tokenizer.save_pretrained(root / "models" / "bert-pretrained")
    return root


def test_a_finetune_and_evaluate_run_carry_tags_dataset_inputs_and_a_training_experiment(workspace, tmp_path,
                                                                                      monkeypatch):
    import mlflow

    from lmforge.components.config import EvaluateConfig, FinetuneConfig, FinetuneRun
    from lmforge.components.evaluation.evaluate import evaluate_model
    from lmforge.components.finetuning.finetune import finetune_glue
    from lmforge.components.versioning import dvc_hash
    from tests.conftest import init_dir

    monkeypatch.chdir(workspace)
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="lmforge")
    cfg = FinetuneConfig.model_validate({
        "models_dir": str(workspace / "models"), "reports_dir": str(tmp_path / "reports"),
        "predictions_dir": str(tmp_path / "predictions"),
        "train": {"max_steps": 2, "batch_size": 16, "val_every_n_steps": 2, "warmup_steps": 1}})
    token = flow_run.set("flow-123")
    try:
        run = FinetuneRun(task="sst2", model="bert")
        out = finetune_glue(cfg, run, init_dir(workspace, run), workspace / "raw", tracking)
    finally:
        flow_run.reset(token)
    evaluate_model(EvaluateConfig(model=str(out), out_dir=str(tmp_path / "evaluation")), workspace / "raw", tracking, cfg)

    client = mlflow.MlflowClient(tracking_uri=tracking.uri)
    experiment = client.get_experiment_by_name("lmforge")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    (trained,) = client.search_runs([experiment.experiment_id], "tags.`lmforge.task` = 'sst2' and "
                                    "tags.`lmforge.model` = 'bert' and tags.`lmforge.stage` = 'finetune'")
    assert trained.info.run_name == "finetune-bert-sst2"
    assert {k: v for k, v in trained.data.tags.items() if k.startswith("lmforge.") and k not in (
        "lmforge.pid", "lmforge.host")} == {"lmforge.task": "sst2", "lmforge.model": "bert", "lmforge.init": "pretrained",
                                           "lmforge.stage": "finetune", "lmforge.flow_run": "flow-123"}
    inputs = {(i.dataset.name, {t.key: t.value for t in i.tags}["mlflow.data.context"]): i.dataset
              for i in trained.inputs.dataset_inputs}
    assert set(inputs) == {("sst2", "training"), ("sst2", "validation")}
    assert inputs["sst2", "training"].digest == dvc_hash(workspace / "raw" / "sst2" / "train")
    assert inputs["sst2", "validation"].digest == dvc_hash(workspace / "raw" / "sst2" / "validation")
    assert '"num_rows": 32' in inputs["sst2", "training"].profile

    (scored,) = client.search_runs([experiment.experiment_id], "tags.`lmforge.stage` = 'evaluate'")
    assert (scored.data.tags["lmforge.task"], scored.data.tags["lmforge.model"], scored.data.tags["lmforge.init"],
            scored.data.tags["lmforge.flow_run"]) == ("sst2", "bert", "pretrained", "")
    assert [(i.dataset.name, {t.key: t.value for t in i.tags}) for i in scored.inputs.dataset_inputs] == [
        ("sst2", {"mlflow.data.context": "validation", "lmforge.split": "validation"})]

    (group,) = collect_groups(tracking, "lmforge")
    assert (group.task, group.model, sorted(r.labels.stage for r in group.rows)) == ("sst2", "bert",
                                                                                     ["evaluate", "finetune"])


def test_dvc_hash_is_what_dvc_records(tmp_path, monkeypatch):
    from dvc.repo import Repo

    from lmforge.components.versioning import dvc_hash

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "a.txt").write_text("one\n")
    (tmp_path / "data" / "sub" / "b.bin").write_bytes(bytes(range(256)))
    Repo.init(no_scm=True)
    with Repo(".") as repo:
        repo.add("data")
    import yaml

    assert dvc_hash(tmp_path / "data") == yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]["md5"]
