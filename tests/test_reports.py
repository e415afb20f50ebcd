"""The reports: pretrained vs scratch from hand-written finetune reports, and "why BERT works"."""

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from lmforge.components.config import EvaluateConfig, ModelConfig
from lmforge.components.errors import LmforgeError
from lmforge.components.evaluation.pretrained_vs_scratch import pretrained_vs_scratch_report
from lmforge.components.evaluation.why_bert import why_bert_report
from lmforge.components.evaluation.why_bert import sense_groups, sense_means
from lmforge.components.pretraining.models import build_bert


def finetune_report(task, init, splits, model="bert", main="accuracy"):
    score = float(np.mean([np.mean(list(m.values())) for m in splits.values()]))
    return {"task": task, "model": model, "init": init, "main_metric": main, **splits, "score": score, "steps": 6}


@pytest.fixture
def metrics_dir(tmp_path):
    folder = tmp_path / "metrics"
    folder.mkdir()
    files = {
        "bert-sst2": finetune_report("sst2", "pretrained", {"validation": {"accuracy": 0.8}}),
        "bert-scratch-sst2": finetune_report("sst2", "scratch", {"validation": {"accuracy": 0.5}}),
        "bert-mrpc": finetune_report("mrpc", "pretrained", {"validation": {"f1": 0.8, "accuracy": 0.6}}, main="f1"),
        "bert-scratch-mrpc": finetune_report("mrpc", "scratch", {"validation": {"f1": 0.6, "accuracy": 0.4}},
                                             main="f1"),
        "bert-mnli": finetune_report("mnli", "pretrained", {"validation_matched": {"accuracy": 0.7},
                                                            "validation_mismatched": {"accuracy": 0.5}}),
        "bert-scratch-mnli": finetune_report("mnli", "scratch", {"validation_matched": {"accuracy": 0.4},
                                                                 "validation_mismatched": {"accuracy": 0.3}}),
        "bert-cola": finetune_report("cola", "pretrained", {"validation": {"matthews_correlation": 0.3}},
                                     main="matthews_correlation"),
        "bert-scratch-qnli": finetune_report("qnli", "scratch", {"validation": {"accuracy": 0.55}}),
        "gpt-sst2": finetune_report("sst2", "pretrained", {"validation": {"accuracy": 0.9}}, model="gpt"),
        # GPT-1's auxiliary LM loss: beside the plain head, not a third side of the pair
        "gpt-sst2-auxlm0p5": {**finetune_report("sst2", "pretrained", {"validation": {"accuracy": 0.95}}, model="gpt"),
                              "aux_lm_weight": 0.5},
        # not the finetune stage's pretrained/scratch runs: left out
        "gpt-gpt-sst2-sst2": finetune_report("sst2", "models/gpt-sst2", {"validation": {"accuracy": 0.1}}, model="gpt"),
        "gpt-0shot-sst2": {"task": "sst2", "model": "gpt", "init": "pretrained", "shots": 0, "score": 0.1,
                           "main_metric": "accuracy", "validation": {"accuracy": 0.1}},
        "pretrain_bert": {"loss": 2.0, "perplexity": 7.4},
        "tokenizer": {"bert": {"vocab_size": 500}},
    }
    for name, report in files.items():
        (folder / f"{name}.json").write_text(json.dumps(report))
    return folder


def test_pretrained_and_scratch_runs_are_paired_per_model_and_task(metrics_dir, tmp_path):
    path = pretrained_vs_scratch_report(metrics_dir, tmp_path / "out")
    result = json.loads(path.read_text())
    rows = {(r["model"], r["task"]): r for r in result["rows"]}
    assert list(rows) == [("bert", "cola"), ("bert", "mnli"), ("bert", "mrpc"), ("bert", "qnli"), ("bert", "sst2"),
                          ("gpt", "sst2")]
    assert rows["bert", "sst2"]["pretrained"] == 0.8 and rows["bert", "sst2"]["scratch"] == 0.5
    assert rows["bert", "sst2"]["difference"] == pytest.approx(0.3)
    assert rows["bert", "mrpc"]["pretrained"] == pytest.approx(0.7) and rows["bert", "mrpc"]["main_metric"] == "f1"
    assert rows["bert", "cola"]["scratch"] is None and rows["bert", "cola"]["difference"] is None
    assert rows["bert", "qnli"]["pretrained"] is None and rows["bert", "qnli"]["scratch"] == 0.55
    assert rows["gpt", "sst2"]["pretrained"] == 0.9  # not the 0-shot prompt or the local-init run
    assert "gpt-0shot-sst2.json" not in result["reports"] and "pretrain_bert.json" not in result["reports"]

    # GLUE score over the tasks both sides have (sst2, mrpc, mnli): each task's mean metric, then the mean.
    glue = result["glue_score"]["bert"]
    assert glue["tasks"] == ["mnli", "mrpc", "sst2"]
    assert glue["pretrained"] == pytest.approx(((0.7 + 0.5) / 2 + (0.8 + 0.6) / 2 + 0.8) / 3)
    assert glue["scratch"] == pytest.approx(((0.4 + 0.3) / 2 + (0.6 + 0.4) / 2 + 0.5) / 3)
    assert result["glue_score"]["gpt"] == {"tasks": [], "pretrained": None, "scratch": None}

    table = (tmp_path / "out" / "pretrained_vs_scratch.md").read_text()
    assert "| bert | sst2 | accuracy | 0.8000 | 0.5000 | +0.3000 | one seed: noise unknown |" in table
    assert "| bert | cola | matthews_correlation | 0.3000 |  |  |  |" in table
    assert "| bert | qnli | accuracy |  | 0.5500 |  |  |" in table
    assert "**GLUE score** (mnli, mrpc, sst2)" in table
    assert result["auxiliary_lm"] == [{"model": "gpt", "task": "sst2", "init": "pretrained", "seed": None,
                                       "main_metric": "accuracy", "aux_lm_weight": 0.5, "plain_head": 0.9,
                                       "with_aux_lm": 0.95, "difference": pytest.approx(0.05)}]
    assert "| gpt | sst2 | accuracy | 0.9000 | 0.9500 | 0.5 | +0.0500 |" in table
    assert (tmp_path / "out" / "pretrained_vs_scratch.png").stat().st_size > 5000


