"""`dvc repro` on a fresh copy of the repository: stages run, outputs load, a second repro does nothing."""

import json
import os
from pathlib import Path

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


def _lmforge_imports(tree, seen: set[str]) -> set[str]:
    """Every lmforge module the code in `tree` imports, at its top or inside functions, transitively."""
    import ast
    import importlib.util

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]  # a module or a name in one
        else:
            continue
        for name in names:
            if not name.startswith("lmforge") or name in seen:
                continue
            try:
                spec = importlib.util.find_spec(name)
            except ModuleNotFoundError:  # a function or class imported from a module
                spec = None
            if spec is not None and spec.origin and spec.origin.endswith(".py"):
                seen.add(name)
                _lmforge_imports(ast.parse(Path(spec.origin).read_text()), seen)
    return seen


def test_every_stage_that_imports_the_training_layer_depends_on_it():
    """A change to training/ (the Lightning module under every run: optimizer, dropout, the sparse
    last layer, the run records) must make each stage whose code imports it stale in `dvc status`,
    not only changes to its own package (a bug: pretraining listed lmforge/components/pretraining alone)."""
    import ast
    import inspect
    import textwrap

    import yaml

    from lmforge.components import stages
    from tests.conftest import REPO

    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    trains = []
    for name, stage in declared.items():
        stage = stage.get("do", stage)
        function = getattr(stages, stage["cmd"].split()[2].replace("-", "_"))
        seen = _lmforge_imports(ast.parse(textwrap.dedent(inspect.getsource(function))), set())
        if "lmforge.components.training.module" in seen:
            trains.append(name)
            assert "lmforge/components/training" in stage["deps"], f"dvc.yaml stage {name}: {stage['deps']}"
    assert {"pretrain-bert", "pretrain-gpt", "finetune", "crosslingual", "when-bert-learns"} <= set(trains), trains
