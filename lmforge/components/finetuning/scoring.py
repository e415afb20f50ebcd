"""Predictions and metrics for one split, per kind of task: what the finetune stage reports after
training and what the evaluate stage reports for a saved model, from the same code, so the two
agree for the same weights, settings and split. Each predictions row is one JSONL line.

`encoded` / `windows`: the split already encoded (the finetune stage encodes its evaluation splits
before training, so a bad row fails before any training time is spent); None encodes it here.

GLUE: encode_glue / glue_loader / predict_dataset -> glue_metrics. QA: encode_qa / qa_loader /
predict_logits / SquadScorer (prepare_eval_features, postprocess_predictions) ->
squad_metrics (+ the best no-answer thresholds for v2). Tagging: encode_tagging / tagging_loader /
predict_tags (align_labels, tags_from_predictions) -> seqeval_metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset

from lmforge.components.config import FinetuneConfig
from lmforge.components.data.schemas import GLUE_TASKS
from lmforge.components.errors import LmforgeError
from lmforge.components.finetuning.classification import encode_glue, glue_loader, predict_dataset
from lmforge.components.finetuning.metrics import glue_metrics, seqeval_metrics
from lmforge.components.finetuning.question_answering import SquadScorer, encode_qa, predict_logits, qa_loader
from lmforge.components.finetuning.token_classification import encode_tagging, predict_tags, tag_names, tagging_loader


@dataclass
class SplitResult:
    metrics: dict
    rows: list[dict]  # one JSON line per example: the gold answer beside the prediction
    gold: np.ndarray | None = field(default=None, repr=False)  # GLUE: labels / scores, for the plots
    predicted: np.ndarray | None = field(default=None, repr=False)


def score_glue(model, tokenizer, task: str, data: Dataset, split: str, ft: FinetuneConfig,
               encoded: Dataset | None = None) -> SplitResult:
    spec = GLUE_TASKS[task]
    if any(label < 0 for label in data["label"]):  # the Hub's GLUE test splits hide labels as -1
        raise LmforgeError(f"task {task!r}: split {split!r} has hidden labels (-1); evaluate a split with labels")
    if encoded is None:
        encoded = encode_glue(data, task, tokenizer, ft.max_seq_length, gpt=model.config.model_type == "gpt2")
    predicted, gold = predict_dataset(model, glue_loader(encoded, tokenizer, ft.train.batch_size, False, 0),
                                      spec.is_regression)
    rows = [{"split": split, **{c: row[c] for c in spec.text_columns}, "label": row["label"], "prediction": p.item()}
            for row, p in zip(data, predicted)]
    return SplitResult(glue_metrics(task, predicted, gold), rows, gold, predicted)


def score_qa(model, tokenizer, task: str, data: Dataset, split: str, ft: FinetuneConfig,
             windows: Dataset | None = None, scorer: SquadScorer | None = None) -> SplitResult:
    version_2 = task == "squad_v2"
    if windows is None:
        windows = encode_qa(data, tokenizer, ft, train=False)
    scorer = scorer or SquadScorer(data, windows, ft, version_2)
    answers, spans, diffs = scorer.predict(*predict_logits(model, qa_loader(windows, tokenizer, ft.train.batch_size,
                                                                            False)))
    metrics = scorer.metrics(answers)
    if version_2:
        metrics |= scorer.best_thresholds(spans, diffs)
    rows = [{"split": split, "id": row["id"], "question": row["question"], "answers": row["answers"]["text"],
             "prediction": answers[row["id"]], **({"null_score_diff": diffs[row["id"]]} if version_2 else {})}
            for row in data]
    return SplitResult(metrics, rows)


def score_tagging(model, tokenizer, data: Dataset, split: str, ft: FinetuneConfig,
                  encoded: Dataset | None = None) -> SplitResult:
    labels = tag_names(data)
    model_labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if model_labels != labels:
        raise LmforgeError(f"the model's labels {model_labels} are not the dataset's tags {labels} in the same "
                           "order; evaluate on the dataset the model was fine-tuned on")
    if encoded is None:
        encoded = encode_tagging(data, tokenizer, ft.max_seq_length, labels, f"split {split!r}")
    true, pred = predict_tags(model, tagging_loader(encoded, tokenizer, ft.train.batch_size, False), labels)
    # Tags per word; a sentence cut at max_seq_length has tags for its kept words only.
    rows = [{"split": split, "id": row.get("id", str(i)), "tokens": row["tokens"], "tags": gold, "prediction": tags}
            for i, (row, gold, tags) in enumerate(zip(data, true, pred))]
    return SplitResult(seqeval_metrics(true, pred), rows)
