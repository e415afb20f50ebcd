"""GLUE, SQuAD and seqeval metrics against values computed by hand."""

import math

import pytest

from lmforge.components.errors import LmforgeError
from lmforge.components.finetuning.metrics import (
    exact_match,
    f1,
    find_best_threshold,
    glue_metrics,
    glue_score,
    main_metric,
    normalize_answer,
    seqeval_metrics,
    squad_metrics,
    task_score,
)

# ------------------------------------------------------------------------------------------ GLUE


def test_matthews_on_a_confusion_matrix():
    # tp=3 (rows 0-2), fp=1 (row 3), tn=2 (rows 4-5), fn=0:
    # (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = 6 / sqrt(4*3*3*2) = 6 / sqrt(72) = 1/sqrt(2)
    got = glue_metrics("cola", [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0])
    assert got == {"matthews_correlation": pytest.approx(1 / math.sqrt(2))}


def test_stsb_pearson_and_spearman_on_four_points():
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 4.0, 30.0]
    # Pearson: x - 2.5 = (-1.5, -.5, .5, 1.5); y - 9.25 = (-7.25, -8.25, -5.25, 20.75)
    # sum of products 10.875 + 4.125 - 2.625 + 31.125 = 43.5; sum x^2 5; sum y^2 578.75
    # Spearman: ranks of y (2, 1, 3, 4); d^2 sums to 2; 1 - 6*2 / (4*(16-1)) = 0.8
    got = glue_metrics("stsb", [[v] for v in x], y)  # a regression head's (n, 1) output is fine
    assert got["pearson"] == pytest.approx(43.5 / math.sqrt(5 * 578.75))
    assert got["spearmanr"] == pytest.approx(0.8)


def test_f1_of_the_positive_class_and_accuracy():
    # preds vs refs: (1,1) tp, (0,1) fn, (1,0) fp, (1,1) tp, (0,0) tn -> P = R = 2/3, F1 2/3; 3 of 5 right
    got = glue_metrics("qqp", [1, 0, 1, 1, 0], [1, 1, 0, 1, 0])
    assert got == {"f1": pytest.approx(2 / 3), "accuracy": pytest.approx(0.6)}
    assert glue_metrics("mnli", [0, 1, 2, 2], [0, 1, 2, 0]) == {"accuracy": pytest.approx(0.75)}


def test_task_and_glue_scores():
    per_task = {"stsb": {"pearson": 0.9, "spearmanr": 0.8},
                "mnli": {"accuracy_matched": 0.8, "accuracy_mismatched": 0.7}}
    assert task_score(per_task["stsb"]) == pytest.approx(0.85)
    assert task_score({**per_task["mnli"], "loss": 3.0}) == pytest.approx(0.75)  # a loss is not a GLUE metric
    assert glue_score(per_task) == pytest.approx(0.8)


def test_main_metrics():
    assert [main_metric(t) for t in ("cola", "stsb", "mrpc", "qqp", "sst2", "mnli", "squad_v2", "conll2003")] == [
        "matthews_correlation", "pearson", "f1", "f1", "accuracy", "accuracy", "f1", "f1"]
    with pytest.raises(LmforgeError, match="unknown task 'corpus'"):
        main_metric("corpus")


def test_unknown_glue_task_names_the_tasks():
    with pytest.raises(LmforgeError, match="unknown GLUE task 'squad': expected one of cola, sst2, mrpc"):
        glue_metrics("squad", [0], [0])


# ----------------------------------------------------------------------------------------- SQuAD


def test_normalization():
    assert normalize_answer("The  Cat!") == "cat" and exact_match("The  Cat!", "cat") == 1
    assert normalize_answer("An apple a day, the end.") == "apple day end"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert exact_match("Kestrel-Bay", "Kestrel Bay") == 0  # punctuation is dropped, not made a space
    assert exact_match("kestrelbay", "Kestrel-Bay") == 1


def test_token_f1():
    # "the cat sat" -> [cat, sat]; "a cat sat down" -> [cat, sat, down]: 2 shared;
    # precision 2/3, recall 2/2, F1 = 2 * (2/3) / (5/3) = 4/5
    assert f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert f1("", "") == 1.0 and f1("", "cat") == 0.0 and f1("the", "cat") == 0.0  # "the" normalizes to ""
    assert f1("dog", "cat") == 0.0


