"""GLUE metrics against values computed by hand."""

import math

import pytest

from lmforge.components.errors import LmforgeError
from lmforge.components.finetuning.metrics import glue_metrics, glue_score, main_metric, task_score


def test_cola_matthews_by_hand():
    # tp=2 tn=1 fp=1 fn=1: (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    preds, refs = [1, 1, 1, 0, 0], [1, 1, 0, 0, 1]
    assert glue_metrics("cola", preds, refs)["matthews_correlation"] == pytest.approx(1 / 6)


def test_stsb_pearson_and_spearman_by_hand():
    preds, refs = [1.0, 2.0, 3.0, 5.0], [1.0, 2.0, 3.0, 4.0]
    got = glue_metrics("stsb", preds, refs)
    # x = (1,2,3,5), mean 2.75; y = (1,2,3,4), mean 2.5: sums of cov 6.5, var_x 8.75, var_y 5
    assert got["pearson"] == pytest.approx(6.5 / math.sqrt(8.75 * 5))
    assert got["spearmanr"] == pytest.approx(1.0)


def test_mrpc_f1_and_accuracy_by_hand():
    # tp=1 fp=1 fn=1: precision 1/2, recall 1/2, F1 1/2; 2 of 4 right
    got = glue_metrics("mrpc", [1, 1, 0, 0], [1, 0, 1, 0])
    assert got == {"f1": pytest.approx(0.5), "accuracy": pytest.approx(0.5)}


def test_glue_score_is_mean_of_task_means():
    per_task = {"mrpc": {"f1": 0.8, "accuracy": 0.6}, "rte": {"accuracy": 0.5}}
    assert task_score(per_task["mrpc"]) == pytest.approx(0.7)
    assert glue_score(per_task) == pytest.approx(0.6)
    assert main_metric("cola") == "matthews_correlation" and main_metric("rte") == "accuracy"


def test_unknown_task_is_a_clear_error():
    with pytest.raises(LmforgeError, match="unknown GLUE task 'glue': expected one of cola, sst2"):
        glue_metrics("glue", [0], [0])
