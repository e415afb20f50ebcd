"""Data sources (Hub, local files, built-in demo), the readers they need, and the Hub's task schemas."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import DatasetDict


def load_input(path: Path) -> DatasetDict:
    """A saved dataset that a stage reads. Caching is off, so `map` and `filter` write their results
    to temporary files instead of beside the input: a stage never changes what DVC hashed as its deps."""
    from datasets import disable_caching, load_from_disk  # here: importing this package (config's tasks) stays light

    disable_caching()
    return load_from_disk(str(path))
