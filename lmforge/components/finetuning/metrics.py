"""Task metrics exactly as the benchmarks define them: GLUE, SQuAD (v1.1 and v2.0), CoNLL NER.

GLUE comes from scikit-learn and scipy, named as the Hub's `glue` metric names them. SQuAD is
hand-written after the official `evaluate-v2.0.py`: the `evaluate` package loads its metric
scripts from the Hub, which is unreachable offline. Tagging uses `seqeval`, as run_ner.py does.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterable, Mapping

import numpy as np

from lmforge.components.data.tasks import GLUE_TASKS
from lmforge.components.errors import LmforgeError

MAIN_METRIC = {"cola": "matthews_correlation", "stsb": "pearson", "mrpc": "f1", "qqp": "f1",
               "squad": "f1", "squad_v2": "f1", "conll2003": "f1"}
SCORED_TASKS = (*GLUE_TASKS, "squad", "squad_v2", "conll2003")
GLUE_METRIC_NAMES = ("matthews_correlation", "pearson", "spearmanr", "f1", "accuracy")
PUNCTUATION = frozenset(string.punctuation)

# ------------------------------------------------------------------------------------------ GLUE


def glue_metrics(task: str, predictions, references) -> dict[str, float]:
    """GLUE's metrics for a task, named as the Hub's `glue` metric names them.

    Predictions are label ids (the argmax of the logits), or float scores for STS-B.
    """
    if task not in GLUE_TASKS:
        raise LmforgeError(f"unknown GLUE task {task!r}: expected one of {', '.join(GLUE_TASKS)}")
    # Imported here: a registration needs only main_metric, and these cost it ~2 s of a 9 s process.
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    predictions, references = np.asarray(predictions), np.asarray(references)
    if task == "stsb":  # a regression head predicts shape (n, 1)
        predictions, references = predictions.reshape(-1), references.reshape(-1)
    if len(predictions) != len(references):
        raise LmforgeError(f"task {task!r}: {len(predictions)} predictions but {len(references)} references")
    if task == "cola":
        return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
    if task == "stsb":
        return {"pearson": float(pearsonr(predictions, references)[0]),
                "spearmanr": float(spearmanr(predictions, references)[0])}
    if task in ("mrpc", "qqp"):  # F1 of the positive class (1: equivalent / duplicate)
        return {"f1": float(f1_score(references, predictions)),
                "accuracy": float(accuracy_score(references, predictions))}
    return {"accuracy": float(accuracy_score(references, predictions))}


def main_metric(task: str) -> str:
    """The metric that picks the best checkpoint and stops training early."""
    if task not in SCORED_TASKS:
        raise LmforgeError(f"unknown task {task!r}: expected one of {', '.join(SCORED_TASKS)}")
    return MAIN_METRIC.get(task, "accuracy")


def task_score(metrics: Mapping[str, float]) -> float:
    """GLUE's number for one task: the mean of its metrics (MRPC's F1 and accuracy, STS-B's two
    correlations, MNLI's `accuracy_matched` and `accuracy_mismatched`).

    Only GLUE metric names count, so extra entries (a loss, a row count) do not skew the mean.
    """
    values = [v for k, v in metrics.items()
              if k.removesuffix("_matched").removesuffix("_mismatched") in GLUE_METRIC_NAMES]
    if not values:
        raise LmforgeError(f"no GLUE metric among {', '.join(metrics) or 'none'}: "
                           f"expected some of {', '.join(GLUE_METRIC_NAMES)}")
    return float(np.mean(values))


def glue_score(per_task: Mapping[str, Mapping[str, float]]) -> float:
    """The GLUE score: the mean over tasks of each task's score."""
    return float(np.mean([task_score(m) for m in per_task.values()]))