def test_seeds_of_a_comparison_give_its_spread_and_say_when_a_difference_is_noise(tmp_path):
    folder = tmp_path / "metrics"
    folder.mkdir()
    scores = {  # (task, init, seed) -> accuracy; seed None: the run without a seed of its own
        ("qnli", "pretrained", None): 0.90, ("qnli", "pretrained", 1): 0.96,
        ("qnli", "scratch", None): 0.76, ("qnli", "scratch", 1): 0.74,
        ("rte", "pretrained", None): 0.60, ("rte", "pretrained", 1): 0.52,
        ("rte", "scratch", None): 0.55, ("rte", "scratch", 1): 0.58,
    }
    for (task, init, seed), accuracy in scores.items():
        report = finetune_report(task, init, {"validation": {"accuracy": accuracy}})
        if seed is not None:
            report["seed"] = seed
        name = f"bert{'' if init == 'pretrained' else '-scratch'}-{task}{'' if seed is None else f'-seed{seed}'}"
        (folder / f"{name}.json").write_text(json.dumps(report))
    # A seed's report under another run's name is not the finetune stage's: left out.
    (folder / "bert-rte-seed7.json").write_text(json.dumps({**finetune_report("rte", "pretrained", {
        "validation": {"accuracy": 0.0}}), "seed": 8}))

    result = json.loads(pretrained_vs_scratch_report(folder, tmp_path / "out").read_text())
    rows = {r["task"]: r for r in result["rows"]}
    qnli, rte = rows["qnli"], rows["rte"]
    assert qnli["pretrained"] == pytest.approx(0.93) and qnli["scratch"] == pytest.approx(0.75)
    assert qnli["seeds"] == {"pretrained": 2, "scratch": 2}
    assert qnli["range"] == {"pretrained": [0.90, 0.96], "scratch": [0.74, 0.76]}
    assert qnli["verdict"] == "pretrained better"  # the ranges do not overlap
    assert rte["difference"] == pytest.approx(-0.005) and rte["verdict"] == "within the noise"
    assert "bert-rte-seed7.json" not in result["reports"] and len(result["reports"]) == 8
    # GLUE score: each task's metrics averaged over its seeds first.
    assert result["glue_score"]["bert"]["pretrained"] == pytest.approx((0.93 + 0.56) / 2)
    table = (tmp_path / "out" / "pretrained_vs_scratch.md").read_text()
    assert "| bert | qnli | accuracy | 0.9300 (0.900–0.960, 2 seeds) | 0.7500 (0.740–0.760, 2 seeds) | +0.1800 " \
           "| pretrained better |" in table
    assert "| within the noise |" in table


def test_no_finetune_reports_is_an_empty_report_and_a_broken_one_a_clear_error(tmp_path):
    # A pipeline without fine-tuning runs reports what there is (regression: the stage failed).
    (tmp_path / "pretrain_bert.json").write_text('{"loss": 2.0}')
    result = json.loads(pretrained_vs_scratch_report(tmp_path, tmp_path / "out").read_text())
    assert result == {"rows": [], "glue_score": {}, "auxiliary_lm": [], "reports": []}
    assert "No fine-tuning reports" in (tmp_path / "out" / "pretrained_vs_scratch.md").read_text()
    assert (tmp_path / "out" / "pretrained_vs_scratch.png").stat().st_size > 0
    pretrained_vs_scratch_report(tmp_path / "no-such-folder", tmp_path / "out")
    (tmp_path / "bert-sst2.json").write_text("{not json")
    with pytest.raises(LmforgeError, match=r"cannot read metrics file .*bert-sst2.json"):
        pretrained_vs_scratch_report(tmp_path, tmp_path / "out")


