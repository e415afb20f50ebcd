"""Token tagging fine-tuning (CoNLL-2003 NER): BertForTokenClassification scored by seqeval.

Each word's label sits on its first sub-token (tagging.align_labels) and is read back there, so
the entity-level precision/recall/F1 count words and entities as conlleval does.
"""

from __future__ import annotations

import torch
from datasets import ClassLabel, Dataset
from torch.utils.data import DataLoader
from transformers import DataCollatorForTokenClassification, PreTrainedTokenizerBase

from components.config import TrainConfig
from components.data.schemas import CONLL_NER_TAGS
from components.errors import LmforgeError
from components.finetuning.metrics import seqeval_metrics
from components.finetuning.tagging import align_labels, tags_from_predictions
from components.finetuning.training import PAD_MULTIPLE, FinetuneModule, padded_loader, with_lengths

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
