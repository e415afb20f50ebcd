"""The crosslingual stage on a small bilingual demo with a tiny BERT: its four rows, the language
vector's retrieval, the script-based language split, and clear errors for one-language input."""

import json
from collections import Counter

import pytest
from datasets import Dataset, DatasetDict

from lmforge.components.config import BertTokenizerConfig, CrosslingualConfig, DemoConfig, FinetuneConfig, ModelConfig, TrackingConfig
from lmforge.components.data.demo import build_demo
from lmforge.components.data.world import CHINESE
from lmforge.components.errors import LmforgeError
from lmforge.components.evaluation.crosslingual import crosslingual_report, retrieval, script, split_languages
from lmforge.components.pretraining.models import build_bert
from lmforge.components.tokenizer import train_bert_tokenizer

PAIRS = list(CHINESE.items())
TINY = ModelConfig(hidden_size=64, num_layers=2, num_heads=2)
OFF = TrackingConfig(enabled=False)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("crosslingual")
    demo = build_demo(DemoConfig(entities=40, corpus_documents=200, glue_train=48, glue_eval=24, chinese_eval=24))
    for name in ("rte", "rte_zh", "corpus", "dictionary_en_zh"):
        demo[name].save_to_disk(str(root / "raw" / name))
    tok = train_bert_tokenizer(demo["corpus"]["train"], BertTokenizerConfig(vocab_size=800, min_frequency=1))
    model = build_bert(TINY, len(tok), tok.pad_token_id, "sop")
    model.save_pretrained(root / "models" / "bert-pretrained")
    tok.save_pretrained(root / "models" / "bert-pretrained")
    return root


def config(root, **kwargs) -> CrosslingualConfig:
    return CrosslingualConfig(task="rte", source="rte", target="rte_zh", run_dir=str(root / "run"),
                              out=str(root / "reports" / "crosslingual.json"), plot=str(root / "reports" / "xl.png"),
                              documents_per_language=20, contexts_per_word=3, **kwargs)


def bert(root):
    """The multilingual BERT the stage passes in (pretrain.bert.out_dir): the workspace's tiny one."""
    return root / "models" / "bert-pretrained"


FT = FinetuneConfig.model_validate({"train": {"max_steps": 4, "batch_size": 16, "val_every_n_steps": 2,
                                              "warmup_steps": 1}})


