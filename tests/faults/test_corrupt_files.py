"""Corrupt or truncated files: one error line naming the file and what to do, not a crash deep in torch

A model's `model.safetensors` (a fine-tuning init, a model the evaluate stage scores) and a
pretraining run's `last.ckpt` are cut in half (a copy that stopped, a full disk) or overwritten
with other bytes. lmforge checks them before torch or safetensors read them: exit code 2, one line
`lmforge: error: <file>: ...` saying what to do, and nothing written.
"""

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig, BertForSequenceClassification

from lmforge.components.cli import main
from tests.conftest import make_project

DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "garbage": lambda data: random.Random(0).randbytes(len(data)),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A project with demo data, tokenizers, a 4-step BERT pretraining run (its last.ckpt and
    models/bert-pretrained) and models/bert-rte, a classifier built on it, as fine-tuning leaves one."""
    root = make_project(tmp_path_factory.mktemp("corrupt"), finetune_runs={}, prompt_runs={})
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["pretrain"]["bert"]["train"].update(max_steps=4, checkpoint_every_n_steps=2, val_every_n_steps=2)
    params["tracking"]["enabled"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for stage in ("ingest", "tokenizer", "pretrain-bert"):
            assert main(["stage", stage]) == 0
    config = AutoConfig.from_pretrained(root / "models/bert-pretrained", finetuning_task="rte",
                                        id2label={0: "entailment", 1: "not_entailment"},
                                        label2id={"entailment": 0, "not_entailment": 1})
    classifier = BertForSequenceClassification.from_pretrained(root / "models/bert-pretrained", config=config)
    classifier.save_pretrained(root / "models/bert-rte")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (root / "models/bert-pretrained" / name).exists():
            (root / "models/bert-rte" / name).write_bytes((root / "models/bert-pretrained" / name).read_bytes())
    return root


@pytest.fixture
def project(base, tmp_path, monkeypatch) -> Path:
    import shutil

    root = tmp_path / "project"
    shutil.copytree(base, root, symlinks=True)
    monkeypatch.chdir(root)
    return root


def damage(path: Path, how: str) -> None:
    path.write_bytes(DAMAGE[how](path.read_bytes()))


def flip_bits_in_largest_member(path: Path) -> None:
    """Invert 64 bytes in the middle of the largest entry of the zip archive torch.save wrote."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[member.header_offset + 26: member.header_offset + 30])
    middle = member.header_offset + 30 + name_length + extra_length + member.file_size // 2
    data[middle: middle + 64] = bytes(b ^ 0xFF for b in data[middle: middle + 64])
    path.write_bytes(bytes(data))


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if ".git" not in p.parts}


def fails_with_one_line(argv: list[str], capsys, record_property, *expected: str) -> str:
    """Run the CLI in-process: exit code 2, one `lmforge: error:` line holding `expected`, no traceback.
    The line goes to docs/reliability.md."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("lmforge: error: ")]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err
    assert "Traceback" not in err
    record_property("message", lines[0].replace(f"{Path.cwd()}/", ""))
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    return lines[0]


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_init_weights(project, capsys, record_property, how):
    """A truncated or garbage model.safetensors in the fine-tuning init folder: one error naming the file, nothing trained or written"""
    damage(project / "models/bert-pretrained/model.safetensors", how)
    before = tree(project)
    line = fails_with_one_line(["stage", "finetune", "-S", "finetune.task=rte"], capsys, record_property,
                               "models/bert-pretrained/model.safetensors: not a whole safetensors file",
                               "truncated or corrupt", "delete models/bert-pretrained and run the stage that writes it")
    assert ("describes" if how == "truncated" else "header claims") in line
    assert tree(project) == before


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_model_to_evaluate(project, capsys, record_property, how):
    """A truncated or garbage model.safetensors in the folder the evaluate stage scores: one error naming the file, no report"""
    damage(project / "models/bert-rte/model.safetensors", how)
    fails_with_one_line(["stage", "evaluate", "-S", "evaluate.model=bert-rte"], capsys, record_property,
                        "models/bert-rte/model.safetensors: not a whole safetensors file", "delete models/bert-rte")
    assert not (project / "reports/eval/bert-rte").exists()


@pytest.mark.parametrize("how", [*DAMAGE, "bytes-changed"])
def test_damaged_resume_checkpoint(project, capsys, record_property, how):
    """A truncated, garbage or bit-flipped last.ckpt when pretraining resumes: one error naming it and saying to delete it, the previous model kept"""
    ckpt = project / "runs/pretrain-bert/checkpoints/last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 4  # what the run would resume from
    if how == "bytes-changed":  # bits flipped in the largest tensor, the file's size and structure intact
        flip_bits_in_largest_member(ckpt)
    else:
        damage(ckpt, how)
    model = (project / "models/bert-pretrained/model.safetensors").read_bytes()
    reason = {"truncated": "cut short", "garbage": "do not begin as a PyTorch checkpoint",
              "bytes-changed": "does not match its CRC-32"}[how]
    fails_with_one_line(["stage", "pretrain-bert"], capsys, record_property, "runs/pretrain-bert/checkpoints/last.ckpt: cannot resume",
                        "truncated or corrupt", reason, "delete it to start the run over from step 0")
    assert (project / "models/bert-pretrained/model.safetensors").read_bytes() == model


def test_deleting_the_damaged_checkpoint_starts_over(project, capsys, record_property):
    """The advice works: with the damaged last.ckpt deleted, pretraining starts over from step 0 and completes"""
    ckpt = project / "runs/pretrain-bert/checkpoints/last.ckpt"
    damage(ckpt, "truncated")
    fails_with_one_line(["stage", "pretrain-bert"], capsys, record_property, "delete it to start the run over")
    ckpt.unlink()
    assert main(["stage", "pretrain-bert"]) == 0
    assert torch.load(ckpt, weights_only=True)["global_step"] == 4


def test_real_executable(project):
    """The `lmforge` executable, given a garbage model.safetensors to evaluate: exit code 2, one stderr line, no traceback"""
    weights = project / "models/bert-rte/model.safetensors"
    damage(weights, "garbage")
    exe = Path(sys.executable).parent / "lmforge"
    result = subprocess.run([str(exe), "stage", "evaluate", "-S", "evaluate.model=bert-rte"], cwd=project,
                            capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    claimed = int.from_bytes(weights.read_bytes()[:8], "little")  # garbage read as the header's length
    assert result.stderr.splitlines() == [
        f"lmforge: error: {weights.relative_to(project)}: not a whole safetensors file, it is truncated or corrupt "
        f"(its header claims {claimed} bytes but the file has {weights.stat().st_size}); delete models/bert-rte "
        "and run the stage that writes it again (or copy it again from where it came)"]
