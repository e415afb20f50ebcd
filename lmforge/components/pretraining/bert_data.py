"""BERT pretraining examples: `[CLS] A [SEP] B [SEP]` packed from consecutive sentences of a document.

Follows the original BERT data builder (`create_instances_from_document`): sentences are
accumulated up to a target length (shorter with `short_seq_prob`), split at a random sentence
boundary into A and B, and B is
- `nsp`: the true continuation, or (50%) sentences from another document (label 1 = random);
- `sop`: the true continuation, or (50%) A and B swapped (label 1 = swapped), as in ALBERT;
- `none`: no B; the corpus's tokens packed into full rows across document boundaries, a [SEP]
  between documents (as RoBERTa packs them; masked LM only). Packing within one document, as for
  the pair objectives, left the demo world's short documents at 62 tokens a row padded to 86: a
  third of each step spent on padding and short rows (measured, mini BERT).
"""

from __future__ import annotations

import random
import re

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

# A sentence ends at . ! ? (or the CJK full stop) followed by space or the end of the text.
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|(?<=[。！？])")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def build_bert_examples(
    corpus: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    objective: str,
    short_seq_prob: float,
    seed: int,
    num_proc: int = 1,
) -> Dataset:
    """Tokenize a corpus of documents (column `text`) into pretraining examples.

    Columns: input_ids, token_type_ids, and next_sentence_label unless the objective is 'none'.
    """
    def batch_to_examples(batch: dict, indices: list[int]) -> dict:
        rng = random.Random(seed * 1_000_003 + indices[0])
        documents = [split_sentences(text) for text in batch["text"]]
        flat = [s for doc in documents for s in doc]
        ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
        tokenized, start = [], 0
        for doc in documents:
            tokenized.append([x for x in ids[start : start + len(doc)] if x])
            start += len(doc)
        out = {"input_ids": [], "token_type_ids": []}
        if objective == "none":
            for chunk in _packed(tokenized, max_seq_length - 2, short_seq_prob, rng, tokenizer.sep_token_id):
                out["input_ids"].append([tokenizer.cls_token_id, *chunk, tokenizer.sep_token_id])
                out["token_type_ids"].append([0] * (len(chunk) + 2))
            return out
        out["next_sentence_label"] = []
        for d in range(len(tokenized)):
            for a, b, label in _document_pairs(tokenized, d, max_seq_length, objective, short_seq_prob, rng):
                out["input_ids"].append([tokenizer.cls_token_id, *a, tokenizer.sep_token_id, *b, tokenizer.sep_token_id])
                out["token_type_ids"].append([0] * (len(a) + 2) + [1] * (len(b) + 1))
                out["next_sentence_label"].append(label)
        return out

    return corpus.map(
        batch_to_examples,
        batched=True,
        batch_size=500,
        with_indices=True,
        remove_columns=corpus.column_names,
        num_proc=num_proc if num_proc > 1 else None,
        desc=f"BERT examples ({objective})",
    )


def _packed(docs: list[list[list[int]]], max_tokens: int, short_seq_prob: float, rng, sep: int):
    """Yield rows of the corpus's tokens in order, max_tokens each (a shorter target with
    short_seq_prob), crossing document boundaries with a [SEP] between documents. Rows are cut
    mid-sentence, as run_mlm.py's group_texts cuts them: rows of whole sentences end short, so
    every batch carries padding, and a padded batch takes SDPA's masked path on CPU (~20 % slower
    a step, measured on the mini BERT)."""
    def target():
        return rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens

    chunk, goal = [], target()
    for doc in docs:
        if chunk:
            chunk.append(sep)
        for sentence in doc:
            chunk.extend(sentence)
            while len(chunk) >= goal:
                row, chunk = chunk[:goal], chunk[goal:]
                if chunk[:1] == [sep]:  # a document ended with the row: the next starts with the next document
                    chunk = chunk[1:]
                yield row  # ending in a document's [SEP] if the document ended one short of the row
                goal = target()
    if chunk:
        yield chunk


def _document_pairs(docs, d, max_seq_length, objective, short_seq_prob, rng):
    """Yield (tokens_a, tokens_b, label) for document d (objective nsp or sop), consuming its
    sentences in order."""
    doc = docs[d]
    max_tokens = max_seq_length - 3
    target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
    chunk, length, i = [], 0, 0
    while i < len(doc):
        chunk.append(doc[i])
        length += len(doc[i])
        if i == len(doc) - 1 or length >= target:
            unused = yield from _emit_pair(docs, d, chunk, target, max_tokens, objective, rng)
            i -= unused  # sentences not used by a random B go back into the document
            chunk, length = [], 0
            target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
        i += 1


def _emit_pair(docs, d, chunk, target, max_tokens, objective, rng):
    a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
    a = [t for s in chunk[:a_end] for t in s]
    b = [t for s in chunk[a_end:] for t in s]
    label, unused = 0, 0
    if objective == "nsp" and (not b or rng.random() < 0.5) and len(docs) > 1:
        label, b = 1, _random_segment(docs, d, max(1, target - len(a)), rng)
        unused = len(chunk) - a_end
    elif objective == "sop":
        if not b:  # one long sentence: split it so both orders exist
            cut = max(1, len(a) // 2)
            a, b = a[:cut], a[cut:]
        if b and rng.random() < 0.5:
            label, a, b = 1, b, a
    a, b = _truncate_pair(a, b, max_tokens, rng)
    if a and b:
        yield a, b, label
    return unused


def _random_segment(docs, d, target, rng) -> list[int]:
    other = d
    while other == d:
        other = rng.randrange(len(docs))
    doc = docs[other]
    if not doc:
        return []
    tokens = []
    for sentence in doc[rng.randrange(len(doc)) :]:
        tokens.extend(sentence)
        if len(tokens) >= target:
            break
    return tokens


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng) -> tuple[list[int], list[int]]:
    """Trim the longer segment, from the front or the back at random, until the pair fits."""
    a, b = list(a), list(b)
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()
    return a, b
