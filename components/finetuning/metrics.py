"""Task metrics as the benchmarks define them (GLUE from scikit-learn and scipy)."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from components.data.schemas import GLUE_TASKS
from components.errors import LmforgeError

MAIN_METRIC = {"cola": "matthews_correlation", "stsb": "pearson", "mrpc": "f1", "qqp": "f1",
               "squad": "f1", "squad_v2": "f1", "conll2003": "f1"}


def glue_metrics(task: str, predictions, references) -> dict[str, float]:
    """GLUE's metrics for a task, named as the Hub's `glue` metric names them."""
    if task not in GLUE_TASKS:
        raise LmforgeError(f"unknown GLUE task {task!r}: expected one of {', '.join(GLUE_TASKS)}")
    predictions, references = np.asarray(predictions), np.asarray(references)
    if task == "cola":
        return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
    if task == "stsb":
        return {"pearson": float(pearsonr(predictions, references)[0]),
                "spearmanr": float(spearmanr(predictions, references)[0])}
    if task in ("mrpc", "qqp"):
        return {"f1": float(f1_score(references, predictions)), "accuracy": float(accuracy_score(references, predictions))}
    return {"accuracy": float(accuracy_score(references, predictions))}


def main_metric(task: str) -> str:
    """The metric that picks the best checkpoint and stops training early."""
    return MAIN_METRIC.get(task, "accuracy")


def task_score(metrics: dict[str, float]) -> float:
    """GLUE's number for one task: the mean of its metrics (e.g. MRPC's F1 and accuracy)."""
    return float(np.mean(list(metrics.values())))


def glue_score(per_task: dict[str, dict[str, float]]) -> float:
    """The GLUE score: the mean over tasks of each task's mean metric."""
    return float(np.mean([task_score(m) for m in per_task.values()]))
