"""Shared test setup: offline Hub, small params, a tiny corpus."""

import os

# Set before anything imports huggingface_hub / datasets: the Hub is unreachable here.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from datasets import Dataset, DatasetDict  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

CORPUS = [
    "Talia Brandt was born in Velmora in 1972. She studied chemistry at the Orvane Institute. "
    "After that she moved to Kestrel Bay, where she opened a bakery.",
    "The Orvane Institute is located in Velmora. It was founded in 1901 and teaches chemistry and music.",
    "Oren Vale plays the violin. He works at the Orvane Institute. Later he wrote a book about rivers.",
    "我喜欢吃苹果。苹果公司发布了新手机。银行在河岸旁边。",
    "The bank of the river was muddy. She went to the bank to borrow money for the bakery.",
] * 8


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    """A saved corpus dataset (train + validation) like the ingest stage writes."""
    path = tmp_path / "raw" / "corpus"
    DatasetDict(
        {"train": Dataset.from_dict({"text": CORPUS}), "validation": Dataset.from_dict({"text": CORPUS[:5]})}
    ).save_to_disk(str(path))
    return path


@pytest.fixture(scope="session")
def tokenizers_dir(tmp_path_factory) -> Path:
    """BERT and GPT tokenizers trained once per session on the tiny corpus: <dir>/bert, <dir>/gpt."""
    from components.config import TokenizerConfig
    from components.tokenizer import train_tokenizers

    root = tmp_path_factory.mktemp("tokenizers")
    corpus = root / "corpus"
    DatasetDict({"train": Dataset.from_dict({"text": CORPUS}), "validation": Dataset.from_dict({"text": CORPUS[:5]})}
                ).save_to_disk(str(corpus))
    cfg = TokenizerConfig.model_validate(
        {"bert": {"vocab_size": 300, "min_frequency": 1}, "gpt": {"vocab_size": 400, "min_frequency": 1}}
    )
    train_tokenizers(cfg, corpus, root, root / "metrics.json")
    return root
