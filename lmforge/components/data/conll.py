"""CoNLL-style NER files (one token per line, blank line between sentences) as the Hub's `conll2003` rows.

Columns are whitespace-separated: `token tag`, or CoNLL-2003's `token POS chunk tag`, whose POS and
chunk columns are kept as the string-list columns `pos` and `chunk` (2-column files have neither).
`-DOCSTART-` lines are skipped; `id` is the sentence's number within its split, from 0.

Tags are normalised to IOB2 ("BIO": every entity starts with B-), the scheme of the Hub's conll2003.
The original CoNLL-2003 files are IOB1 (an entity starts with I- unless it directly follows one of
the same type); IOB2 input comes through unchanged. The chunk column gets the same treatment, as the
Hub's chunk tags are IOB2 too.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, DatasetDict, Features, List, Value

from lmforge.components.data.schemas import CONLL_FEATURES, CONLL_NER_TAGS, validate
from lmforge.components.data.text_files import read_utf8
from lmforge.components.errors import LmforgeError

ENTITY_TYPES = sorted({t[2:] for t in CONLL_NER_TAGS if t != "O"})


def read_conll(files: dict[str, Path]) -> DatasetDict:
    """Read {split: CoNLL file} into the Hub's conll2003 columns (plus `pos`, `chunk` when present)."""
    if not files:
        raise LmforgeError("CoNLL files: none given, expected {split: path to a CoNLL file}")
    data = DatasetDict({split: _read_file(Path(path)) for split, path in files.items()})
    validate(data, "conll2003", ", ".join(str(p) for p in files.values()))
    return data


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """Make every chunk start with B-: an I-X not continuing an X becomes B-X. Other tags pass through."""
    out, previous = [], None  # previous: the entity type of the tag before, None after O or at start
    for tag in tags:
        prefix, _, kind = tag.partition("-")
        if prefix == "I" and kind and kind != previous:
            tag = f"B-{kind}"
        out.append(tag)
        previous = kind if prefix in ("B", "I") and kind else None
    return out


def _read_file(path: Path) -> Dataset:
    sentences: list[list[list[str]]] = []  # sentence -> token line -> columns
    width, current = None, []
    for number, line in _lines(path):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if current:
                sentences.append(current)
                current = []
            continue
        if len(fields) not in (2, 4):
            raise LmforgeError(
                f"{path} line {number}: {len(fields)} columns, expected 2 (token tag) "
                "or 4 (token POS chunk tag, as CoNLL-2003)"
            )
        if width is not None and len(fields) != width:
            raise LmforgeError(f"{path} line {number}: {len(fields)} columns, expected {width} as in the lines before")
        width = len(fields)
        _check_tag(fields[-1], path, number)
        current.append(fields)
    if current:
        sentences.append(current)
    if not sentences:
        raise LmforgeError(f"{path}: no sentences, expected token lines separated by blank lines")

    columns = {
        "id": [str(i) for i in range(len(sentences))],
        "tokens": [[f[0] for f in s] for s in sentences],
        "ner_tags": [iob1_to_iob2([f[-1] for f in s]) for s in sentences],
    }
    features = CONLL_FEATURES
    if width == 4:
        columns["pos"] = [[f[1] for f in s] for s in sentences]
        columns["chunk"] = [iob1_to_iob2([f[2] for f in s]) for s in sentences]
        features = Features({**CONLL_FEATURES, "pos": List(Value("string")), "chunk": List(Value("string"))})
    return Dataset.from_dict(columns, features=features)


def _check_tag(tag: str, path: Path, number: int) -> None:
    if tag in CONLL_NER_TAGS:
        return
    prefix, dash, kind = tag.partition("-")
    if dash and prefix in ("B", "I"):
        why = f"has unknown entity type {kind!r} (expected {', '.join(ENTITY_TYPES)})"
    else:
        why = "is not a BIO tag (O, or B-/I- and a type)"
    raise LmforgeError(
        f"{path} line {number}: NER tag {tag!r} (last column) {why}; allowed: {', '.join(CONLL_NER_TAGS)}"
    )


def _lines(path: Path) -> list[tuple[int, str]]:
    text = read_utf8(path, "CoNLL")
    # split on \n only: str.splitlines() would also break at characters such as U+2028 inside a token
    return [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), 1)]