def test_squad_takes_the_best_gold_answer():
    refs = [{"id": "q1", "answers": {"text": ["Kestrel Bay", "the bay"], "answer_start": [0, 0]}},
            {"id": "q2", "answers": {"text": ["in 1972"], "answer_start": [0]}}]
    # q1: "Bay" vs "the bay": EM 1, F1 1. q2: "1972" vs "in 1972": EM 0, F1 2*(1)(1/2)/(3/2) = 2/3
    got = squad_metrics({"q1": "Bay", "q2": "1972"}, refs)
    assert got == {"exact_match": pytest.approx(50.0), "f1": pytest.approx(100 * (1 + 2 / 3) / 2), "total": 2}


def test_squad_v2_no_answer_scoring():
    refs = [{"id": "a", "answers": {"text": ["the cat"], "answer_start": [0]}},
            {"id": "b", "answers": {"text": ["cat sat"], "answer_start": [4]}},
            {"id": "n1", "answers": {"text": [], "answer_start": []}},
            {"id": "n2", "answers": {"text": [], "answer_start": []}}]
    preds = {"a": "cat", "b": "cat", "n1": "", "n2": "a dog"}
    # a: EM 1 F1 1; b: EM 0, F1 2*(1)(1/2)/(3/2) = 2/3; n1: "" on no-answer = 1; n2: non-empty = 0
    got = squad_metrics(preds, refs, v2=True)
    assert got == {
        "exact_match": pytest.approx(50.0), "f1": pytest.approx(100 * (1 + 2 / 3 + 1) / 4), "total": 4,
        "HasAns_exact": pytest.approx(50.0), "HasAns_f1": pytest.approx(100 * (1 + 2 / 3) / 2), "HasAns_total": 2,
        "NoAns_exact": pytest.approx(50.0), "NoAns_f1": pytest.approx(50.0), "NoAns_total": 2,
    }
    with pytest.raises(LmforgeError, match="no prediction for 1 question id"):
        squad_metrics({"a": "cat"}, refs[:2])


def test_best_threshold():
    refs = [{"id": q, "answers": {"text": gold, "answer_start": [0] * len(gold)}} for q, gold in
            [("q1", ["cat"]), ("q2", []), ("q3", ["dog"]), ("q4", ["Kestrel Bay"]), ("q5", [])]]
    preds = {"q1": "cat", "q2": "x", "q3": "dog", "q4": "Bay", "q5": "y"}
    na = {"q1": 0.1, "q2": 0.2, "q3": 0.4, "q4": 0.5, "q5": 0.8}
    # Threshold below all: every answer "", so q2 and q5 right: 2. Then, in na order, answering
    # q1 +1 = 3 (t=0.1), q2 -1 = 2, q3 +1 = 3, q4 +F1 2/3 = 3.67 (t=0.5) / +EM 0 = 3, q5 -1.
    # F1: best 3.67/5 at 0.5. EM: best 3/5, first reached at 0.1.
    got = find_best_threshold(preds, na, refs)
    assert got == {"best_exact": pytest.approx(60.0), "best_exact_thresh": pytest.approx(0.1),
                   "best_f1": pytest.approx(100 * (3 + 2 / 3) / 5), "best_f1_thresh": pytest.approx(0.5)}
    # Check: answering "" above t=0.5 (q5 only) scores the same F1 directly.
    nulled = {q: ("" if na[q] > 0.5 else p) for q, p in preds.items()}
    assert squad_metrics(nulled, refs, v2=True)["f1"] == pytest.approx(got["best_f1"])


# --------------------------------------------------------------------------------------- seqeval


def test_seqeval_one_right_one_wrong_type():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["O", "O"]]
    # gold entities PER(0-1), LOC(3); predicted PER(0-1), ORG(3): 1 of 2 right each way.
    got = seqeval_metrics(gold, pred)
    assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert got["accuracy"] == pytest.approx(5 / 6)  # tokens: only the B-LOC / B-ORG one is wrong
    assert got["per_entity"] == {
        "PER": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
        "LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "ORG": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0},
    }


def test_seqeval_default_mode_starts_entities_at_a_bare_I():
    # conlleval (seqeval's default mode): "I-PER" after "O" opens a PER entity, so this matches.
    got = seqeval_metrics([["O", "B-PER", "I-PER"]], [["O", "I-PER", "I-PER"]])
    assert got["f1"] == pytest.approx(1.0)


def test_the_main_metric_of_a_task_loads_no_metric_library():
    """A registration asks only for the metric's name: scipy, scikit-learn and seqeval cost it ~2 s
    of a 9 s process when metrics.py imported them at the top."""
    from tests.conftest import fresh_python

    code = """
import sys
from lmforge.components.finetuning.metrics import main_metric
print(main_metric("stsb"), sorted(m for m in ("scipy", "sklearn", "seqeval", "datasets") if m in sys.modules))
"""
    assert fresh_python(code).split() == ["pearson", "[]"]
