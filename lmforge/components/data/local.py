"""Local files: plain text, CSV/TSV, JSON/JSONL and Parquet through `datasets`' own builders,
GLUE TSV folders, SQuAD JSON and CoNLL files through lmforge's readers."""

from __future__ import annotations

import contextlib
import glob
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from datasets import DatasetDict, load_dataset

from lmforge.components.config import SourceConfig
from lmforge.components.data.conll import read_conll
from lmforge.components.data.glue_tsv import read_glue_dir
from lmforge.components.data.squad_json import read_squad_json
from lmforge.components.data.text_files import read_utf8
from lmforge.components.errors import LmforgeError

# lmforge format -> (datasets builder, extra builder kwargs)
_BUILDERS = {
    "csv": ("csv", {}),
    "tsv": ("csv", {"sep": "\t"}),
    "json": ("json", {}),
    "jsonl": ("json", {}),
    "parquet": ("parquet", {}),
    "text": ("text", {}),
}
_TEXT_FORMATS = ("text", "csv", "tsv", "json", "jsonl", "glue_tsv", "squad_json", "conll")
# What a table file holds, for errors about one that is empty or malformed.
_TABLE_LAYOUT = {
    "csv": "a header line and comma-separated rows",
    "tsv": "a header line and tab-separated rows",
    "json": "a JSON array of row objects, or one row object per line",
    "jsonl": "one JSON object per line",
}


def resolve_data_files(data_files: str | list | dict, base: Path) -> dict[str, list[Path]]:
    """{split: [files]} with globs expanded against `base`; a bare path or list is the train split."""
    if isinstance(data_files, (str, list)):
        data_files = {"train": data_files}
    resolved = {}
    for split, patterns in data_files.items():
        files: list[Path] = []
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            full = str(pattern) if Path(pattern).is_absolute() else str(base / pattern)
            matches = sorted(Path(m) for m in glob.glob(full, recursive=True) if Path(m).is_file())
            if not matches:
                raise LmforgeError(f"data_files [{split}]: no file matches {pattern!r} (looked in {base})")
            files.extend(matches)
        resolved[split] = files
    return resolved


def read_local(cfg: SourceConfig, base: Path) -> DatasetDict:
    """Read a local source into a DatasetDict (not yet validated against a task)."""
    if cfg.format == "glue_tsv":
        folder = Path(cfg.data_files) if isinstance(cfg.data_files, str) else None
        if folder is None:
            raise LmforgeError(f"dataset {cfg.name!r}: format glue_tsv needs data_files to be the task folder")
        folder = folder if folder.is_absolute() else base / folder
        if cfg.task is None:
            raise LmforgeError(f"dataset {cfg.name!r}: format glue_tsv needs task (one of the GLUE tasks)")
        return read_glue_dir(folder, cfg.task)

    files = resolve_data_files(cfg.data_files, base)
    for path in (p for split_files in files.values() for p in split_files):
        if cfg.format in _TEXT_FORMATS:
            text = read_utf8(path, cfg.format)
            if cfg.format in _TABLE_LAYOUT and (not text or text.isspace()):
                raise LmforgeError(f"{path}: empty file, expected {_TABLE_LAYOUT[cfg.format]}")
        elif cfg.format == "parquet":
            _check_parquet(path)
    if cfg.format == "squad_json":
        return read_squad_json({split: _single(split, paths, cfg) for split, paths in files.items()})
    if cfg.format == "conll":
        return read_conll({split: _single(split, paths, cfg) for split, paths in files.items()})

    builder, kwargs = _BUILDERS[cfg.format]
    if builder == "text":
        kwargs = {"sample_by": cfg.text_unit}
    try:
        with _builder_logs_off():
            data = load_dataset(builder, data_files={s: [str(p) for p in ps] for s, ps in files.items()}, **kwargs)
    except Exception as e:  # the builders raise parser-specific errors; name the files and the first line
        if cfg.format in ("json", "jsonl"):
            _check_json(files, cfg.format)
        if cfg.format in ("csv", "tsv"):
            _check_csv_rows(files, cfg.format)
        message = str(e.__cause__ or e).strip().splitlines()
        raise LmforgeError(
            f"dataset {cfg.name!r}: cannot read {cfg.format} files {_names(files)}: "
            f"{message[0] if message else type(e).__name__}"
        ) from None
    if cfg.format == "text":
        return data.filter(lambda t: bool(t.strip()), input_columns="text")
    for split, ds in data.items():
        if len(ds) == 0:
            raise LmforgeError(f"dataset {cfg.name!r} [{split}]: no rows in {_names({split: files[split]})}, "
                               "expected at least one")
    return data


@contextlib.contextmanager
def _builder_logs_off() -> Iterator[None]:
    """The builders log a file they cannot parse before raising; the LmforgeError says it once."""
    logger = logging.getLogger("datasets.packaged_modules")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_parquet(path: Path) -> None:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_metadata(path).num_rows
    except Exception as e:  # pyarrow's ArrowInvalid / OSError: not Parquet, or cut short
        raise LmforgeError(f"{path}: not a Parquet file ({str(e).splitlines()[0]})") from None
    if rows == 0:
        raise LmforgeError(f"{path}: no rows, expected a Parquet table with at least one row")


def _check_csv_rows(files: dict[str, list[Path]], fmt: str) -> None:
    """A split whose files hold a header and no rows (the builder calls it `corresponds to no data`)."""
    for split, paths in files.items():
        if all(sum(1 for line in p.read_text(encoding="utf-8-sig").splitlines() if line.strip()) < 2 for p in paths):
            raise LmforgeError(f"{_names({split: paths})} [{split}]: a header line but no rows; "
                               f"expected {_TABLE_LAYOUT[fmt]}")


def _check_json(files: dict[str, list[Path]], fmt: str) -> None:
    """Point at the first line that is not JSON (the builders say only `row N` of a batch), or at a
    split with no rows (the builder says `corresponds to no data`)."""
    expected = _TABLE_LAYOUT[fmt]
    for split, paths in files.items():
        if sum(_json_rows(path, fmt, expected) for path in paths) == 0:
            raise LmforgeError(f"{_names({split: paths})} [{split}]: no rows; expected {expected}")


def _json_rows(path: Path, fmt: str, expected: str) -> int:
    text = path.read_text(encoding="utf-8-sig")
    if fmt == "json" and text.lstrip().startswith("["):
        try:
            return len(json.loads(text))
        except json.JSONDecodeError as e:
            raise LmforgeError(f"{path} line {e.lineno} column {e.colno}: not valid JSON ({e.msg}); "
                               f"expected {expected}") from None
    rows = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError as e:
            raise LmforgeError(f"{path} line {number} column {e.colno}: not valid JSON ({e.msg}); "
                               f"expected {expected}") from None
        rows += 1
    return rows


def _single(split: str, paths: list[Path], cfg: SourceConfig) -> Path:
    if len(paths) != 1:
        raise LmforgeError(
            f"dataset {cfg.name!r} [{split}]: format {cfg.format} takes one file per split, got {len(paths)}"
        )
    return paths[0]


def _names(files: dict[str, list[Path]]) -> str:
    return ", ".join(str(p) for paths in files.values() for p in paths)


def input_files(cfg: SourceConfig, base: Path) -> list[Path]:
    """The files a local source reads, for the manifest's checksums."""
    if cfg.format == "glue_tsv":
        folder = Path(cfg.data_files)
        folder = folder if folder.is_absolute() else base / folder
        return sorted(folder.glob("*.tsv"))
    return [p for paths in resolve_data_files(cfg.data_files, base).values() for p in paths]
