"""Extractive QA's answer back from a model: a question's context cut into overlapping windows, the
model's start/end logits of each, and the best-scoring span over all windows as text of the context.

Pre- and post-processing behave as transformers' run_qa.py + utils_qa.py; fine-tuning's validation
(question_answering.py) and a served model (serving.py) share them. transformers 5 dropped the
"question-answering" pipeline; `answer` does its job for one question. Only torch, numpy and a fast
tokenizer here: a registered QA model is served where only its requirements are installed (no
datasets, no Lightning).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import BatchEncoding, PreTrainedTokenizerBase

from lmforge.components.errors import LmforgeError

if TYPE_CHECKING:
    from lmforge.components.config import FinetuneConfig

CONTEXT = 1  # sequence id of the context: the question goes first, as for BERT
POSTPROCESS_ONLY = ("example_id", "offset_mapping")  # kept beside the windows, never fed to the model


def tokenize_windows(examples: Mapping, tokenizer: PreTrainedTokenizerBase, max_seq_length: int, doc_stride: int,
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


def prepare_eval_features(examples: Mapping, tokenizer: PreTrainedTokenizerBase, max_seq_length: int = 384,
                          doc_stride: int = 128, pad: bool = False) -> BatchEncoding:
    """Windows of SQuAD rows that keep what post-processing needs: `example_id` (the row's `id`)
    and `offset_mapping`, with None on every token outside the context.

    None (not (-1, -1)) as utils_qa uses it: Arrow stores null elements in a list column, so a
    `datasets` column holds it. Drop both columns before the model sees a batch.
    """
    enc = tokenize_windows(examples, tokenizer, max_seq_length, doc_stride, pad)
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


def window_logits(out, attention_mask: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """(start, end) logits of each window of a batch, cut to the window's own tokens: the padding a
    batch adds would otherwise take places among the n best spans, and which windows share a batch
    (one process or several, any batch size) would change the answers."""
    lengths = attention_mask.sum(-1).tolist()
    starts, ends = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
    return [(s[:n], e[:n]) for s, e, n in zip(starts, ends, lengths)]


def stack_padded(rows: list[np.ndarray]) -> np.ndarray:
    """Windows' logits of different lengths -> one (windows, longest) array; the positions past a
    window's tokens get -inf, where post-processing never looks."""
    out = np.full((len(rows), max(len(r) for r in rows)), -np.inf, dtype=np.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


@torch.no_grad()
def answer(model, tokenizer: PreTrainedTokenizerBase, question: str, context: str,
           cfg: FinetuneConfig | None = None) -> str:
    """The span of `context` that answers `question`; "" when a squad_v2 model finds no answer
    (its exported config names `finetuning_task`). Windows and span limits as in `cfg`."""
    if cfg is None:
        from lmforge.components.config import FinetuneConfig  # its defaults: pydantic comes with MLflow

        cfg = FinetuneConfig()
    windows = prepare_eval_features({"id": ["q"], "question": [question], "context": [context]}, tokenizer,
                                    cfg.max_seq_length, cfg.doc_stride)
    inputs = tokenizer.pad({k: v for k, v in windows.items() if k not in POSTPROCESS_ONLY}, return_tensors="pt")
    model.eval()
    inputs = inputs.to(model.device)
    starts, ends = zip(*window_logits(model(**inputs), inputs["attention_mask"]))
    answers, _ = postprocess_predictions(
        {"id": ["q"], "context": [context]}, windows, stack_padded(list(starts)), stack_padded(list(ends)),
        n_best=cfg.n_best, max_answer_length=cfg.max_answer_length,
        version_2=getattr(model.config, "finetuning_task", None) == "squad_v2",
        null_score_diff_threshold=cfg.null_score_threshold,
    )
    return answers["q"]
