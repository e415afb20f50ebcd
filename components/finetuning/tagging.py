"""Token classification (CoNLL NER): word labels onto sub-tokens and back, as run_ner.py does.

A word may split into several sub-tokens but has one label. The label goes on its first
sub-token; the others, and the special tokens, get -100, which the loss ignores. Predictions
are read back at the same first sub-tokens, so metrics count words, not sub-tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from transformers import BatchEncoding, PreTrainedTokenizerBase

from components.data.schemas import CONLL_NER_TAGS
from components.errors import LmforgeError

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
