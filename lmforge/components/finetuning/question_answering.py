"""Extractive QA (SQuAD v1.1 and v2.0): windows, their labels, the answer back, and the fine-tuning module.

Pre- and post-processing behave as transformers' run_qa.py + utils_qa.py. A context longer than one
window is split into overlapping windows (features); each window is [CLS] question [SEP]
context-piece [SEP]. Training labels are the answer's first and last token in a window, or the [CLS]
token (index 0) where the window does not hold the whole answer. Post-processing takes the
best-scoring span over every window of an example and maps it back to characters of the context; for
SQuAD v2 it weighs that span against the "no answer" score. Both feature functions are for
`datasets.map(batched=True, remove_columns=...)`; rows are not padded: the collator pads each batch.

Validation cannot be scored per window: every validation pass gathers the start/end logits of all
windows, turns them into one answer per question (postprocess_predictions) and scores those with the
official SQuAD F1, so early stopping and the best checkpoint follow the real metric.

transformers 5 dropped the "question-answering" pipeline; `answer` does its job for one question with
the same post-processing as training's validation.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import BatchEncoding, DataCollatorWithPadding, PreTrainedTokenizerBase

from lmforge.components.config import FinetuneConfig, TrainConfig
from lmforge.components.errors import LmforgeError
from lmforge.components.finetuning.metrics import find_best_threshold, squad_metrics
from lmforge.components.finetuning.training import PAD_MULTIPLE, FinetuneModule, padded_loader, with_lengths

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


QA_COLUMNS = ("id", "question", "context", "answers")
POSTPROCESS_ONLY = ("example_id", "offset_mapping")  # kept beside the windows, never fed to the model


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
def predict_logits(model, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Start and end logits of every window of a split, in order."""
    model.eval()
    windows = []
    for batch in loader:
        batch = {k: v.to(model.device) for k, v in batch.items()}
        windows += window_logits(model(**batch), batch["attention_mask"])
    starts, ends = zip(*windows)
    return stack_padded(list(starts)), stack_padded(list(ends))


@torch.no_grad()
def answer(model, tokenizer: PreTrainedTokenizerBase, question: str, context: str,
           cfg: FinetuneConfig | None = None) -> str:
    """The span of `context` that answers `question`; "" when a squad_v2 model finds no answer
    (its exported config names `finetuning_task`). Windows and span limits as in `cfg`."""
    cfg = cfg or FinetuneConfig()
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
