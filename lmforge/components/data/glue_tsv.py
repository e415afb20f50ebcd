"""GLUE's TSV files as distributed in `glue_data/<TASK>/` (by `download_glue_data.py`), as the Hub's rows.

The mapping follows the Hub's `glue.py` loading script: same columns, label ids, split names, and
`idx` = the row's number in its file (rows the Hub skips keep their number, so `idx` may have gaps).
Hidden test labels are -1 (STS-B: -1.0), whatever a test file holds.

The files' quirks, each handled here:
- text holds bare `"` (never a quoting character): read with `csv.QUOTE_NONE`, so one line is one row;
- CoLA train/dev have no header: source, label, author's mark, sentence (CoLA test has a header);
- MRPC's train/dev start with a UTF-8 byte-order mark, copied from Microsoft's files;
- MNLI has matched and mismatched dev/test files, and string labels, as have QNLI and RTE;
- some real QQP rows have too few fields (a question broken over two lines): skipped as the Hub
  does, and reported. In any other task a short row is an error.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, DatasetDict

from lmforge.components.data.schemas import GLUE_TASKS, validate
from lmforge.components.errors import LmforgeError

log = logging.getLogger(__name__)

COLA_COLUMNS = ("source", "label", "mark", "sentence")  # CoLA train/dev carry no header


@dataclass(frozen=True)
class GlueFiles:
    folder: str  # the folder name in glue_data/, as the task is spelled in error messages
    text: dict[str, str]  # Hub column -> the file's column
    label: str  # the file's label column (absent from test files)
    label_values: tuple[str, ...] | None  # spelling of label id 0, 1, ... in the file; None: a score

    def needs(self, is_test: bool) -> list[str]:
        return [*([] if is_test else [self.label]), *self.text.values()]


BINARY = ("0", "1")
GLUE_FILES: dict[str, GlueFiles] = {
    "cola": GlueFiles("CoLA", {"sentence": "sentence"}, "label", BINARY),
    "sst2": GlueFiles("SST-2", {"sentence": "sentence"}, "label", BINARY),
    "mrpc": GlueFiles("MRPC", {"sentence1": "#1 String", "sentence2": "#2 String"}, "Quality", BINARY),
    "qqp": GlueFiles("QQP", {"question1": "question1", "question2": "question2"}, "is_duplicate", BINARY),
    "stsb": GlueFiles("STS-B", {"sentence1": "sentence1", "sentence2": "sentence2"}, "score", None),
    "mnli": GlueFiles(
        "MNLI", {"premise": "sentence1", "hypothesis": "sentence2"}, "gold_label", GLUE_TASKS["mnli"].label_names
    ),
    "qnli": GlueFiles(
        "QNLI", {"question": "question", "sentence": "sentence"}, "label", GLUE_TASKS["qnli"].label_names
    ),
    "rte": GlueFiles(
        "RTE", {"sentence1": "sentence1", "sentence2": "sentence2"}, "label", GLUE_TASKS["rte"].label_names
    ),
    "wnli": GlueFiles("WNLI", {"sentence1": "sentence1", "sentence2": "sentence2"}, "label", BINARY),
}


def split_files(task: str) -> dict[str, str]:
    """Hub split name -> file name in glue_data/<TASK>/."""
    if task == "mnli":
        return {
            "train": "train.tsv",
            "validation_matched": "dev_matched.tsv",
            "validation_mismatched": "dev_mismatched.tsv",
            "test_matched": "test_matched.tsv",
            "test_mismatched": "test_mismatched.tsv",
        }
    return {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}


def read_glue_dir(folder: Path, task: str, warnings: list[str] | None = None) -> DatasetDict:
    """Read one task's folder of GLUE TSV files into the Hub's splits, columns and labels.

    Only splits whose files exist are returned; train.tsv is required. Rows skipped as the Hub
    skips them are logged and, when `warnings` is given, described there.
    """
    folder, task = Path(folder), task.lower().replace("-", "")
    if task not in GLUE_FILES:
        raise LmforgeError(f"GLUE task {task!r}: unknown, expected one of {', '.join(GLUE_FILES)}")
    files = split_files(task)
    expected = f"expected glue_data/{GLUE_FILES[task].folder}/ holding {', '.join(files.values())}"
    if not folder.is_dir():
        raise LmforgeError(f"{folder}: not a folder; {expected}")
    if not (folder / "train.tsv").is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise LmforgeError(f"{folder}: no train.tsv (found {found}); {expected}")
    data = DatasetDict(
        {
            split: _read_split(folder / name, task, split, warnings)
            for split, name in files.items()
            if (folder / name).is_file()
        }
    )
    validate(data, task, str(folder))
    return data


def _read_split(path: Path, task: str, split: str, warnings: list[str] | None) -> Dataset:
    spec, is_test = GLUE_FILES[task], split.startswith("test")
    rows = _tsv_rows(path)
    if task == "cola" and not is_test:
        columns = list(COLA_COLUMNS)
    else:
        header = next(rows, None)
        if header is None:
            raise LmforgeError(f"{path}: empty file, expected a header line and rows")
        columns = header[1]
    needs = spec.needs(is_test)
    missing = [c for c in needs if c not in columns]
    if missing:
        raise LmforgeError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
            f"({spec.folder} needs {', '.join(needs)}; found {', '.join(columns)})"
        )
    at = {c: columns.index(c) for c in needs}
    width = max(at.values()) + 1

    out: dict[str, list] = {col: [] for col in (*spec.text, "label", "idx")}
    short_lines = []
    for idx, (line, fields) in enumerate(rows):
        if len(fields) < width:
            if task != "qqp":
                raise LmforgeError(
                    f"{path} line {line}: {len(fields)} tab-separated fields, expected {len(columns)} "
                    f"({', '.join(columns)})"
                )
            short_lines.append(line)
            continue
        for hub_col, file_col in spec.text.items():
            out[hub_col].append(fields[at[file_col]])
        label = -1 if is_test else _label(fields[at[spec.label]], spec, path, line)
        out["label"].append(float(label) if spec.label_values is None else label)
        out["idx"].append(idx)

    if short_lines:
        shown = ", ".join(map(str, short_lines[:10])) + (", ..." if len(short_lines) > 10 else "")
        message = (
            f"{path}: skipped {len(short_lines)} malformed row(s) with too few fields, as the Hub does (lines {shown})"
        )
        log.warning(message)
        if warnings is not None:
            warnings.append(message)
    return Dataset.from_dict(out, features=GLUE_TASKS[task].features)


def _label(value: str, spec: GlueFiles, path: Path, line: int) -> int | float:
    if spec.label_values is None:
        try:
            score = float(value)
        except ValueError:
            score = None
        if score is None or not 0.0 <= score <= 5.0:
            raise LmforgeError(f"{path} line {line}: field {spec.label!r} is {value!r}, expected a number in [0, 5]")
        return score
    if value not in spec.label_values:
        raise LmforgeError(
            f"{path} line {line}: field {spec.label!r} is {value!r}, expected one of {', '.join(spec.label_values)}"
        )
    return spec.label_values.index(value)


def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for each non-blank line; bare quotes are text, a BOM is dropped."""

    def lines() -> Iterator[str]:
        # Decoded line by line so a bad byte is reported with its line and offset, and big files stream.
        offset = 0
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    bad = raw[e.start : e.start + 1]
                    raise LmforgeError(
                        f"{path} line {number}: byte {offset + e.start} ({bad!r}) is not UTF-8; GLUE files are UTF-8"
                    ) from None
                offset += len(raw)
                yield text.removeprefix("\ufeff") if number == 1 else text

    reader = csv.reader(lines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        for fields in reader:
            if fields:
                yield reader.line_num, fields
    except csv.Error as e:
        raise LmforgeError(f"{path} line {reader.line_num}: unreadable as TSV ({e})") from None
