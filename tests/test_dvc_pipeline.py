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
    # One BERT and one GPT fine-tuning run; QA and the other task kinds run through the flows in test_flows.py.
    return make_project(tmp_path, finetune_runs={"bert-rte": {"task": "rte", "model": "bert", "init": "pretrained"},
                                                 "gpt-sst2": {"task": "sst2", "model": "gpt", "init": "pretrained"}})


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
    for name in ("bert-rte", "gpt-sst2"):
        assert AutoModelForSequenceClassification.from_pretrained(project / "models" / name).num_labels == 2
        assert "validation" in json.loads((project / "reports" / "metrics" / f"{name}.json").read_text())
    assert json.loads(sh("dvc", "metrics", "show", "--json", cwd=project))  # DVC reads every metrics file

    second = sh("dvc", "repro", cwd=project)
    assert "Running stage" not in second
    assert "up to date" in sh("dvc", "status", cwd=project)

    sh("dvc", "push", cwd=project)
    assert any((project / ".dvc-storage").rglob("*"))
