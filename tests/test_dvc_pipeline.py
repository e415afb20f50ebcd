"""`dvc repro` on a fresh copy of the repository: stages run, outputs load, a second repro does nothing."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import load_from_disk
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

from tests.conftest import REPO

pytestmark = pytest.mark.slow

TINY = {"hidden_size": 64, "num_layers": 2, "num_heads": 2}
FAST = {"max_steps": 20, "batch_size": 8, "val_every_n_steps": 10, "checkpoint_every_n_steps": 10, "warmup_steps": 2}
SMALL_DEMO = {
    "entities": 40, "corpus_documents": 120, "glue_train": 40, "glue_eval": 20,
    "qa_train": 40, "qa_eval": 20, "ner_train": 40, "ner_eval": 20,
}


def sh(*cmd, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    for name in ["dvc.yaml", ".dvcignore", ".gitignore"]:
        shutil.copy(REPO / name, root / name)
    for name in [".dvc", "components"]:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("tmp", "cache", "__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ingest"]["demo"].update(SMALL_DEMO)
    params["tokenizer"]["bert"]["vocab_size"] = 500
    params["tokenizer"]["gpt"]["vocab_size"] = 500
    for model in ("bert", "gpt"):
        params["pretrain"][model]["model"] = {**params["pretrain"][model]["model"], **TINY}
        params["pretrain"][model]["train"] = {**params["pretrain"][model]["train"], **FAST}
    params["finetune"]["runs"] = {"bert-rte": {"task": "rte", "model": "bert", "init": "pretrained"},
                                  "gpt-sst2": {"task": "sst2", "model": "gpt", "init": "pretrained"}}
    params["finetune"]["train"] = {**params["finetune"]["train"], "max_epochs": 1}
    params["tracking"]["uri"] = f"sqlite:///{root}/mlflow.db"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=root)
    return root


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
