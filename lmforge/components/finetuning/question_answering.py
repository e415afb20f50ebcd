"""Extractive QA (SQuAD v1.1 and v2.0): training windows and their labels, the splits' loaders and
scores, and the fine-tuning module.

A context longer than one window is split into overlapping windows (features); each window is [CLS]
question [SEP] context-piece [SEP]. Training labels are the answer's first and last token in a window,
or the [CLS] token (index 0) where the window does not hold the whole answer, as transformers' run_qa.py
labels them. The feature functions are for `datasets.map(batched=True, remove_columns=...)`; rows are
not padded: the collator pads each batch.

Validation cannot be scored per window: every validation pass gathers the start/end logits of all
windows, turns them into one answer per question (postprocess_predictions) and scores those with the
official SQuAD F1, so early stopping and the best checkpoint follow the real metric.

Evaluation windows and post-processing (the best-scoring span over every window of an example, back
in characters of the context; for SQuAD v2 weighed against the "no answer" score) live in
qa_answers.py, which a served model runs too.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import BatchEncoding, DataCollatorWithPadding, PreTrainedTokenizerBase

from lmforge.components.config import FinetuneConfig, TrainConfig
from lmforge.components.finetuning.metrics import find_best_threshold, squad_metrics
from lmforge.components.finetuning.qa_answers import (CONTEXT, POSTPROCESS_ONLY, postprocess_predictions,
                                                      prepare_eval_features, stack_padded, tokenize_windows,
                                                      window_logits)
from lmforge.components.finetuning.training import PAD_MULTIPLE, FinetuneModule, padded_loader, with_lengths


def prepare_train_features(examples: Mapping, tokenizer: PreTrainedTokenizerBase, max_seq_length: int = 384,
                           doc_stride: int = 128, pad: bool = False) -> BatchEncoding:
    """Windows of SQuAD rows with `start_positions` / `end_positions` of the first answer.

    A window that does not hold the whole answer, or a question with no answer (v2), points both
    at [CLS] (index 0): the model learns "no answer here".
    """
    enc = tokenize_windows(examples, tokenizer, max_seq_length, doc_stride, pad)
    sample_of = enc.pop("overflow_to_sample_mapping")
    offsets_of = enc.pop("offset_mapping")
    enc["start_positions"], enc["end_positions"] = [], []
    for i, offsets in enumerate(offsets_of):
        answers = examples["answers"][sample_of[i]]
        start, end = _answer_tokens(enc.sequence_ids(i), offsets, answers)
        enc["start_positions"].append(start)
        enc["end_positions"].append(end)
    return enc


def _answer_tokens(sequence_ids: list, offsets: list, answers: Mapping) -> tuple[int, int]:
    cls = 0
    if not answers["answer_start"]:
        return cls, cls
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    first = sequence_ids.index(CONTEXT)
    last = len(sequence_ids) - 1 - sequence_ids[::-1].index(CONTEXT)
    if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
        return cls, cls
    # Move in from both ends of the context; a token that straddles an answer edge belongs to it.
    while first < len(offsets) and offsets[first][0] <= start_char:
        first += 1
    while offsets[last][1] >= end_char:
        last -= 1
    return first - 1, last + 1


QA_COLUMNS = ("id", "question", "context", "answers")


def encode_qa(data: Dataset, tokenizer: PreTrainedTokenizerBase, cfg: FinetuneConfig, train: bool) -> Dataset:
    """A split's questions as windows of max_seq_length tokens overlapping by doc_stride; train
    windows carry answer positions, evaluation windows what post-processing needs."""
    prepare = prepare_train_features if train else prepare_eval_features
    windows = data.map(prepare, batched=True, remove_columns=data.column_names, desc="windows",
                       fn_kwargs={"tokenizer": tokenizer, "max_seq_length": cfg.max_seq_length,
                                  "doc_stride": cfg.doc_stride})
    return with_lengths(windows) if train else windows


def qa_loader(windows: Dataset, tokenizer, batch_size: int, shuffle: bool, seed: int = 0,
              num_workers: int = 0) -> DataLoader:
    model_columns = [c for c in windows.column_names if c not in POSTPROCESS_ONLY]
    return padded_loader(windows.select_columns(model_columns), DataCollatorWithPadding(tokenizer, pad_to_multiple_of=PAD_MULTIPLE),
                         batch_size, shuffle, seed, num_workers)


class SquadScorer:
    """Answers and SQuAD metrics for one split from its windows' logits."""

    def __init__(self, examples: Dataset, windows: Dataset, cfg: FinetuneConfig, version_2: bool):
        # Read the columns once: post-processing runs after every validation pass.
        self.examples = {"id": examples["id"], "context": examples["context"]}
        self.windows = {"example_id": windows["example_id"], "offset_mapping": windows["offset_mapping"]}
        self.references = [{"id": i, "answers": a} for i, a in zip(examples["id"], examples["answers"])]
        self.cfg, self.version_2 = cfg, version_2

    def predict(self, start_logits: np.ndarray, end_logits: np.ndarray):
        """(answers, best non-empty spans, null-score differences), each by question id."""
        spans, diffs = postprocess_predictions(self.examples, self.windows, start_logits, end_logits,
                                               n_best=self.cfg.n_best, max_answer_length=self.cfg.max_answer_length)
        # The threshold applied here rather than inside postprocess_predictions, so the spans stay
        # at hand for find_best_threshold.
        answers = {q: "" if self.version_2 and diffs[q] > self.cfg.null_score_threshold else span
                   for q, span in spans.items()}
        return answers, spans, diffs

    def metrics(self, answers: dict[str, str]) -> dict:
        return squad_metrics(answers, self.references, v2=self.version_2)

    def best_thresholds(self, spans: dict[str, str], diffs: dict[str, float]) -> dict[str, float]:
        """The official v2 script's best_exact/best_f1 and the thresholds that reach them (on this split)."""
        return find_best_threshold(spans, diffs, self.references)


class QAModule(FinetuneModule):
    """Trains a *ForQuestionAnswering model; scores each validation pass with SQuAD's F1."""

    def __init__(self, model, task: str, train: TrainConfig, total_steps: int, scorer: SquadScorer):
        super().__init__(model, task, train, total_steps)
        self.scorer = scorer

    def validation_items(self, batch: dict) -> list[tuple[np.ndarray, np.ndarray]]:
        # no answer positions in evaluation windows: logits only, no loss
        return window_logits(self(batch), batch["attention_mask"])

    def score(self, items: list[tuple[np.ndarray, np.ndarray]]) -> dict:
        starts, ends = (stack_padded(list(column)) for column in zip(*items))
        answers, _, _ = self.scorer.predict(starts, ends)
        return self.scorer.metrics(answers)


@torch.no_grad()
def predict_logits(model, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Start and end logits of every window of a split, in order."""
    model.eval()
    windows = []
    for batch in loader:
        batch = {k: v.to(model.device) for k, v in batch.items()}
        windows += window_logits(model(**batch), batch["attention_mask"])
    starts, ends = zip(*windows)
    return stack_padded(list(starts)), stack_padded(list(ends))
