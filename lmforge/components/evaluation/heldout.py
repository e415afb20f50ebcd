"""Held-out scores of a pretrained model that do not depend on its tokenizer.

The registry's gate compares a new pretrained model with the champion on today's held-out
documents, and a retrained model usually comes with a retrained tokenizer: a per-token loss of
two vocabularies is not the same quantity. So the scores count in units of the text itself:

- BERT: masked *word* accuracy. The words (as BERT's normalizer and pre-tokenizer cut them, a CJK
  character being a word) chosen for masking depend only on the text and the seed; every piece of
  a chosen word is masked, and the word counts as right when every piece is predicted.
- GPT: bits per byte of UTF-8 text (the total negative log-likelihood, in bits, over the bytes),
  i.e. log2 of the per-byte perplexity; each document starts after end-of-text and ends with it,
  as pretraining joins them, in windows of `block_size` tokens.
- seq2seq: restored word accuracy. Spans of words (cut as BERT's pre-tokenizer does) are masked as
  text infilling masks spans of tokens; a masked word counts as restored when every token of it is.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import torch
import torch.nn.functional as F

BATCH = 32


def masked_word_accuracy(model_dir: Path, texts: list[str], max_seq_length: int, probability: float = 0.15,
                         seed: int = 0) -> dict[str, float]:
    """{masked_word_accuracy, masked_words}: BERT's fill-in of whole masked words on `texts`."""
    from tokenizers import normalizers, pre_tokenizers
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForMaskedLM.from_pretrained(str(model_dir), use_safetensors=True).eval()
    # BERT's own cut into words (CJK characters apart), the same whatever vocabulary follows it.
    normalize = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                           lowercase=False)
    split = pre_tokenizers.BertPreTokenizer()
    # Words per window: a word is one to a few pieces, and [CLS] [SEP] take two positions.
    per_window = max(1, (max_seq_length - 2) // 2)
    windows = []  # (words, indices of the masked words)
    for n, text in enumerate(texts):
        words = [w for w, _ in split.pre_tokenize_str(normalize.normalize_str(text))]
        rng = random.Random(f"{seed}/{n}")
        for start in range(0, len(words), per_window):
            chunk = words[start:start + per_window]
            masked = [i for i in range(len(chunk)) if rng.random() < probability]
            if masked:
                windows.append((chunk, masked))
    correct = total = 0
    for start in range(0, len(windows), BATCH):
        batch = windows[start:start + BATCH]
        enc = tokenizer([w for w, _ in batch], is_split_into_words=True, truncation=True, max_length=max_seq_length,
                        padding=True, return_tensors="pt")
        inputs = enc["input_ids"].clone()
        pieces = []  # per window: {masked word: its token positions}
        for row, (_, masked) in enumerate(batch):
            word_ids = enc.word_ids(row)
            where = {w: [p for p, wid in enumerate(word_ids) if wid == w] for w in masked}
            for positions in where.values():
                inputs[row, positions] = tokenizer.mask_token_id
            pieces.append(where)
        with torch.inference_mode():
            predicted = model(input_ids=inputs, attention_mask=enc["attention_mask"],
                              token_type_ids=enc.get("token_type_ids")).logits.argmax(-1)
        for row, where in enumerate(pieces):
            for positions in where.values():
                total += 1
                # A word cut off by truncation has no positions: the model never saw it, so it is wrong.
                correct += bool(positions) and bool((predicted[row, positions] == enc["input_ids"][row, positions]).all())
    return {"masked_word_accuracy": correct / max(total, 1), "masked_words": total}


def bits_per_byte(model_dir: Path, texts: list[str], block_size: int) -> dict[str, float]:
    """{bits_per_byte, token_perplexity, bytes}: GPT's held-out negative log-likelihood per byte."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), use_safetensors=True).eval()
    block = min(block_size, model.config.n_positions)
    eos = tokenizer.eos_token_id
    windows = []
    n_bytes = 0
    for ids, text in zip(tokenizer(texts, add_special_tokens=False)["input_ids"], texts):
        stream = [eos, *ids, eos]
        n_bytes += len(text.encode("utf-8"))
        # Each window predicts its tokens after the first: consecutive windows share one token.
        windows += [stream[i:i + block + 1] for i in range(0, len(stream) - 1, block)]
    nll, tokens = 0.0, 0
    for start in range(0, len(windows), BATCH):
        batch = windows[start:start + BATCH]
        width = max(len(w) for w in batch)
        ids = torch.tensor([w + [eos] * (width - len(w)) for w in batch])
        mask = torch.tensor([[1] * len(w) + [0] * (width - len(w)) for w in batch])
        with torch.inference_mode():
            logits = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1]).logits
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        nll += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100,
                               reduction="sum").item()
        tokens += int((targets != -100).sum())
    return {"bits_per_byte": nll / math.log(2) / max(n_bytes, 1), "token_perplexity": math.exp(nll / max(tokens, 1)),
            "bytes": n_bytes}


# Words as the seq2seq scorer cuts them: a CJK character apart, as BERT's pre-tokenizer does, else
# runs of letters and digits, and each other symbol.
WORDS = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|\w+|[^\w\s]")


def restored_word_accuracy(model_dir: Path, texts: list[str], max_seq_length: int, rate: float = 0.3,
                           span_lambda: float = 3.0, seed: int = 0) -> dict[str, float]:
    """{restored_word_accuracy, masked_words}: a seq2seq model restoring text infilled at the word level.

    Spans of Poisson(span_lambda) words, covering `rate` of each window's words, chosen by the text
    and the seed alone, each become one <mask>; the decoder, fed the original (teacher forcing),
    restores a masked word when it predicts every token of it.
    """
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from lmforge.components.pretraining.corruptions import infill

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir), use_safetensors=True).eval()
    per_window = max(1, (max_seq_length - 2) // 2)  # a word is one to a few tokens
    windows = []  # (corrupted text, original text, char spans of its masked words)
    for n, text in enumerate(texts):
        rng = random.Random(f"{seed}/{n}")
        spans = [m.span() for m in WORDS.finditer(text)]
        for first in range(0, len(spans), per_window):
            chunk = spans[first:first + per_window]
            start = chunk[0][0]
            words = [text[(chunk[i - 1][1] if i else start):end] for i, (_, end) in enumerate(chunk)]  # with the space before
            kept = infill(list(range(len(chunk))), rate, -1, rng, span_lambda)
            masked = sorted(set(range(len(chunk))) - set(kept))
            if masked:
                noisy = "".join(" " + tokenizer.mask_token if i == -1 else words[i] for i in kept).strip()
                windows.append((noisy, text[start:chunk[-1][1]], [(s - start, e - start) for s, e in
                                                                  (chunk[i] for i in masked)]))
    correct = total = 0
    for first in range(0, len(windows), BATCH):
        batch = windows[first:first + BATCH]
        enc = tokenizer([w[0] for w in batch], truncation=True, max_length=max_seq_length, padding=True,
                        return_tensors="pt")
        target = tokenizer([w[1] for w in batch], truncation=True, max_length=max_seq_length, padding=True,
                           return_tensors="pt", return_offsets_mapping=True)
        labels = target["input_ids"].masked_fill(target["attention_mask"] == 0, -100)
        with torch.inference_mode():
            predicted = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                              decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels=labels)
                              ).logits.argmax(-1)
        right = predicted == labels
        for row, (_, _, words) in enumerate(batch):
            offsets = target["offset_mapping"][row].tolist()
            live = labels[row] != -100
            for s, e in words:
                positions = [p for p, (a, b) in enumerate(offsets) if live[p] and b > a and a < e and b > s]
                total += 1
                # A word cut off by truncation has no tokens: the model never wrote it, so it is wrong.
                correct += bool(positions) and bool(right[row, positions].all())
    return {"restored_word_accuracy": correct / max(total, 1), "masked_words": total}
