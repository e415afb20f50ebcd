"""`dvc repro` on a fresh copy of the repository: stages run, outputs load, a second repro does nothing."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import load_from_disk
from transformers import AutoTokenizer

from tests.conftest import REPO

pytestmark = pytest.mark.slow

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

    second = sh("dvc", "repro", cwd=project)
    assert "Running stage" not in second
    assert "up to date" in sh("dvc", "status", cwd=project)

    sh("dvc", "push", cwd=project)
    assert any((project / ".dvc-storage").rglob("*"))
