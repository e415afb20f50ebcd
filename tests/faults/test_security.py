"""Security defaults: servers on 127.0.0.1, weights only as safetensors, no remote code, safe torch.load."""

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

SOURCES = sorted([*(REPO / "lmforge").rglob("*.py"),
                  *(REPO / "benchmarks").rglob("*.py")])


def calls(name: str):
    """(file, line, call node) of every call to a function or method called `name` in lmforge's code."""
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if called == name:
                    yield path.relative_to(REPO), node.lineno, node


def keyword(node: ast.Call, name: str):
    return next((k.value for k in node.keywords if k.arg == name), None)


@pytest.mark.parametrize("url", ["http://0.0.0.0:4200/api", "http://192.168.1.20:4200/api", "http://example.org/api"])
def test_prefect_server_on_another_interface_is_refused(url):
    """lmforge asked to start a Prefect server on another interface: refused, 127.0.0.1 only."""
    from lmforge.components.errors import LmforgeError
    from lmforge.flows.serve import start_server

    with pytest.raises(LmforgeError, match="lmforge starts servers on 127.0.0.1 only"):
        start_server(url)


def test_prefect_server_is_started_on_loopback(monkeypatch):
    """lmforge starts a Prefect server: its command binds --host 127.0.0.1."""
    import subprocess

    from lmforge.flows import serve

    started = []

    class Started:
        def __init__(self, command, **kwargs):
            started.append(command)

        def poll(self):
            return None

    monkeypatch.setattr(subprocess, "Popen", Started)
    monkeypatch.setattr(serve, "server_is_up", lambda url: True)
    serve.start_server("http://localhost:4321/api")
    command = started[0]
    assert command[command.index("--host") + 1] == "127.0.0.1" and command[command.index("--port") + 1] == "4321"


def test_torch_load_is_always_weights_only():
    """Every torch.load in lmforge passes weights_only=True: a checkpoint cannot run code when loaded."""
    found = list(calls("load"))
    torch_loads = [(path, line, node) for path, line, node in found
                   if isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", "") == "torch"]
    assert torch_loads, "no torch.load found: the scan is broken"
    unsafe = [f"{path}:{line}" for path, line, node in torch_loads
              if not (isinstance(keyword(node, "weights_only"), ast.Constant) and keyword(node, "weights_only").value is True)]
    assert not unsafe


def test_remote_code_is_never_trusted():
    """No call in lmforge sets trust_remote_code: a Hub model cannot run its own code here."""
    offending = [f"{path}:{node.lineno}" for path in SOURCES for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.keyword) and node.arg == "trust_remote_code"
                 and not (isinstance(node.value, ast.Constant) and node.value.value is False)]
    assert not offending


def test_weights_are_saved_only_as_safetensors():
    """No save_pretrained in lmforge turns safetensors off; torch.save writes only Lightning's resume checkpoints."""
    pickled = [f"{path}:{line}" for path, line, node in calls("save_pretrained")
               if isinstance(keyword(node, "safe_serialization"), ast.Constant)
               and keyword(node, "safe_serialization").value is False]
    assert not pickled
    # last.ckpt holds optimizer and loop state as well as weights, which safetensors cannot: it is
    # written by a CheckpointIO's save_checkpoint and read back with weights_only=True (above).
    torch_saves = []
    for path in SOURCES:
        for function in ast.walk(ast.parse(path.read_text())):
            if isinstance(function, ast.FunctionDef):
                torch_saves += [(str(path.relative_to(REPO)), function.name) for node in ast.walk(function)
                                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                                and node.func.attr == "save" and getattr(node.func.value, "id", "") == "torch"]
    assert {name for _, name in torch_saves} <= {"save_checkpoint"}, torch_saves


def test_exported_model_folder_holds_safetensors_only(tmp_path, tokenizers_dir):
    """A model lmforge exports: model.safetensors, no pickled pytorch_model.bin."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from lmforge.components.training.checkpoints import export

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizers_dir / "bert"))
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=128))
    out = export(model, tokenizer, tmp_path / "bert")
    files = {p.name for p in Path(out).iterdir()}
    assert "model.safetensors" in files and not {f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))}
