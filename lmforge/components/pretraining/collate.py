"""Batches: dynamic padding, BERT's masking at collate time, and a sampler that resumes exactly.

Masking is written here rather than taken from `DataCollatorForLanguageModeling` because that
collator turns random-token replacement off under whole-word masking and draws from one
generator per process; lmforge needs all three rates in both modes and a generator seeded per
batch, so a resumed run sees exactly the masks an uninterrupted one would.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Sampler
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from lmforge.components.config import MaskingConfig


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    cfg: MaskingConfig,
    mask_token_id: int,
    random_ids: tuple[int, int],
    generator: torch.Generator,
    word_start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose tokens for masked LM; return (inputs, labels) with -100 on tokens not chosen.

    maskable: False on special tokens and padding, which are never chosen.
    word_start: with whole-word masking, True where a word begins; a word is chosen as a whole.
    Of the chosen tokens, `mask_token` become [MASK], `random_token` a random id in
    [random_ids[0], random_ids[1]) (never a special token), and the rest are kept.
    """
    inputs, labels = input_ids.clone(), input_ids.clone()
    draw = torch.rand(input_ids.shape, generator=generator)
    if word_start is None:
        chosen = (draw < cfg.mlm_probability) & maskable
    else:
        starts = word_start & maskable
        word_id = torch.cumsum(starts.long(), dim=1)  # tokens of one word share its start's id
        start_chosen = (draw < cfg.mlm_probability) & starts
        chosen_words = torch.zeros(input_ids.shape[0], input_ids.shape[1] + 1, dtype=torch.bool)
        chosen_words.scatter_(1, word_id * start_chosen, start_chosen)
        chosen_words[:, 0] = False  # id 0 is "before the first word"
        chosen = chosen_words.gather(1, word_id) & maskable
    labels[~chosen] = -100
    action = torch.rand(input_ids.shape, generator=generator)
    to_mask = chosen & (action < cfg.mask_token)
    to_random = chosen & (action >= cfg.mask_token) & (action < cfg.mask_token + cfg.random_token)
    inputs[to_mask] = mask_token_id
    random_tokens = torch.randint(*random_ids, input_ids.shape, generator=generator)
    inputs[to_random] = random_tokens[to_random]
    return inputs, labels


class MaskingCollator:
    """Pads a list of BERT examples and masks them with a generator seeded by (seed, batch number)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, cfg: MaskingConfig, seed: int):
        self.pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
        self.cfg, self.seed = cfg, seed
        self.mask_token_id = tokenizer.mask_token_id
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        vocab = tokenizer.get_vocab()
        # Random replacements come from the regular vocabulary, never a special token.
        self.random_ids = (max(self.special_ids.tolist()) + 1, len(tokenizer))
        is_continuation = torch.zeros(len(tokenizer), dtype=torch.bool)
        for token, index in vocab.items():
            is_continuation[index] = token.startswith("##")
        self.is_continuation = is_continuation

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch_no = examples[0].pop("batch_no", 0)
        for ex in examples[1:]:
            ex.pop("batch_no", None)
        batch = self.pad(examples)
        if "next_sentence_label" in batch:
            batch["next_sentence_label"] = batch.pop("next_sentence_label").long()
        batch.pop("labels", None)
        maskable = ~torch.isin(batch["input_ids"], self.special_ids) & batch["attention_mask"].bool()
        word_start = ~self.is_continuation[batch["input_ids"]] if self.cfg.whole_word else None
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + batch_no)
        batch["input_ids"], batch["labels"] = mask_tokens(
            batch["input_ids"], maskable, self.cfg, self.mask_token_id, self.random_ids, generator, word_start
        )
        return dict(batch)


def gpt_collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """GPT blocks are all `block_size` long: stack them; the model shifts labels itself."""
    input_ids = torch.tensor([ex["input_ids"] for ex in examples], dtype=torch.long)
    return {"input_ids": input_ids, "labels": input_ids}


class IndexedDataset(TorchDataset):
    """A `datasets.Dataset` read by (index, batch number) pairs, so the collator knows its batch."""

    def __init__(self, data):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, batch_no = key
        return {**self.data[int(index)], "batch_no": batch_no}


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Global batch b of the whole run is a fixed function of (seed, b): an epoch-seeded
    permutation, sliced for this rank. Starting at batch `start` resumes exactly where a run stopped.

    Lightning sees one long epoch of `total_batches`; epochs of the data are internal.
    """

    def __init__(self, n_examples: int, batch_size: int, total_batches: int, seed: int,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1, start: int = 0):
        self.global_batch = batch_size * world_size
        if n_examples < self.global_batch:
            raise ValueError(f"{n_examples} examples cannot fill one batch of {self.global_batch}")
        self.n, self.batch_size, self.total, self.seed = n_examples, batch_size, total_batches, seed
        self.shuffle, self.rank, self.world_size, self.start = shuffle, rank, world_size, start
        self.per_epoch = n_examples // self.global_batch
        self._order: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.total

    def epoch_order(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            order = (
                torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
                if self.shuffle else torch.arange(self.n)
            )
            self._order = (epoch, order)
        return self._order[1]

    def __iter__(self):
        for b in range(self.start, self.total):
            epoch, position = divmod(b, self.per_epoch)
            first = position * self.global_batch + self.rank * self.batch_size
            indices = self.epoch_order(epoch)[first : first + self.batch_size]
            # The collator seeds its masks from this key: per global batch and per rank.
            key = b * self.world_size + self.rank
            yield [(int(i), key) for i in indices]
