"""The gate in both directions of "better", the held-out scorers of pretrained models, and the
pipeline's one definition (dvc.yaml) as the flows read it."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lmforge.components.config import Params, RegistryConfig, TrackingConfig
from lmforge.components.params_file import load_params
from lmforge.components.errors import LmforgeError
from lmforge.components.registry import gate
from lmforge.components.registry.gate import Candidate
from tests.conftest import CORPUS, REPO


def candidate(metric: str, value: float, higher: bool, data: str = "today") -> Candidate:
    return Candidate("m", Path("models/m"), metric, value, higher, data, "x", {})


def champion(metric: str, value: float, data: str) -> SimpleNamespace:
    return SimpleNamespace(version="1", tags={"metric.name": metric, "metric.value": str(value), "eval_data": data})


@pytest.mark.parametrize(("value", "min_improvement", "promoted"), [
    (2.0, 0.3, True),    # 0.5 lower bits per byte: better by 0.5 >= 0.3
    (2.0, 0.6, False),   # better by 0.5, but not by 0.6
    (2.6, 0.0, False),   # higher bits per byte is worse
    (2.5, 0.0, True),    # equal passes a min_improvement of 0
])
def test_lower_is_better_metrics_pass_the_gate_when_lower(value, min_improvement, promoted):
    verdict = gate._gate(None, "lmforge-gpt-pretrained", candidate("bits_per_byte", value, higher=False),
                         champion("bits_per_byte", 2.5, "today"), RegistryConfig(min_improvement=min_improvement),
                         TrackingConfig(), rescore=None)
    assert verdict.promoted is promoted and verdict.champion_value == 2.5 and not verdict.champion_rescored


def test_higher_is_better_metrics_pass_the_gate_when_higher():
    cfg = RegistryConfig(min_improvement=0.05)
    better = gate._gate(None, "n", candidate("accuracy", 0.9, True), champion("accuracy", 0.8, "today"), cfg,
                        TrackingConfig(), None)
    worse = gate._gate(None, "n", candidate("accuracy", 0.82, True), champion("accuracy", 0.8, "today"), cfg,
                       TrackingConfig(), None)
    assert better.promoted and "better by 0.1000, >= min_improvement 0.05" in better.reason
    assert not worse.promoted and "better by 0.0200, < min_improvement 0.05" in worse.reason


def test_a_champion_scored_on_other_data_or_metric_is_rescored(monkeypatch, tmp_path):
    monkeypatch.setattr(gate, "champion_model_dir", lambda client, name, tracking, dest: tmp_path)
    scored = []

    def rescore(folder):
        scored.append(folder)
        return 0.7

    for old in (champion("accuracy", 0.95, "yesterday"), champion("f1", 0.95, "today")):
        verdict = gate._gate(None, "n", candidate("accuracy", 0.75, True), old, RegistryConfig(), TrackingConfig(),
                             rescore)
        assert verdict.champion_rescored and verdict.champion_value == 0.7 and verdict.promoted
        assert "rescored on today's data" in verdict.reason
    assert scored == [tmp_path, tmp_path]
    with pytest.raises(LmforgeError, match="scored on other evaluation data and no scorer was given"):
        gate._gate(None, "n", candidate("accuracy", 0.75, True), champion("accuracy", 0.9, "yesterday"),
                   RegistryConfig(), TrackingConfig(), None)


# ------------------------------------------------------------------ held-out scorers


@pytest.fixture(scope="module")
def bert_folders(tokenizers_dir, tmp_path_factory):
    """Two tiny BERTs with different vocabularies (300 and 200 WordPiece tokens) on the same corpus."""
    from datasets import Dataset
    from transformers import BertConfig, BertForMaskedLM

    from lmforge.components.config import BertTokenizerConfig
    from lmforge.components.tokenizer import train_bert_tokenizer

    root = tmp_path_factory.mktemp("heldout")
    tokenizers = {"a": train_bert_tokenizer(Dataset.from_dict({"text": CORPUS}), BertTokenizerConfig(vocab_size=300, min_frequency=1)),
                  "b": train_bert_tokenizer(Dataset.from_dict({"text": CORPUS}), BertTokenizerConfig(vocab_size=200, min_frequency=1))}
    assert len(tokenizers["a"]) != len(tokenizers["b"])
    for name, tokenizer in tokenizers.items():
        torch.manual_seed(0)
        BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64)).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


def test_masked_words_are_the_same_whatever_the_tokenizer(bert_folders):
    from lmforge.components.evaluation.heldout import masked_word_accuracy

    texts = CORPUS[:5]
    a = masked_word_accuracy(bert_folders / "a", texts, 64, probability=0.3, seed=1)
    b = masked_word_accuracy(bert_folders / "b", texts, 64, probability=0.3, seed=1)
    assert a["masked_words"] == b["masked_words"] > 10  # the words chosen depend on the text and the seed only
    assert masked_word_accuracy(bert_folders / "a", texts, 64, probability=0.3, seed=1) == a  # deterministic
    assert masked_word_accuracy(bert_folders / "a", texts, 64, probability=0.3, seed=2)["masked_words"] != a["masked_words"]
    assert 0 <= a["masked_word_accuracy"] <= 1


def test_bits_per_byte_of_a_uniform_model_is_log2_vocab_per_byte(tokenizers_dir, tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from lmforge.components.evaluation.heldout import bits_per_byte

    tokenizer = AutoTokenizer.from_pretrained(tokenizers_dir / "gpt")
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=64))
    with torch.no_grad():
        model.transformer.wte.weight.zero_()  # tied to the LM head: every logit 0, a uniform prediction
    model.save_pretrained(tmp_path / "gpt")
    tokenizer.save_pretrained(tmp_path / "gpt")
    texts = CORPUS[:5]  # English and Chinese: bytes, not characters
    result = bits_per_byte(tmp_path / "gpt", texts, block_size=16)  # documents longer than a window
    targets = sum(len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])  # + end-of-text
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert result["bytes"] == n_bytes
    assert result["bits_per_byte"] == pytest.approx(targets * math.log2(len(tokenizer)) / n_bytes, rel=1e-4)
    assert result["token_perplexity"] == pytest.approx(len(tokenizer), rel=1e-3)


# ------------------------------------------------------------------ one definition of the pipeline


def test_every_dvc_stage_is_an_lmforge_stage_the_flows_can_plan():
    from lmforge.components.stages import STAGES, plan
    from lmforge.components.versioning import DvcProject

    params = load_params(REPO / "params.yaml")
    graph = DvcProject(REPO).stages()
    planned = [plan(s.name, s.cmd, params) for s in graph]
    assert {p.function for p in planned} == set(STAGES.values())  # every stage is in dvc.yaml, and only those
    named = {s.name: p for s, p in zip(graph, planned)}
    run = named["finetune@bert-scratch-qnli-seed1"].params.finetune.selected()
    assert (run.task, run.init, run.seed, run.name) == ("qnli", "scratch", 1, "bert-scratch-qnli-seed1")
    assert named["register@bert-qnli"].params.registry.model == "bert-qnli"
    assert named["register-pretrained@gpt"].params.registry.model == "gpt-pretrained"
    assert named["evaluate@gpt-sst2"].params.evaluate.model == "gpt-sst2"
    order = [s.name for s in graph]
    for stage in graph:  # each after what it depends on
        assert all(order.index(u) < order.index(stage.name) for u in stage.upstream)
    upstream = next(s.upstream for s in graph if s.name == "register@bert-qnli")
    assert {"ingest", "tokenizer", "pretrain-bert", "finetune@bert-qnli"} <= upstream
    assert "pretrain-gpt" not in upstream and "register@bert-sst2" not in upstream


def test_a_command_that_is_not_an_lmforge_stage_is_refused():
    from lmforge.components.stages import plan

    with pytest.raises(LmforgeError, match=r"dvc.yaml: stage train: cmd 'python train.py' is not `lmforge stage NAME"):
        plan("train", "python train.py", Params())
    with pytest.raises(LmforgeError, match=r"stage x: cmd 'lmforge stage nosuch' is not"):
        plan("x", "lmforge stage nosuch", Params())
    with pytest.raises(LmforgeError, match=r"dvc.yaml: stage f: finetune.task: expected one of"):
        plan("f", "lmforge stage finetune -S finetune.task=sst3", Params())