# ----------------------------------------------------------------------------------------- SQuAD


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace (in that order)."""
    s = "".join(ch for ch in s.lower() if ch not in PUNCTUATION)
    s = re.sub(r"\b(a|an|the)\b", " ", s, flags=re.UNICODE)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the normalized answers. An empty answer (no-answer) scores 1 against
    an empty one and 0 against anything else."""
    pred_toks, gold_toks = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_toks or not gold_toks:
        return float(pred_toks == gold_toks)
    same = sum((collections.Counter(pred_toks) & collections.Counter(gold_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def _gold_answers(reference: Mapping) -> list[str]:
    # As the official script: answers that normalize to nothing do not count, and a question
    # with no answer has the empty string as its only correct answer.
    return [a for a in reference["answers"]["text"] if normalize_answer(a)] or [""]


def _raw_scores(predictions: Mapping[str, str], references: Iterable[Mapping]):
    """Per-question exact and F1 (max over gold answers), and whether each question has an answer."""
    exact, f1s, has_ans = {}, {}, {}
    missing = []
    for ref in references:
        qid = ref["id"]
        if qid not in predictions:
            missing.append(qid)
            continue
        golds, pred = _gold_answers(ref), predictions[qid]
        exact[qid] = max(exact_match(pred, g) for g in golds)
        f1s[qid] = max(f1(pred, g) for g in golds)
        has_ans[qid] = bool(ref["answers"]["text"])
    if missing:  # the official script would skip them and shrink the denominator; a silent skip hides bugs
        raise LmforgeError(f"no prediction for {len(missing)} question id(s), e.g. {', '.join(map(str, missing[:5]))}")
    return exact, f1s, has_ans


def squad_metrics(predictions: Mapping[str, str], references: Iterable[Mapping], v2: bool = False) -> dict:
    """SQuAD's exact match and F1 in percent, as the official evaluate-v2.0.py computes them.

    `references` are rows with `id` and `answers.text` (a SQuAD dataset split works as is). With
    `v2`, also the scores and counts over answerable (HasAns) and unanswerable (NoAns) questions.
    """
    exact, f1s, has_ans = _raw_scores(predictions, references)
    if not exact:
        raise LmforgeError("no questions to score: references are empty")

    def mean(scores: dict, ids: list) -> float:
        return 100.0 * sum(scores[q] for q in ids) / len(ids)

    ids = list(exact)
    out = {"exact_match": mean(exact, ids), "f1": mean(f1s, ids), "total": len(ids)}
    if v2:
        for name, subset in (("HasAns", [q for q in ids if has_ans[q]]), ("NoAns", [q for q in ids if not has_ans[q]])):
            if subset:  # the official script leaves a group out when it has no questions
                out |= {f"{name}_exact": mean(exact, subset), f"{name}_f1": mean(f1s, subset)}
            out[f"{name}_total"] = len(subset)
    return out


def find_best_threshold(predictions: Mapping[str, str], na_probs: Mapping[str, float],
                        references: Iterable[Mapping]) -> dict[str, float]:
    """The no-answer threshold that maximizes exact match and F1 (the official find_all_best_thresh).

    A question is answered "" when its na_prob is above the threshold. `na_probs` is any score
    where higher means "more likely unanswerable", e.g. the null-score differences that
    `qa_answers.postprocess_predictions` returns; `predictions` should then be its best non-null answers
    (postprocess with `null_score_diff_threshold=float("inf")`) so each threshold can be tried.
    Returns best_exact, best_exact_thresh, best_f1, best_f1_thresh (scores in percent).
    """
    exact, f1s, has_ans = _raw_scores(predictions, references)
    missing = [q for q in exact if q not in na_probs]
    if missing:
        raise LmforgeError(f"no na_prob for {len(missing)} question id(s), e.g. {', '.join(map(str, missing[:5]))}")
    out = {}
    for name, scores in (("exact", exact), ("f1", f1s)):
        # Start with every question answered "": each unanswerable one is right. Then raise the
        # threshold past one question at a time, in order of na_prob, answering it instead.
        score = best = sum(1 for q in scores if not has_ans[q])
        thresh = 0.0
        for qid in sorted(scores, key=lambda q: na_probs[q]):
            if has_ans[qid]:
                score += scores[qid]
            elif predictions[qid]:
                score -= 1
            if score > best:
                best, thresh = score, na_probs[qid]
        out |= {f"best_{name}": 100.0 * best / len(scores), f"best_{name}_thresh": float(thresh)}
    return out


# --------------------------------------------------------------------------------------- tagging


def seqeval_metrics(true_tags: list[list[str]], pred_tags: list[list[str]]) -> dict:
    """Entity-level precision, recall and F1 (an entity counts only when its span and type both
    match), token accuracy, and the same per entity type; seqeval's default (conlleval) mode."""
    from seqeval import metrics as seqeval  # imported here, as glue_metrics' libraries

    if len(true_tags) != len(pred_tags) or any(len(t) != len(p) for t, p in zip(true_tags, pred_tags)):
        raise LmforgeError("true_tags and pred_tags differ in shape: expected one predicted tag per gold tag")
    # zero_division=0 gives the values seqeval's default ("warn") gives, without the warning.
    report = seqeval.classification_report(true_tags, pred_tags, output_dict=True, zero_division=0)
    per_entity = {
        kind: {"precision": float(r["precision"]), "recall": float(r["recall"]),
               "f1": float(r["f1-score"]), "support": int(r["support"])}
        for kind, r in report.items() if not kind.endswith(" avg")
    }
    return {
        "precision": float(seqeval.precision_score(true_tags, pred_tags, zero_division=0)),
        "recall": float(seqeval.recall_score(true_tags, pred_tags, zero_division=0)),
        "f1": float(seqeval.f1_score(true_tags, pred_tags, zero_division=0)),
        "accuracy": float(seqeval.accuracy_score(true_tags, pred_tags)),
        "per_entity": per_entity,
    }
