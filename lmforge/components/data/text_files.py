"""Reading a user's text file: the one check every reader (plain text, CoNLL, SQuAD JSON) makes first."""

from __future__ import annotations

from pathlib import Path

from lmforge.components.errors import LmforgeError


def read_utf8(path: Path, kind: str = "text") -> str:
    """A file's text (a UTF-8 byte-order mark dropped), or an error naming the file and the line
    of the first byte that is not UTF-8, before a parser trips on it."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise LmforgeError(f"{path}: cannot read {kind} file ({e.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise LmforgeError(
            f"{path} line {line}: byte 0x{data[e.start]:02x} at offset {e.start} is not UTF-8; "
            f"expected a UTF-8 {kind} file (re-encode it, e.g. with iconv -t utf-8)"
        ) from None
