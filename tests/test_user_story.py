"""The loop lmforge exists for, on a user's own files (not the demo world): a folder of .txt files
with no validation split and a GLUE-format SST-2 folder. The pipeline registers every model; the
data grows; `lmforge flow retrain` retrains, rescores every champion on the new evaluation data and
tags each new version with the gate's decision and both numbers; a second retrain does nothing."""

import json
import random

import pytest
import yaml

from tests.conftest import make_project, sh

pytestmark = pytest.mark.slow

PEOPLE = ["Ada", "Bram", "Cleo", "Dov", "Esme", "Finn", "Gia", "Hugo", "Ines", "Jonas", "Kira", "Lev"]
CITIES = ["Velmora", "Kestrel Bay", "Orlane", "Tessaly", "Brightwater", "Amberfield"]
JOBS = ["baker", "pilot", "teacher", "painter", "doctor", "farmer"]
GOOD = ["wonderful", "great", "moving", "charming", "brilliant"]
BAD = ["dull", "awful", "tedious", "clumsy", "boring"]


def book(rng: random.Random, n: int) -> str:
    """A document: a few lines of facts, one per line."""
    lines = []
    for _ in range(n):
        p, c, j = rng.choice(PEOPLE), rng.choice(CITIES), rng.choice(JOBS)
        lines.append(f"{p} was born in {c} and works as a {j}. The film about {p} was "
                     f"{rng.choice(GOOD + BAD)}.")
    return "\n".join(lines) + "\n"


def reviews(rng: random.Random, n: int) -> str:
    rows = []
    for _ in range(n):
        label = rng.random() < 0.5
        rows.append(f"the film about {rng.choice(PEOPLE)} was {rng.choice(GOOD if label else BAD)}\t{int(label)}\n")
    return "".join(rows)


def write_user_files(root, rng: random.Random, start: int, books: int) -> None:
    (root / "corpus").mkdir(exist_ok=True)
    for i in range(start, start + books):
        (root / "corpus" / f"book{i:03d}.txt").write_text(book(rng, 12))
    sst = root / "glue_data" / "SST-2"
    sst.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", 120), ("dev.tsv", 40)):
        path = sst / name
        path.write_text((path.read_text() if path.exists() else "sentence\tlabel\n") + reviews(rng, n))


def lmforge(*argv: str) -> None:
    from lmforge.components.cli import main

    assert main(list(argv)) == 0


