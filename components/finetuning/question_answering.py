"""Extractive QA fine-tuning (SQuAD v1.1 and v2.0): BertForQuestionAnswering on context windows.

Training sees windows labelled with the answer's start and end token (qa.prepare_train_features).
Validation cannot be scored per window: every validation pass gathers the start/end logits of all
windows, turns them into one answer per question (qa.postprocess_predictions) and scores those
with the official SQuAD F1, so early stopping and the best checkpoint follow the real metric.

transformers 5 dropped the "question-answering" pipeline; `answer` does its job for one
question with the same post-processing as training's validation.
"""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from components.config import FinetuneConfig, TrainConfig
from components.finetuning.metrics import find_best_threshold, squad_metrics
from components.finetuning.qa import postprocess_predictions, prepare_eval_features, prepare_train_features
from components.finetuning.training import PAD_MULTIPLE, FinetuneModule, padded_loader, with_lengths

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