def test_four_rows_and_the_language_vector(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    path = crosslingual_report(config(workspace), bert(workspace), FT, workspace / "raw", OFF)
    result = json.loads(path.read_text())
    assert [r["setup"] for r in result["rows"]] == [
        "zero-shot: fine-tuned on source, pretrained", "fine-tuned on target, pretrained",
        "fine-tuned on source, random weights", "majority class of source"]
    assert [r["trained_on"] for r in result["rows"]] == ["rte", "rte_zh", "rte", "rte"]
    for r in result["rows"]:
        assert r["main_metric"] == "accuracy" and 0 <= r["score"] <= 1
    # Zero-shot and random weights: one fine-tuning per seed, the row their mean; the ceiling one seed.
    assert [list(r["seeds"]) for r in result["rows"]] == [["0", "1"], ["0"], ["0", "1"], []]
    for r in result["rows"][:3]:
        assert r["score"] == pytest.approx(sum(r["seeds"].values()) / len(r["seeds"]))
    assert sorted(p.name for p in (workspace / "run").iterdir() if p.name.startswith("crosslingual")) == [
        "crosslingual-scratch-seed0", "crosslingual-scratch-seed1", "crosslingual-target-seed0",
        "crosslingual-zero-shot-seed0", "crosslingual-zero-shot-seed1"]
    verdict = result["zero_shot_beats_baselines"]
    floor = max(max(result["rows"][2]["seeds"].values()), result["rows"][3]["score"])
    assert verdict["margin_of_worst_seed"] == pytest.approx(min(result["rows"][0]["seeds"].values()) - floor)
    assert verdict["every_seed"] == (verdict["margin_of_worst_seed"] > 0)
    # The mean's margin over the better baseline, from the same rows, with its interval around it.
    baseline = max(result["rows"][2]["score"], result["rows"][3]["score"])
    assert verdict["mean_margin"] == pytest.approx(result["rows"][0]["score"] - baseline)
    assert verdict["resamples"] == 1000 and len(verdict["mean_margin_ci95"]) == 2
    # The majority row is the train split's commonest label, scored on the target's validation split.
    from datasets import load_from_disk

    source, target = load_from_disk(str(workspace / "raw" / "rte")), load_from_disk(str(workspace / "raw" / "rte_zh"))
    common = Counter(source["train"]["label"]).most_common(1)[0][0]
    expected = sum(label == common for label in target["validation"]["label"]) / len(target["validation"])
    assert result["rows"][3]["score"] == pytest.approx(expected)

    lv = result["language_vector"]
    assert lv["scripts"] == ["LATIN", "CJK"] and lv["pairs"] == 45
    for weights in ("pretrained", "random"):
        for found in (lv[weights], lv[weights]["target_words_only"]):
            for side in ("with_vector", "without_vector"):
                assert 0 <= found[side]["top1"] <= found[side]["top5"] <= 1
        assert lv[weights]["with_vector"]["chance_top1"] == pytest.approx(1 / 89)  # 45 + 45 words, less itself
    first = lv["pretrained"]["examples"][0]
    assert first["word"] == "chemist" and first["translation"] == "化学家"
    assert first["nearest"] != "chemist" and first["nearest"] in {w for pair in PAIRS for w in pair}
    assert (workspace / "reports" / "xl.png").stat().st_size > 5000
    assert not (workspace / "models" / "bert-rte").exists()  # its fine-tuned models stay in its run folder


def test_language_by_script_and_one_language_is_a_clear_error(workspace, tmp_path, monkeypatch):
    assert script("Talia Brandt was born in Velmora.") == "LATIN"
    assert script("Talia Brandt于1944年出生在Velmora。她在Dreland长大。") == "CJK"
    assert script("Ирина родилась в Москве.") == "CYRILLIC" and script("1944 !") is None
    with pytest.raises(LmforgeError, match=r"corpus c has 0 sentences in CJK script \(sentences by script: LATIN 12\)"):
        split_languages(["an English document ."] * 12, "LATIN", "CJK", "corpus c")

    raw = tmp_path / "raw"
    (workspace / "raw" / "rte").parent.mkdir(exist_ok=True)
    english = DatasetDict({"train": Dataset.from_dict({"text": ["the bank of the river ."] * 30})})
    english.save_to_disk(str(raw / "corpus"))
    DatasetDict({"train": Dataset.from_dict({"source": ["a", "b", "c", "d", "e"],
                                             "target": ["x", "y", "z", "w", "v"]})}).save_to_disk(str(raw / "same"))
    from lmforge.components.evaluation.crosslingual import language_vector

    with pytest.raises(LmforgeError, match=r"both columns are in LATIN script"):
        language_vector(config(workspace, dictionary="same"), bert(workspace), raw)
    import shutil

    shutil.copytree(workspace / "raw" / "dictionary_en_zh", raw / "dictionary_en_zh")
    with pytest.raises(LmforgeError, match=r"has 0 sentences in CJK script .* pretrain on a corpus with both"):
        language_vector(config(workspace), bert(workspace), raw)


def test_zero_shot_beats_the_baselines_only_if_its_worst_seed_does():
    from lmforge.components.evaluation.crosslingual import beats, row

    def rows(zero_shot, random_init, majority):
        return [row("zero-shot", "en", {s: {"accuracy": a} for s, a in enumerate(zero_shot)}, "qnli"),
                row("target", "zh", {0: {"accuracy": 0.9}}, "qnli"),
                row("random", "en", {s: {"accuracy": a} for s, a in enumerate(random_init)}, "qnli"),
                row("majority", "en", {None: {"accuracy": majority}}, "qnli")]

    assert beats(rows([0.8, 0.7], [0.5, 0.6], 0.55)) == {"every_seed": True, "margin_of_worst_seed": pytest.approx(0.1)}
    # A mean above both baselines is not enough: one seed at or below the best random-weights seed.
    verdict = beats(rows([0.9, 0.55], [0.5, 0.6], 0.55))
    assert verdict["every_seed"] is False and verdict["margin_of_worst_seed"] == pytest.approx(-0.05)
    assert beats(rows([0.7], [0.4], 0.72))["every_seed"] is False  # below the majority class


def test_the_mean_beats_the_baselines_only_when_its_interval_clears_zero():
    """The interval comes from resampling the evaluation's examples: a ~0.1 lead is clear on 500 rows,
    not on 40, and no lead is never clear."""
    import numpy as np

    from lmforge.components.evaluation.crosslingual import mean_margin

    def setups(n: int, zero_shot: float, random_init: float):
        rng = np.random.default_rng(0)
        gold = rng.integers(0, 2, n)

        def right(share: float) -> np.ndarray:  # predictions right on `share` of the rows
            return np.where(rng.random(n) < share, gold, 1 - gold)
        return gold, {"zero_shot": [right(zero_shot), right(zero_shot)],
                      "random_init": [right(random_init), right(random_init)], "majority": np.zeros(n, int)}

    clear = mean_margin("qnli", *setups(500, 0.62, 0.5))
    assert clear["mean_beats"] and 0.05 < clear["mean_margin"] < 0.15
    low, high = clear["mean_margin_ci95"]
    assert 0 < low < clear["mean_margin"] < high and high - low < 0.1
    small = mean_margin("qnli", *setups(40, 0.62, 0.5))
    assert small["mean_margin_ci95"][1] - small["mean_margin_ci95"][0] > high - low
    none = mean_margin("qnli", *setups(500, 0.5, 0.5))
    assert not none["mean_beats"] and none["mean_margin_ci95"][0] < 0
    # The same inputs, the same interval: the resampling is seeded.
    assert mean_margin("qnli", *setups(500, 0.62, 0.5)) == clear
    # Paired: every setup is scored on the same resample, so two setups that predict alike differ by
    # exactly 0 on every one (unpaired draws would spread the interval around 0).
    gold, predicted = setups(300, 0.62, 0.5)
    alike = {**predicted, "random_init": predicted["zero_shot"], "majority": 1 - gold}
    assert mean_margin("qnli", gold, alike) == {"mean_margin": 0.0, "mean_margin_ci95": [0.0, 0.0],
                                                "mean_beats": False, "resamples": 1000}
    # MRPC is scored by GLUE's mean of F1 and accuracy, not by accuracy alone.
    from lmforge.components.finetuning.metrics import glue_metrics, task_score

    gold, predicted = setups(200, 0.7, 0.5)
    scores = {k: np.mean([task_score(glue_metrics("mrpc", p, gold)) for p in predicted[k]])
              for k in ("zero_shot", "random_init")}
    majority = task_score(glue_metrics("mrpc", predicted["majority"], gold))
    f1 = mean_margin("mrpc", gold, predicted, resamples=50)
    assert f1["mean_margin"] == pytest.approx(scores["zero_shot"] - max(scores["random_init"], majority))
    assert f1["mean_margin"] != pytest.approx(np.mean([(p == gold).mean() for p in predicted["zero_shot"]])
                                              - max(np.mean([(p == gold).mean() for p in predicted["random_init"]]),
                                                    (predicted["majority"] == gold).mean()))
    # STS-B: the majority's constant has no correlation; the margin is over random weights alone.
    scores_gold = np.linspace(0, 5, 60)
    near = scores_gold + np.random.default_rng(1).normal(0, 1, 60)
    far = np.random.default_rng(2).uniform(0, 5, 60)
    stsb = mean_margin("stsb", scores_gold, {"zero_shot": [near], "random_init": [far],
                                             "majority": np.full(60, 2.5)}, resamples=20)
    assert stsb["mean_margin"] == pytest.approx(task_score(glue_metrics("stsb", near, scores_gold))
                                                - task_score(glue_metrics("stsb", far, scores_gold)))


def test_the_language_vector_carries_words_across_the_language_gap():
    """Two languages whose words sit at the same places up to an offset: without the vector a word's
    nearest is a word of its own language; with the offset added it is its translation. A vector that
    is wrong (here: zero, or the offset reversed) finds none."""
    import numpy as np

    from lmforge.components.evaluation.crosslingual import translation

    rng = np.random.default_rng(0)
    sources = rng.normal(size=(10, 8))
    offset = np.full(8, 5.0)
    targets = sources + offset + rng.normal(scale=0.05, size=(10, 8))
    assert translation(sources, targets, 0.0)["top1"] == 0.0
    assert translation(sources, targets, offset) == {"top1": 1.0, "top5": 1.0, "chance_top1": 1 / 19}
    assert translation(sources, targets, -offset)["top1"] == 0.0


def test_retrieval_counts_the_right_translation_among_the_nearest():
    import numpy as np

    candidates = np.eye(6)
    queries = candidates + 0.1  # nearest: itself
    assert retrieval(queries, candidates)["top1"] == 1.0
    shuffled = candidates[[1, 0, 2, 3, 4, 5]]
    assert retrieval(shuffled, candidates) == {"top1": pytest.approx(4 / 6), "top5": 1.0, "chance_top1": 1 / 6}
