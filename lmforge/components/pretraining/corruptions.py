"""BART's corruptions of a document (Lewis et al. 2019, section 2.2), as pure functions of token ids.

Each takes the ids of one document chunk (no <s> or </s>) and a `random.Random`, and returns the
corrupted ids; the caller seeds the generator, so the same (seed, example) gives the same noise on
every run and every resumption. The decoder is always asked for the original, uncorrupted ids.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection

from lmforge.components.config import CORRUPTIONS, CorruptionConfig

# Sentence-final punctuation, as the last character of a byte-level token (the Chinese full stop too).
SENTENCE_FINAL = (".", "!", "?", "。", "！", "？")


def mask_tokens(ids: list[int], rate: float, mask_id: int, rng: random.Random) -> list[int]:
    """round(rate * len) tokens, chosen at random, become `mask_id`."""
    chosen = set(rng.sample(range(len(ids)), round(rate * len(ids))))
    return [mask_id if i in chosen else t for i, t in enumerate(ids)]


def delete_tokens(ids: list[int], rate: float, rng: random.Random) -> list[int]:
    """round(rate * len) tokens, chosen at random, are removed: the model must also find where."""
    chosen = set(rng.sample(range(len(ids)), round(rate * len(ids))))
    return [t for i, t in enumerate(ids) if i not in chosen]


def poisson(lam: float, rng: random.Random) -> int:
    """A draw from Poisson(lam) (Knuth's method: exact, and quick for BART's lambda of 3)."""
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def span_lengths(n_tokens: int, rate: float, lam: float, rng: random.Random) -> list[int]:
    """Poisson(lam) span lengths, drawn until they cover round(rate * n_tokens) tokens (the last cut to fit)."""
    target = round(rate * n_tokens)
    lengths, covered = [], 0
    while covered < target:
        length = min(poisson(lam, rng), target - covered)
        lengths.append(length)
        covered += length
    return lengths


def infill(ids: list[int], rate: float, mask_id: int, rng: random.Random, lam: float = 3.0) -> list[int]:
    """Text infilling: spans of Poisson(lam) length, covering `rate` of the tokens, each become ONE
    `mask_id`; a span of length 0 inserts a mask. The model must also say how many tokens are missing."""
    lengths = span_lengths(len(ids), rate, lam, rng)
    kept = len(ids) - sum(lengths)
    # Where each span sits among the kept tokens: a uniform draw of the gaps, spans apart by construction.
    cuts = sorted(rng.randint(0, kept) for _ in lengths)
    out, i, kept_so_far = [], 0, 0
    for cut, length in zip(cuts, lengths):
        out += ids[i:i + cut - kept_so_far]
        i += cut - kept_so_far
        kept_so_far = cut
        out.append(mask_id)
        i += length
    return out + ids[i:]


def sentences(ids: list[int], end_ids: Collection[int]) -> list[list[int]]:
    """The chunk cut after every sentence-final token; a tail without one is a sentence too."""
    out, current = [], []
    for t in ids:
        current.append(t)
        if t in end_ids:
            out.append(current)
            current = []
    return out + ([current] if current else [])


def permute_sentences(ids: list[int], end_ids: Collection[int], rng: random.Random) -> list[int]:
    """Sentence permutation: the sentences (cut after any of `end_ids`) in a random order."""
    parts = sentences(ids, end_ids)
    rng.shuffle(parts)
    return [t for part in parts for t in part]


def rotate(ids: list[int], rng: random.Random) -> list[int]:
    """Document rotation: the chunk starts at a random token other than its first, and wraps around."""
    if len(ids) < 2:
        return list(ids)
    start = rng.randrange(1, len(ids))
    return ids[start:] + ids[:start]


def choose(cfg: CorruptionConfig, rng: random.Random) -> str:
    """One corruption, drawn in proportion to the mix's weights."""
    return rng.choices(CORRUPTIONS, weights=[getattr(cfg.mix, name) for name in CORRUPTIONS])[0]


def corrupt(ids: list[int], cfg: CorruptionConfig, mask_id: int, end_ids: Collection[int], rng: random.Random,
            kind: str | None = None) -> list[int]:
    """The encoder's input for one chunk: the corruption `kind`, or one drawn from the mix."""
    kind = kind or choose(cfg, rng)
    if kind == "mask":
        return mask_tokens(ids, cfg.mask_rate, mask_id, rng)
    if kind == "delete":
        return delete_tokens(ids, cfg.delete_rate, rng)
    if kind == "infill":
        return infill(ids, cfg.infill_rate, mask_id, rng, cfg.span_lambda)
    if kind == "permute":
        return permute_sentences(ids, end_ids, rng)
    if kind == "rotate":
        return rotate(ids, rng)
    raise ValueError(f"unknown corruption {kind!r}; expected one of {', '.join(CORRUPTIONS)}")


def sentence_end_ids(tokenizer) -> set[int]:
    """The ids of tokens that end a sentence: their text ends in sentence-final punctuation."""
    ends = set()
    for token, index in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token]).strip()
        if text.endswith(SENTENCE_FINAL) and index not in tokenizer.all_special_ids:
            ends.add(index)
    return ends
