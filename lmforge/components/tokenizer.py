"""Tokenizer training: WordPiece for BERT, byte-level BPE for GPT, saved as Hugging Face fast tokenizers.

The `tokenizers` library learns the vocabulary; the trained vocab (and merges) are then handed to
`transformers`' own BertTokenizer / GPT2Tokenizer, so the saved folders carry exactly the
normalizer, pre-tokenizer and post-processor every BERT / GPT-2 user expects from
`AutoTokenizer.from_pretrained`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import BertTokenizer, GPT2Tokenizer, PreTrainedTokenizerBase

from lmforge.components.data import load_input
from lmforge.components.atomic import atomic_dir, write_json
from lmforge.components.config import BertTokenizerConfig, GptTokenizerConfig, TokenizerConfig
from lmforge.components.errors import LmforgeError

log = logging.getLogger(__name__)

BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
END_OF_TEXT = "<|endoftext|>"


WORD_START = "▁"  # marks a word's first piece while learning merges; never in the saved vocabulary


def train_bert_tokenizer(texts: Dataset, cfg: BertTokenizerConfig) -> BertTokenizer:
    """Learn a WordPiece vocabulary with BERT's normalizer (CJK characters split one per token),
    the same on every run.

    `tokenizers`' WordPieceTrainer is not deterministic: it numbers the `##` pieces in hash-map
    order, and those numbers break ties between equally frequent merges, so the same corpus gave a
    different vocabulary in each process (4 of 4 runs on the demo corpus; huggingface/tokenizers
    #1794, fix unreleased). Its BPE trainer without a continuation prefix is deterministic (sorted
    alphabet), so BPE learns the merges on words marked at their start instead, and the vocabulary
    is read back as WordPiece's: a piece with the mark begins a word, one without is `##` (what the
    WordPiece trainer does with its prefix)."""
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=cfg.strip_accents, lowercase=cfg.lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.BertPreTokenizer(),
        pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always", split=True),
    ])
    trainer = trainers.BpeTrainer(
        # Merges that only join the mark to a character add nothing WordPiece lacks: room for them.
        vocab_size=2 * cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=BERT_SPECIAL_TOKENS,
        show_progress=False,  # seconds of work: its bars (drawn by the Rust side) only left blank lines in logs
    )
    tok.train_from_iterator(_batches(texts), trainer=trainer, length=len(texts))
    words = pre_tokenizers.BertPreTokenizer()

    def stands_alone(ch: str) -> bool:  # punctuation, CJK: BERT's normalizer and pre-tokenizer cut it out of a word
        return len(words.pre_tokenize_str(tok.normalizer.normalize_str(f"a{ch}a"))) > 1

    return BertTokenizer(
        vocab=wordpiece_vocab(tok.get_vocab(), cfg.vocab_size, stands_alone),
        do_lower_case=cfg.lowercase,
        strip_accents=cfg.strip_accents,
        tokenize_chinese_chars=True,
        model_max_length=cfg.model_max_length,
    )


def wordpiece_vocab(bpe_vocab: dict[str, int], size: int, stands_alone) -> dict[str, int]:
    """WordPiece's vocabulary from BPE pieces learnt on start-marked words: the special tokens, every
    character as a word and, unless BERT's pre-tokenizer always stands it alone (punctuation, CJK),
    as `##` (nothing seen is unknown), then the merged pieces in the order BPE learnt them, up to
    `size` entries."""
    by_id = sorted(bpe_vocab, key=bpe_vocab.get)
    special = [t for t in by_id if t in BERT_SPECIAL_TOKENS]
    chars = sorted({c for t in by_id if t not in BERT_SPECIAL_TOKENS for c in t if c != WORD_START})
    words = [*special, *chars, *(f"##{c}" for c in chars if not stands_alone(c))]
    floor = len(words)
    for piece in by_id:
        if piece in BERT_SPECIAL_TOKENS or len(piece.lstrip(WORD_START)) < 2:
            continue
        words.append(piece[1:] if piece.startswith(WORD_START) else f"##{piece}")
    words = list(dict.fromkeys(words))
    return {w: i for i, w in enumerate(words[: max(size, floor)])}


def train_gpt_tokenizer(texts: Dataset, cfg: GptTokenizerConfig) -> GPT2Tokenizer:
    """Learn a byte-level BPE vocabulary (no unknown tokens: every byte is in the alphabet)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,  # seconds of work: its bars (drawn by the Rust side) only left blank lines in logs
    )
    tok.train_from_iterator(_batches(texts), trainer=trainer, length=len(texts))
    merges = [tuple(pair) for pair in json.loads(tok.to_str())["model"]["merges"]]
    return GPT2Tokenizer(vocab=tok.get_vocab(), merges=merges, model_max_length=cfg.model_max_length)