def run_console(*argv: str, cwd) -> list[str]:
    """`lmforge ARGV` as a user runs it (its own process, logging set up by the CLI): what it printed."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, "-m", "lmforge.components.cli", *argv], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert done.returncode == 0, done.stdout
    return done.stdout.splitlines()


def versions(client, name: str) -> dict[int, object]:
    return {int(v.version): v for v in client.search_model_versions(f"name = '{name}'")}


def test_retrain_on_grown_user_files_rescores_every_champion(tmp_path, monkeypatch, prefect_api, capsys):
    import mlflow

    # The default two stages at once: on the user's own files, and again after they grew.
    root = make_project(tmp_path, finetune_runs={"bert-sst2": {"task": "sst2", "model": "bert", "init": "pretrained"}},
                        prompt_runs={}, parallel_stages=None)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ingest"]["demo"]["enabled"] = False
    params["ingest"]["sources"] = [
        {"name": "corpus", "source": "local", "format": "text", "data_files": "corpus/*.txt", "text_unit": "line"},
        {"name": "sst2", "source": "local", "format": "glue_tsv", "data_files": "glue_data/SST-2", "task": "sst2"}]
    params["ingest"]["validation"] = {"fraction": 0.2, "seed": 0}
    # One language: no cross-lingual report; when-BERT-learns on the user's own task.
    params["crosslingual"]["enabled"] = False
    params["seq2seq_ablation"]["enabled"] = False  # no questions with answers among the user's files
    params["when_bert_learns"].update({"probe_task": "sst2", "finetune_task": "sst2"})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rng = random.Random(0)
    write_user_files(root, rng, 0, 20)
    monkeypatch.chdir(root)
    client = mlflow.MlflowClient(tracking_uri=params["tracking"]["uri"])
    names = ["lmforge-bert-pretrained", "lmforge-gpt-pretrained", "lmforge-bert-sst2"]

    # 1. The pipeline, as the user runs it: the corpus gets a validation split by file; every model
    #    registered, champion set. The console reads: one line per stage, no line twice, no library
    #    chatter; everything else is in the flow run's log file.
    console = run_console("pipeline", cwd=root)
    planned = [line for line in console if " stage(s); full log " in line]
    assert len(planned) == 1, console
    stages = int(planned[0].split(" stage(s)")[0].split()[-1])
    assert stages >= 10 and len([line for line in console if line.startswith("✓ ")]) == stages, console
    summary = console[console.index(next(line for line in console if " stage(s) ran in " in line)) - 1:]
    assert len(console) <= stages + 25 and len(summary) <= 6, console  # a line per stage, a short summary
    lines = [line for line in console if line.strip()]
    assert len(lines) == len(set(lines)), [line for line in lines if lines.count(line) > 1]
    assert not [line for line in console if line.startswith(("INFO", "DEBUG", "Traceback"))], console
    log = root / planned[0].split(" full log ")[1]
    assert "ingest: running (" in log.read_text() and "saving corpus" in log.read_text()
    manifest = json.loads((root / "data/raw/manifest.json").read_text())
    assert manifest["corpus"]["validation_carved"]["by"] == "file" and manifest["corpus"]["rows"]["validation"] > 0
    for name in names:
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    first = {n: versions(client, n)[1] for n in names}

    # 2. The data grows: new books (one of them held out), a book gets longer, more train and dev
    #    reviews. Retrain.
    from lmforge.components.config import HoldoutConfig
    from lmforge.components.data.holdout import held_out

    added = 0
    while not any(held_out(f"corpus/book{i:03d}.txt", HoldoutConfig(fraction=0.2)) for i in range(20, 20 + added)):
        added += 1
    write_user_files(root, rng, 20, max(added, 4))
    with (root / "corpus" / "book000.txt").open("a") as f:
        f.write(book(rng, 4))
    lmforge("flow", "retrain")
    for name in names:
        found = versions(client, name)
        assert sorted(found) == [1, 2], name
        tags = found[2].tags
        assert tags["gate.champion_version"] == "1" and tags["gate.champion_rescored"] == "True", (name, tags)
        assert tags["gate.eval_data"] == tags["eval_data"] != first[name].tags["eval_data"]
        assert tags["gate.decision"] in ("champion", "candidate") and "rescored on today's data" in tags["gate.reason"]
        assert float(tags["gate.champion_value"]) >= 0 and float(tags["metric.value"]) >= 0
        receipt = json.loads((root / "reports/registry" / f"{name.removeprefix('lmforge-')}.json").read_text())
        assert receipt["version"] == 2 and receipt["champion_version"] == 1 and receipt["champion_rescored"]
        assert receipt["champion_value"] == pytest.approx(float(tags["gate.champion_value"]))
        assert receipt["value"] == pytest.approx(float(tags["metric.value"]))
        assert ("champion" in receipt["aliases"]) == receipt["promoted"]
    # The GPT champion was scored again on the new held-out documents: its recorded number is
    # what the scorer gives version 1's weights on today's data, not the number from its own day.
    from lmforge.components.params_file import load_params
    from lmforge.components.registry.packaging import champion_model_dir
    from lmforge.components.registry.register import scorer

    gpt = versions(client, "lmforge-gpt-pretrained")
    client.set_registered_model_alias("lmforge-gpt-pretrained", "first", "1")
    folder = champion_model_dir(client, "lmforge-gpt-pretrained", load_params().tracking, tmp_path / "v1", "first")
    today = scorer(load_params(), "gpt-pretrained").score(folder)
    assert float(gpt[2].tags["gate.champion_value"]) == pytest.approx(today, rel=1e-5)
    assert today != pytest.approx(float(gpt[1].tags["metric.value"]), rel=1e-6)

    # 3. Nothing changed since: retrain reruns nothing and registers nothing; DVC is clean, and the
    #    pipeline says so at once, as `dvc repro` would, without starting a flow.
    lmforge("flow", "retrain")
    assert all(sorted(versions(client, n)) == [1, 2] for n in names)
    assert "Data and pipelines are up to date." in sh("dvc", "status", cwd=root)
    capsys.readouterr()
    lmforge("pipeline")
    assert capsys.readouterr().out == ("pipeline: every stage is up to date (dvc status): nothing to run; "
                                       "--force runs them again\n")


def test_a_pipeline_of_only_gpt_then_only_pretraining(tmp_path, monkeypatch, prefect_api):
    """Any subset of the stages runs and reports what it has: a target, and no fine-tuning runs."""
    from lmforge.flows.pipeline import pipeline

    root = make_project(tmp_path, finetune_runs={}, prompt_runs={})
    monkeypatch.chdir(root)
    only_gpt = pipeline(params_file="params.yaml", targets=["register-pretrained@gpt"])
    assert [s["stage"] for s in only_gpt["stages"]] == ["ingest", "tokenizer", "pretrain-gpt",
                                                        "register-pretrained@gpt"]
    assert [r["model"] for r in only_gpt["registered"]] == ["lmforge-gpt-pretrained"]
    assert not (root / "models" / "bert-pretrained").exists()

    everything = pipeline(params_file="params.yaml")
    ran = {s["stage"] for s in everything["stages"] if s["status"] == "ran"}
    assert ran == {"pretrain-bert", "pretrain-seq2seq", "report", "crosslingual", "when-bert-learns",
                   "seq2seq-ablation", "register-pretrained@bert", "register-pretrained@seq2seq"}
    report = json.loads((root / "reports" / "pretrained_vs_scratch.json").read_text())
    assert report["rows"] == [] and (root / "reports" / "why_bert.json").exists()
    assert "Data and pipelines are up to date." in sh("dvc", "status", cwd=root)