@pytest.fixture
def pretrained_dir(tokenizers_dir, tmp_path):
    """A tiny BertForPreTraining with random weights, saved as the pretraining stage saves one."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizers_dir / "bert")
    model = build_bert(ModelConfig(hidden_size=64, num_layers=2, num_heads=2), len(tokenizer),
                       tokenizer.pad_token_id, "sop")
    model.save_pretrained(tmp_path / "bert-pretrained")
    tokenizer.save_pretrained(tmp_path / "bert-pretrained")
    return tmp_path / "bert-pretrained"


def test_why_bert_similarities(pretrained_dir, tmp_path):
    four = ["she walked along the bank of the river .", "he sat by the bank of the river .",
            "she went to the bank to borrow money .", "he worked at the bank as a pilot ."]
    cfg = EvaluateConfig(why_bert_sentences=four)
    path = why_bert_report(cfg, pretrained_dir, tmp_path / "out")
    report = json.loads(path.read_text())
    assert report["word"] == "bank" and report["sentences"] == four
    assert report["senses"] == ["A", "A", "B", "B"]
    for name in ("pretrained", "scratch", "static"):
        sims = np.array(report[name]["similarity"])
        assert sims.shape == (4, 4) and (sims == sims.T).all()
        np.testing.assert_allclose(np.diag(sims), 1.0)
        same = (sims[0, 1] + sims[2, 3]) / 2
        different = (sims[0, 2] + sims[0, 3] + sims[1, 2] + sims[1, 3]) / 4
        assert report[name]["same_sense_mean"] == pytest.approx(same)
        assert report[name]["different_sense_mean"] == pytest.approx(different)
    # The input embedding is a table lookup: the same vector in every sentence.
    np.testing.assert_allclose(report["static"]["similarity"], 1.0)
    # Context changes the contextual vectors: they are not all the same.
    assert np.array(report["pretrained"]["similarity"]).min() < 0.9999
    # Same seed, same random "scratch" model.
    again = json.loads(why_bert_report(cfg, pretrained_dir, tmp_path / "again").read_text())
    assert again["scratch"] == report["scratch"]
    assert (tmp_path / "out" / "why_bert.png").stat().st_size > 5000


def test_why_bert_default_sentences_hold_the_word_at_the_same_positions_in_both_senses(pretrained_dir, tmp_path):
    """The default: the demo world's 18 + 18 sentences; each river-bank sentence has a money-bank
    one with "bank" at the very same token positions, so position cannot tell the senses apart."""
    report = json.loads(why_bert_report(EvaluateConfig(), pretrained_dir, tmp_path / "out").read_text())
    assert report["senses"] == ["A"] * 18 + ["B"] * 18
    assert report["positions"][:18] == report["positions"][18:]
    assert len({tuple(p) for p in report["positions"]}) >= 4  # and at several positions
    with pytest.raises(LmforgeError, match=r"none given for why_bert_word 'bat'; the built-in sentences are for 'bank'"):
        why_bert_report(EvaluateConfig(why_bert_word="bat"), pretrained_dir, tmp_path / "bat")


def test_why_bert_word_missing_from_a_sentence(pretrained_dir, tmp_path):
    cfg = EvaluateConfig(why_bert_sentences=["the bank of the river .", "embankments are not banks ."])
    with pytest.raises(LmforgeError, match=r"why_bert_sentences\[1\]: word 'bank' is not in the sentence "
                                           r"'embankments are not banks \.'"):
        why_bert_report(cfg, pretrained_dir, tmp_path / "out")
    with pytest.raises(LmforgeError, match=r"nowhere: folder not found"):
        why_bert_report(EvaluateConfig(), tmp_path / "nowhere", tmp_path / "out")


def test_sense_groups_are_the_two_halves():
    assert sense_groups(2) == [0, 1] and sense_groups(4) == [0, 0, 1, 1] and sense_groups(5) == [0, 0, 1, 1, 1]
    sims = np.array([[1.0, 0.9, 0.2], [0.9, 1.0, 0.4], [0.2, 0.4, 1.0]])
    assert sense_means(sims, [0, 1, 1]) == (pytest.approx(0.4), pytest.approx(0.55))
    assert sense_means(sims[:2, :2], [0, 1]) == (None, pytest.approx(0.9))


@pytest.mark.parametrize("n, annotated", [(4, 4 * 4), (36, 0)])
def test_similarity_cells_are_numbered_only_while_the_numbers_are_readable(tmp_path, monkeypatch, n, annotated):
    """36 sentences gave 3,888 overlapping 9-point numbers that took 7 s to draw: colour alone then."""
    from lmforge.components.evaluation import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or path)
    matrix = np.eye(n)
    plots.similarity_heatmaps({"pretrained": matrix, "random": matrix}, [f"s{i}" for i in range(n)], "caption",
                              "title", tmp_path / "h.png")
    panels = [ax for ax in figures[0].axes if ax.get_title() in ("pretrained", "random")]
    assert [len(ax.texts) for ax in panels] == [annotated, annotated]