def _batches(texts: Dataset, size: int = 1000) -> Iterator[list[str]]:
    for start in range(0, len(texts), size):
        yield texts[start : start + size]["text"]


def tokenizer_metrics(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> dict[str, float]:
    """Unknown-token rate and tokens per whitespace-separated word on held-out text."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    n_tokens = sum(len(x) for x in ids)
    n_words = sum(len(t.split()) for t in texts)
    unk = tokenizer.unk_token_id
    # GPT-2's unk token is its end-of-text token, which never comes out of byte-level BPE on text.
    n_unk = 0 if isinstance(tokenizer, GPT2Tokenizer) else sum(x.count(unk) for x in ids)
    return {
        "vocab_size": len(tokenizer),
        "unk_rate": n_unk / max(n_tokens, 1),
        "tokens_per_word": n_tokens / max(n_words, 1),
        "heldout_texts": len(texts),
    }


def load_corpus(corpus_dir: Path, text_column: str) -> tuple[Dataset, Dataset]:
    """The corpus's train split for training and its validation split held out (ingest carves one
    for a corpus that came without, so pretraining and registration score on the same documents)."""
    if not corpus_dir.exists():
        raise LmforgeError(f"{corpus_dir}: corpus not found; run `lmforge stage ingest` first")
    data = load_input(Path(corpus_dir))
    for split in ("train", "validation"):
        if split not in data:
            raise LmforgeError(f"{corpus_dir}: corpus has no {split!r} split (found {', '.join(data)}); "
                               "expected the folder `lmforge stage ingest` writes")
    if text_column not in data["train"].column_names:
        raise LmforgeError(
            f"{corpus_dir}: corpus has no column {text_column!r} (found {', '.join(data['train'].column_names)}); "
            "set tokenizer.text_column"
        )
    train = _text_only(data["train"], text_column)
    train = train.filter(lambda t: bool(t and t.strip()), input_columns="text")
    if len(train) == 0:
        raise LmforgeError(f"{corpus_dir} [train]: empty corpus, expected at least one non-blank text")
    return train, _text_only(data["validation"], text_column)


def _text_only(ds: Dataset, column: str) -> Dataset:
    ds = ds.select_columns([column])
    return ds if column == "text" else ds.rename_column(column, "text")


def train_tokenizers(cfg: TokenizerConfig, corpus_dir: Path, out_dir: Path, metrics_path: Path) -> dict[str, Path]:
    """The `tokenizer` stage: train both tokenizers, save them to out_dir/{bert,gpt}, write metrics."""
    train, heldout = load_corpus(Path(corpus_dir), cfg.text_column)
    heldout_texts = [t for t in heldout["text"] if t and t.strip()]
    trained = {
        "bert": train_bert_tokenizer(train, cfg.bert),
        "gpt": train_gpt_tokenizer(train, cfg.gpt),
    }
    metrics, paths = {}, {}
    with contextlib.ExitStack() as saving:  # both saved before either replaces its previous version
        for name, tokenizer in trained.items():
            metrics[name] = tokenizer_metrics(tokenizer, heldout_texts)
            tokenizer.save_pretrained(str(saving.enter_context(atomic_dir(Path(out_dir) / name))))
            paths[name] = Path(out_dir) / name
            log.info("%s tokenizer: %s", name, metrics[name])
    write_json(metrics_path, metrics)
    return paths
