"""`dvc repro` on a fresh copy of the repository: stages run, outputs load, a second repro does nothing."""

import json
import os

import pytest
from datasets import load_from_disk
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

from tests.conftest import make_project, sh

pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path):
    # One fine-tuning run: the flows (test_flows.py) run the same commands of dvc.yaml for GPT, QA and prompting.
    return make_project(tmp_path, finetune_runs={"bert-rte": {"task": "rte", "model": "bert", "init": "pretrained"}},
                        prompt_runs={})


def test_repro_builds_a_target_with_what_it_needs_then_is_a_no_op_and_pushes(project):
    # A registered fine-tuned model and everything it needs: five of dvc.yaml's stages, each run by DVC
    # as `lmforge stage ...` (the flows run the same commands in-process: test_flows.py runs them all).
    target = "register@bert-rte"
    out = sh("dvc", "repro", target, cwd=project)
    ran = [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]
    assert ran == ["ingest", "tokenizer", "pretrain-bert", "finetune@bert-rte", target]
    raw = project / "data" / "raw"
    for name in ["corpus", "cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli",
                 "squad", "squad_v2", "conll2003"]:
        assert len(load_from_disk(str(raw / name))["train"]) > 0
    assert AutoTokenizer.from_pretrained(project / "data" / "tokenizers" / "bert").mask_token == "[MASK]"
    assert AutoTokenizer.from_pretrained(project / "data" / "tokenizers" / "gpt").eos_token == "<|endoftext|>"
    assert (project / "reports" / "metrics" / "tokenizer.json").exists()
    assert "dvc.lock" in os.listdir(project)
    assert AutoModelForMaskedLM.from_pretrained(project / "models" / "bert-pretrained").config.hidden_size == 64
    assert AutoModelForSequenceClassification.from_pretrained(project / "models" / "bert-rte").num_labels == 2
    assert "validation" in json.loads((project / "reports" / "metrics" / "bert-rte.json").read_text())
    assert json.loads(sh("dvc", "metrics", "show", "--json", cwd=project))  # DVC reads every metrics file
    # Registration is a stage of dvc.yaml too: the receipt names the version and the gate's decision.
    receipt = json.loads((project / "reports" / "registry" / "bert-rte.json").read_text())
    assert receipt["model"] == "lmforge-bert-rte" and receipt["version"] == 1 and receipt["promoted"]

    second = sh("dvc", "repro", target, cwd=project)
    assert "Running stage" not in second
    assert "up to date" in sh("dvc", "status", target, "--with-deps", cwd=project)

    sh("dvc", "push", target, "--with-deps", cwd=project)
    assert any((project / ".dvc-storage").rglob("*"))

