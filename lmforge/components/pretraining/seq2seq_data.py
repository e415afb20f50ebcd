"""Denoising examples: BART's tokenizer from the byte-level BPE, document chunks, corrupting batches.

The tokenizer is the GPT one's vocabulary and merges with BART's <s> </s> <unk> <pad> <mask> added
after them: the same text gives the same ids between them, and the GPT folder on disk is left as it
was (the seq2seq model is exported with its own copy).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from datasets import Dataset

from lmforge.components.config import CorruptionConfig
from lmforge.components.errors import LmforgeError
from lmforge.components.pretraining.corruptions import corrupt, sentence_end_ids


def bart_tokenizer(folder: Path):
    """A BART tokenizer (<s> text </s>) on the vocabulary and merges of the byte-level BPE in `folder`."""
    from transformers import AutoTokenizer, BartTokenizer

    if not (Path(folder) / "tokenizer.json").exists():
        raise LmforgeError(f"{folder}: no tokenizer.json; expected the byte-level BPE `lmforge stage tokenizer` "
                           "writes (data/tokenizers/gpt)")
    source = AutoTokenizer.from_pretrained(str(folder))
    spec = json.loads(source.backend_tokenizer.to_str())
    if spec["model"].get("type") != "BPE":
        raise LmforgeError(f"{folder}: a {spec['model'].get('type')} tokenizer; expected a byte-level BPE "
                           "(data/tokenizers/gpt)")
    if source.mask_token is not None and source.pad_token is not None:  # already BART's (a seq2seq export)
        return source
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["model"]["merges"]]
    return BartTokenizer(vocab=dict(spec["model"]["vocab"]), merges=merges, model_max_length=source.model_max_length)


def build_chunks(corpus: Dataset, tokenizer, max_seq_length: int, num_proc: int = 1) -> Dataset:
    """Each document's ids cut into chunks of max_seq_length - 2 (room for <s> and </s>)."""
    size = max_seq_length - 2

    def to_chunks(batch: dict) -> dict:
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [doc[i:i + size] for doc in ids for i in range(0, len(doc), size)]}

    return corpus.map(to_chunks, batched=True, batch_size=1000, remove_columns=corpus.column_names,
                      num_proc=num_proc if num_proc > 1 else None, desc=f"seq2seq chunks of {size}")


class DenoisingCollator:
    """Corrupts each chunk with a generator seeded by (seed, batch number, place in the batch), so a
    resumed run sees the very batches an uninterrupted one would; pads the encoder's input, and the
    labels (the original chunk between <s> and </s>) with -100."""

    def __init__(self, tokenizer, cfg: CorruptionConfig, seed: int, max_seq_length: int, kind: str | None = None):
        self.cfg, self.seed, self.max_seq_length, self.kind = cfg, seed, max_seq_length, kind
        self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.pad, self.mask = tokenizer.pad_token_id, tokenizer.mask_token_id
        self.end_ids = sentence_end_ids(tokenizer)

    def pair(self, ids: list[int], rng: random.Random) -> tuple[list[int], list[int]]:
        """(encoder input, labels) of one chunk."""
        noisy = corrupt(list(ids), self.cfg, self.mask, self.end_ids, rng, self.kind)
        # Infilling's empty spans can add a few masks: the encoder never sees more than max_seq_length.
        return [self.bos, *noisy, self.eos][:self.max_seq_length], [self.bos, *ids, self.eos]

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch_no = examples[0].get("batch_no", 0)
        pairs = [self.pair(ex["input_ids"], random.Random(f"{self.seed}/{batch_no}/{i}"))
                 for i, ex in enumerate(examples)]
        return pad_pairs(pairs, self.pad)


def pad_pairs(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask padded with `pad_id`, labels with -100."""
    width, label_width = max(len(x) for x, _ in pairs), max(len(y) for _, y in pairs)
    return {
        "input_ids": torch.tensor([x + [pad_id] * (width - len(x)) for x, _ in pairs]),
        "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in pairs]),
        "labels": torch.tensor([y + [-100] * (label_width - len(y)) for _, y in pairs]),
    }
