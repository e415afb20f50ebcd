"""Data sources (Hub, local files, built-in demo), the readers they need, and the Hub's task schemas."""

from pathlib import Path

from datasets import DatasetDict, disable_caching, load_from_disk


def load_input(path: Path) -> DatasetDict:
    """A saved dataset that a stage reads. Caching is off, so `map` and `filter` write their results
    to temporary files instead of beside the input: a stage never changes what DVC hashed as its deps."""
    disable_caching()
    return load_from_disk(str(path))
