import json

import pytest
from transformers import AutoTokenizer

from lmforge.components.config import TokenizerConfig
from lmforge.components.errors import LmforgeError
from lmforge.components.tokenizer import train_tokenizers


@pytest.fixture
def trained(tiny_corpus, tmp_path):
    cfg = TokenizerConfig.model_validate(
        {"bert": {"vocab_size": 300, "min_frequency": 1}, "gpt": {"vocab_size": 400, "min_frequency": 1}}
    )
    metrics = tmp_path / "reports" / "tokenizer.json"
    paths = train_tokenizers(cfg, tiny_corpus, tmp_path / "tok", metrics)
    return paths, json.loads(metrics.read_text())


def test_bert_tokenizer_loads_with_bert_special_tokens_and_pair_template(trained):
    (paths, _) = trained
    tok = AutoTokenizer.from_pretrained(paths["bert"])
    assert type(tok).__name__ == "BertTokenizer"
    for special in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]:
        assert special in tok.get_vocab()
    assert (tok.pad_token, tok.mask_token, tok.cls_token) == ("[PAD]", "[MASK]", "[CLS]")
    enc = tok("Talia was born.", "She studied chemistry.")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    first_sep = tokens.index("[SEP]")
    assert enc["token_type_ids"] == [0] * (first_sep + 1) + [1] * (len(tokens) - first_sep - 1)


def test_bert_round_trip_lowercases_and_splits_cjk_per_character(trained):
    (paths, _) = trained
    tok = AutoTokenizer.from_pretrained(paths["bert"])
    text = "Talia Brandt studied chemistry in Velmora."
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text.lower()
    chinese = "我喜欢吃苹果"
    tokens = tok.tokenize(chinese)
    assert tokens == list(chinese)  # every character seen in training is its own token
    assert tok.decode(tok(chinese)["input_ids"], skip_special_tokens=True).replace(" ", "") == chinese


def test_gpt_tokenizer_is_lossless_byte_level_with_end_of_text(trained):
    (paths, _) = trained
    tok = AutoTokenizer.from_pretrained(paths["gpt"])
    assert type(tok).__name__ == "GPT2Tokenizer"
    assert tok.eos_token == "<|endoftext|>" and tok.convert_tokens_to_ids("<|endoftext|>") == 0
    for text in ["Talia Brandt studied chemistry in Velmora.", "我喜欢吃苹果。", "unseen: ẞ ☃ 🚀 \t tabs"]:
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text
    assert "token_type_ids" not in tok("hello")


def test_metrics_report_vocab_unknown_rate_and_fertility(trained):
    (paths, metrics) = trained
    # vocab_size is a ceiling: a small corpus runs out of pairs to merge before it.
    assert metrics["bert"]["vocab_size"] == len(AutoTokenizer.from_pretrained(paths["bert"])) <= 300
    assert metrics["gpt"]["vocab_size"] == len(AutoTokenizer.from_pretrained(paths["gpt"])) == 400
    assert metrics["gpt"]["unk_rate"] == 0.0
    assert 0.0 <= metrics["bert"]["unk_rate"] < 0.05  # held-out text comes from the same distribution
    assert metrics["bert"]["tokens_per_word"] >= 1.0
    assert metrics["bert"]["heldout_texts"] == 5


def test_empty_corpus_and_missing_column_fail_clearly(tmp_path):
    from datasets import Dataset, DatasetDict

    empty = tmp_path / "empty"
    DatasetDict({"train": Dataset.from_dict({"text": ["  ", "\n"]})}).save_to_disk(str(empty))
    with pytest.raises(LmforgeError, match=r"no 'validation' split \(found train\); expected the folder `lmforge "
                                           r"stage ingest` writes"):  # ingest carves one for every corpus
        train_tokenizers(TokenizerConfig(), empty, tmp_path / "tok", tmp_path / "m.json")
    DatasetDict({s: Dataset.from_dict({"text": ["  ", "\n"]}) for s in ("train", "validation")}).save_to_disk(str(empty))
    with pytest.raises(LmforgeError, match=r"empty \[train\]|\[train\]: empty corpus"):
        train_tokenizers(TokenizerConfig(), empty, tmp_path / "tok", tmp_path / "m.json")
    with pytest.raises(LmforgeError, match="no column 'body'"):
        train_tokenizers(TokenizerConfig(text_column="body"), empty, tmp_path / "tok", tmp_path / "m.json")
    assert not (tmp_path / "tok").exists() and not (tmp_path / "m.json").exists()


def test_training_leaves_the_corpus_folder_untouched(tiny_corpus, tmp_path):
    """DVC hashes the corpus as a dependency: a stage that wrote cache files into it would rerun forever."""
    before = sorted(str(p.relative_to(tiny_corpus)) for p in tiny_corpus.rglob("*"))
    train_tokenizers(TokenizerConfig(), tiny_corpus, tmp_path / "tok", tmp_path / "m.json")
    assert sorted(str(p.relative_to(tiny_corpus)) for p in tiny_corpus.rglob("*")) == before


def test_the_same_corpus_gives_the_same_bert_vocabulary_in_every_process(tmp_path):
    """`tokenizers`' WordPieceTrainer numbered its `##` pieces in hash-map order, which differs per
    process, and broke ties between merges by those numbers: the same corpus gave another vocabulary
    on each run (huggingface/tokenizers#1794), so `dvc repro` after any change retrained everything
    downstream on a different tokenizer."""
    import subprocess
    import sys

    from lmforge.components.config import DemoConfig
    from lmforge.components.data.demo import build_demo

    build_demo(DemoConfig(entities=20, corpus_documents=300))["corpus"].save_to_disk(str(tmp_path / "corpus"))
    script = ("import hashlib, json, sys; from datasets import load_from_disk; "
              "from lmforge.components.config import BertTokenizerConfig; "
              "from lmforge.components.tokenizer import train_bert_tokenizer; "
              "t = train_bert_tokenizer(load_from_disk(sys.argv[1])['train'], BertTokenizerConfig(vocab_size=2000)); "
              "print(json.dumps(t.get_vocab(), sort_keys=True))")
    vocabs = [subprocess.run([sys.executable, "-c", script, str(tmp_path / "corpus")], capture_output=True, text=True,
                             check=True).stdout for _ in range(3)]
    assert vocabs[0] == vocabs[1] == vocabs[2]
    vocab = json.loads(vocabs[0])
    assert len(vocab) > 500 and "##" not in "".join(w for w in vocab if not w.startswith("##"))
    assert "▁" not in "".join(vocab)  # the word-start mark used while learning never reaches the vocabulary
