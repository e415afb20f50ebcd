"""GPT pretraining examples: documents joined with the end-of-text token, cut into equal blocks."""

from __future__ import annotations

from datasets import Dataset
from transformers import PreTrainedTokenizerBase


def build_gpt_blocks(corpus: Dataset, tokenizer: PreTrainedTokenizerBase, block_size: int, num_proc: int = 1) -> Dataset:
    """Every document followed by <|endoftext|>, concatenated, cut into `block_size` blocks.

    As `run_clm.py`'s group_texts: no padding; the tail of each batch of 1000 documents that does
    not fill a block is dropped.
    """
    eos = tokenizer.eos_token_id

    def to_blocks(batch: dict) -> dict:
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        stream = [t for doc in ids for t in (*doc, eos)]
        usable = len(stream) // block_size * block_size
        return {"input_ids": [stream[i : i + block_size] for i in range(0, usable, block_size)]}

    return corpus.map(
        to_blocks,
        batched=True,
        batch_size=1000,
        remove_columns=corpus.column_names,
        num_proc=num_proc if num_proc > 1 else None,
        desc=f"GPT blocks of {block_size}",
    )
