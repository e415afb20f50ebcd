"""Extractive QA pre- and post-processing, with the behaviour of transformers' run_qa.py + utils_qa.py.

A context longer than one window is split into overlapping windows (features); each window is
[CLS] question [SEP] context-piece [SEP]. Training labels are the answer's first and last token
in a window, or the [CLS] token (index 0) where the window does not hold the whole answer.
Post-processing takes the best-scoring span over every window of an example and maps it back
to characters of the context; for SQuAD v2 it weighs that span against the "no answer" score.

Both feature functions are for `datasets.map(batched=True, remove_columns=...)`; pass the
tokenizer and lengths with `fn_kwargs`. Rows are not padded: the collator pads each batch.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping

import numpy as np
from transformers import BatchEncoding, PreTrainedTokenizerBase

from components.errors import LmforgeError

CONTEXT = 1  # sequence id of the context: the question goes first, as for BERT


def _tokenize(examples: Mapping, tokenizer: PreTrainedTokenizerBase, max_seq_length: int, doc_stride: int,
              pad: bool) -> BatchEncoding:
    if not tokenizer.is_fast:
        raise LmforgeError(f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer: QA needs its offset mapping")
    if doc_stride >= max_seq_length:
        raise LmforgeError(f"doc_stride {doc_stride} must be smaller than max_seq_length {max_seq_length}")
    return tokenizer(
        # Leading whitespace in a question only wastes window room (some SQuAD questions have lots).
        [q.lstrip() for q in examples["question"]],
        examples["context"],
        truncation="only_second",  # cut the context, never the question
        max_length=min(max_seq_length, tokenizer.model_max_length),
        stride=doc_stride,  # tokens shared by consecutive windows, as run_qa passes --doc_stride
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length" if pad else False,
    )


def prepare_train_features(examples: Mapping, tokenizer: PreTrainedTokenizerBase, max_seq_length: int = 384,
                           doc_stride: int = 128, pad: bool = False) -> BatchEncoding:
    """Windows of SQuAD rows with `start_positions` / `end_positions` of the first answer.

    A window that does not hold the whole answer, or a question with no answer (v2), points both
    at [CLS] (index 0): the model learns "no answer here".
    """
    enc = _tokenize(examples, tokenizer, max_seq_length, doc_stride, pad)
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


def prepare_eval_features(examples: Mapping, tokenizer: PreTrainedTokenizerBase, max_seq_length: int = 384,
                          doc_stride: int = 128, pad: bool = False) -> BatchEncoding:
    """Windows of SQuAD rows that keep what post-processing needs: `example_id` (the row's `id`)
    and `offset_mapping`, with None on every token outside the context.

    None (not (-1, -1)) as utils_qa uses it: Arrow stores null elements in a list column, so a
    `datasets` column holds it. Drop both columns before the model sees a batch.
    """
    enc = _tokenize(examples, tokenizer, max_seq_length, doc_stride, pad)
    sample_of = enc.pop("overflow_to_sample_mapping")
    enc["example_id"] = [examples["id"][s] for s in sample_of]
    enc["offset_mapping"] = [
        [o if seq == CONTEXT else None for o, seq in zip(offsets, enc.sequence_ids(i))]
        for i, offsets in enumerate(enc["offset_mapping"])
    ]
    return enc


def postprocess_predictions(examples: Mapping, features: Mapping, start_logits, end_logits, n_best: int = 20,
                            max_answer_length: int = 30, version_2: bool = False,
                            null_score_diff_threshold: float = 0.0) -> tuple[dict[str, str], dict[str, float]]:
    """Turn per-window start/end logits into one answer string per example.

    `examples` are the SQuAD rows (`id`, `context`), `features` what `prepare_eval_features` made
    from them (`example_id`, `offset_mapping`), and the logits arrays of shape (features, tokens)
    (padded rows are fine: positions past a feature's length are skipped).

    Returns (answers by id, null-score differences by id). The difference is the "no answer"
    score (the lowest [CLS] start+end logit over the example's windows) minus the best span's;
    with `version_2` the answer is "" where it exceeds `null_score_diff_threshold`. It serves as
    the na_prob of `metrics.find_best_threshold`.
    """
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    windows = collections.defaultdict(list)
    for f, example_id in enumerate(features["example_id"]):
        windows[example_id].append(f)
    all_offsets = features["offset_mapping"]

    answers, score_diffs = {}, {}
    for example_id, context in zip(examples["id"], examples["context"]):
        null_score, spans = None, []
        for f in windows[example_id]:
            starts, ends, offsets = start_logits[f], end_logits[f], all_offsets[f]
            # "No answer" gets its lowest [CLS] score over the windows (as utils_qa): one window
            # that sees the answer is enough to make the example answerable.
            cls_score = float(starts[0] + ends[0])
            if null_score is None or cls_score < null_score:
                null_score = cls_score
            spans += _best_spans(starts, ends, offsets, n_best, max_answer_length)
        # The best span with text: utils_qa ranks the n best (the null answer among them for v2)
        # and takes the first non-null one, which is this span.
        best = max((s for s in spans if context[s[1]:s[2]]), key=lambda s: s[0], default=None)
        # No usable span at all: utils_qa falls back to the text "empty" scored 0; we answer "".
        best_score, text = (best[0], context[best[1]:best[2]]) if best else (0.0, "")
        diff = (null_score if null_score is not None else 0.0) - best_score
        score_diffs[example_id] = float(diff)
        answers[example_id] = "" if version_2 and diff > null_score_diff_threshold else text
    return answers, score_diffs


def _best_spans(starts: np.ndarray, ends: np.ndarray, offsets: list, n_best: int,
                max_answer_length: int) -> list[tuple[float, int, int]]:
    """(score, start char, end char) of valid spans among the n best starts x n best ends."""
    spans = []
    top_starts = np.argsort(starts)[-1 : -n_best - 1 : -1].tolist()
    top_ends = np.argsort(ends)[-1 : -n_best - 1 : -1].tolist()
    for s in top_starts:
        for e in top_ends:
            # Both ends must be context tokens of this window (None marks question and special
            # tokens, and padding lies past the offsets), in order, and not too long.
            if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                continue
            if e < s or e - s + 1 > max_answer_length:
                continue
            spans.append((float(starts[s] + ends[e]), offsets[s][0], offsets[e][1]))
    return spans
