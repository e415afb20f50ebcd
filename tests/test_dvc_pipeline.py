"""`dvc repro` on a fresh copy of the repository: stages run, outputs load, a second repro does nothing."""

import json
import os

import pytest
from datasets import load_from_disk
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

from tests.conftest import make_project, sh

pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path):
    # One fine-tuning run: the flows (test_flows.py) run the same commands of dvc.yaml for GPT, QA and prompting.
    return make_project(tmp_path, finetune_runs={"bert-rte": {"task": "rte", "model": "bert", "init": "pretrained"}},
                        prompt_runs={})


def test_repro_builds_everything_then_is_a_no_op_and_pushes(project):
    sh("dvc", "repro", cwd=project)
    raw = project / "data" / "raw"
    for name in ["corpus", "cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli",
                 "squad", "squad_v2", "conll2003"]:
        assert len(load_from_disk(str(raw / name))["train"]) > 0
    assert AutoTokenizer.from_pretrained(project / "data" / "tokenizers" / "bert").mask_token == "[MASK]"
    assert AutoTokenizer.from_pretrained(project / "data" / "tokenizers" / "gpt").eos_token == "<|endoftext|>"
    assert (project / "reports" / "metrics" / "tokenizer.json").exists()
    assert "dvc.lock" in os.listdir(project)
    assert AutoModelForMaskedLM.from_pretrained(project / "models" / "bert-pretrained").config.hidden_size == 64
    assert AutoModelForCausalLM.from_pretrained(project / "models" / "gpt-pretrained").config.n_layer == 2
    assert AutoModelForSequenceClassification.from_pretrained(project / "models" / "bert-rte").num_labels == 2
    assert "validation" in json.loads((project / "reports" / "metrics" / "bert-rte.json").read_text())
    assert json.loads(sh("dvc", "metrics", "show", "--json", cwd=project))  # DVC reads every metrics file
    # Registration is a stage of dvc.yaml too: each model's receipt names its version and the gate's decision.
    for name in ("bert-rte", "bert-pretrained", "gpt-pretrained"):
        receipt = json.loads((project / "reports" / "registry" / f"{name}.json").read_text())
        assert receipt["model"] == f"lmforge-{name}" and receipt["version"] == 1 and receipt["promoted"]

    second = sh("dvc", "repro", cwd=project)
    assert "Running stage" not in second
    assert "up to date" in sh("dvc", "status", cwd=project)

    sh("dvc", "push", cwd=project)
    assert any((project / ".dvc-storage").rglob("*"))
