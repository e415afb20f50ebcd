"""Token tagging (CoNLL-2003 NER): word labels onto sub-tokens and back, as run_ner.py does, and the
BertForTokenClassification module scored by seqeval.

A word may split into several sub-tokens but has one label. The label goes on its first sub-token; the
others, and the special tokens, get -100, which the loss ignores. Predictions are read back at the same
first sub-tokens, so the entity-level precision/recall/F1 count words and entities as conlleval does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from datasets import ClassLabel, Dataset
from torch.utils.data import DataLoader
from transformers import BatchEncoding, DataCollatorForTokenClassification, PreTrainedTokenizerBase

from lmforge.components.config import TrainConfig
from lmforge.components.data.schemas import CONLL_NER_TAGS
from lmforge.components.errors import LmforgeError
from lmforge.components.finetuning.metrics import seqeval_metrics
from lmforge.components.finetuning.training import PAD_MULTIPLE, FinetuneModule, padded_loader, with_lengths

IGNORE = -100  # torch's CrossEntropyLoss ignore_index


def align_labels(examples: Mapping, tokenizer: PreTrainedTokenizerBase, label_all_tokens: bool = False,
                 max_length: int | None = None, label_names: Sequence[str] = CONLL_NER_TAGS,
                 pad: bool = False) -> BatchEncoding:
    """Tokenize pre-split words (`tokens`) and align their `ner_tags` ids into `labels`.

    For `datasets.map(batched=True)`. `max_length` None: the tokenizer's model_max_length.
    With `label_all_tokens`, later sub-tokens get the word's label too, B-X turned into I-X
    (a word is one entity, so only its first piece begins it).
    """
    if not tokenizer.is_fast:
        raise LmforgeError(f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer: tagging needs word_ids")
    enc = tokenizer(examples["tokens"], is_split_into_words=True, truncation=True, max_length=max_length,
                    padding="max_length" if pad else False)
    inside = _b_to_i(label_names)
    enc["labels"] = []
    for i, tags in enumerate(examples["ner_tags"]):
        labels, previous = [], None
        for word in enc.word_ids(batch_index=i):
            if word is None:
                labels.append(IGNORE)
            elif word != previous:
                labels.append(tags[word])
            else:
                labels.append(inside[tags[word]] if label_all_tokens else IGNORE)
            previous = word
        enc["labels"].append(labels)
    return enc


def _b_to_i(label_names: Sequence[str]) -> list[int]:
    """For each label id, the id a word's later sub-tokens get: B-X's I-X, else itself."""
    ids = {name: i for i, name in enumerate(label_names)}
    return [ids.get("I-" + name[2:], i) if name.startswith("B-") else i for i, name in enumerate(label_names)]


def tags_from_predictions(pred_ids, label_ids, id2label: Mapping[int, str] | Sequence[str]
                          ) -> tuple[list[list[str]], list[list[str]]]:
    """Tag names at every labelled position (label != -100), for `metrics.seqeval_metrics`.

    `pred_ids` are label ids per token, or logits (one more axis), which are argmaxed; rows may be
    padded, as the padded positions carry -100 labels.
    """
    label_ids = [np.asarray(row) for row in label_ids]
    if isinstance(pred_ids, np.ndarray) or hasattr(pred_ids, "numpy"):
        pred_ids = np.asarray(pred_ids)
        if pred_ids.ndim == 3:
            pred_ids = pred_ids.argmax(-1)
    true_tags, pred_tags = [], []
    for preds, labels in zip(pred_ids, label_ids, strict=True):
        keep = labels != IGNORE
        true_tags.append([id2label[int(i)] for i in labels[keep]])
        pred_tags.append([id2label[int(i)] for i in np.asarray(preds)[: len(labels)][keep]])
    return true_tags, pred_tags


TAGGING_COLUMNS = ("tokens", "ner_tags")


def tag_names(data: Dataset) -> list[str]:
    """The label set: the dataset's own ClassLabel names when it has them, else CoNLL-2003's."""
    inner = getattr(data.features["ner_tags"], "feature", None)
    return list(inner.names) if isinstance(inner, ClassLabel) else list(CONLL_NER_TAGS)


def encode_tagging(data: Dataset, tokenizer: PreTrainedTokenizerBase, max_seq_length: int, label_names: list[str],
                   origin: str = "dataset") -> Dataset:
    """Sub-tokens of each sentence's words with their tag ids on first sub-tokens, -100 elsewhere."""
    for row, tags in enumerate(data["ner_tags"]):
        bad = [t for t in tags if not 0 <= t < len(label_names)]
        if bad:
            raise LmforgeError(f"{origin} row {row}: ner_tags value {bad[0]} is not a tag id; "
                               f"expected 0..{len(label_names) - 1} ({', '.join(label_names)})")
    encoded = data.map(align_labels, batched=True, remove_columns=data.column_names, desc="align tags",
                       fn_kwargs={"tokenizer": tokenizer, "max_length": max_seq_length, "label_names": label_names})
    return with_lengths(encoded)


def tagging_loader(data: Dataset, tokenizer, batch_size: int, shuffle: bool, seed: int = 0,
                   num_workers: int = 0) -> DataLoader:
    # This collator pads `labels` with -100 too, so padding never counts in the loss or the metrics.
    return padded_loader(data, DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=PAD_MULTIPLE), batch_size,
                         shuffle, seed, num_workers)


class TaggingModule(FinetuneModule):
    """Trains a *ForTokenClassification model; scores each validation pass with seqeval's entity F1."""

    def __init__(self, model, task: str, train: TrainConfig, total_steps: int, label_names: list[str]):
        super().__init__(model, task, train, total_steps)
        self.label_names = label_names

    def validation_items(self, batch: dict) -> list[tuple[list[str], list[str]]]:
        out = self(batch)
        self.log("val/loss", out.loss, prog_bar=True, sync_dist=True)
        true, pred = tags_from_predictions(out.logits.argmax(-1).cpu().numpy(), batch["labels"].cpu().numpy(),
                                           self.label_names)
        return list(zip(true, pred))

    def score(self, items: list[tuple[list[str], list[str]]]) -> dict:
        true, pred = zip(*items)
        return seqeval_metrics(list(true), list(pred))


@torch.no_grad()
def predict_tags(model, loader: DataLoader, label_names: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Gold and predicted tag names of every sentence of a split, in order, one per (kept) word."""
    model.eval()
    true_tags, pred_tags = [], []
    for batch in loader:
        batch = {k: v.to(model.device) for k, v in batch.items()}
        true, pred = tags_from_predictions(model(**batch).logits.argmax(-1).cpu().numpy(),
                                           batch["labels"].cpu().numpy(), label_names)
        true_tags += true
        pred_tags += pred
    return true_tags, pred_tags
