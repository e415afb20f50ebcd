"""SQuAD's official JSON files (v1.1 and v2.0) as the Hub's `squad` / `squad_v2` rows: one row per question.

As the Hub's loading scripts do: the title defaults to "", the context is kept unstripped (answer
offsets count its leading spaces), and v2.0's `plausible_answers` are dropped, so an unanswerable
question has empty answer lists. Every answer's `answer_start` is checked against its context here,
where the file and question id can still be named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

from lmforge.components.data.schemas import SQUAD_FEATURES, validate
from lmforge.components.data.text_files import read_utf8
from lmforge.components.errors import LmforgeError


def squad_task(files: dict[str, Path]) -> str:
    """"squad_v2" if any file says version 2.x or marks a question is_impossible, else "squad"."""
    docs = {Path(path): _load(Path(path)) for path in files.values()}
    return _task_of(docs, {path: _questions(doc, path) for path, doc in docs.items()})


def read_squad_json(files: dict[str, Path], version: str | None = None) -> DatasetDict:
    """Read {split: SQuAD JSON file} into the Hub's rows.

    `version` ("1.1", "v2.0", "squad", "squad_v2") forces the task; by default it is `squad_task`'s.
    """
    if not files:
        raise LmforgeError("SQuAD files: none given, expected {split: path to SQuAD JSON}")
    paths = {split: Path(path) for split, path in files.items()}
    docs = {path: _load(path) for path in paths.values()}
    questions = {path: _questions(doc, path) for path, doc in docs.items()}
    task = _version_task(version) if version is not None else _task_of(docs, questions)

    data = DatasetDict()
    for split, path in paths.items():
        rows: dict[str, list] = {col: [] for col in SQUAD_FEATURES}
        for q in questions[path]:
            if q["impossible"] or not q["answers"]:
                if task == "squad":
                    raise LmforgeError(
                        f"{path} {q['where']}: no answer; SQuAD v1.1 needs at least one "
                        "(unanswerable questions are SQuAD v2.0's)"
                    )
                q["answers"] = []
            rows["id"].append(q["id"])
            rows["title"].append(q["title"])
            rows["context"].append(q["context"])
            rows["question"].append(q["question"])
            rows["answers"].append(
                {"text": [t for t, _ in q["answers"]], "answer_start": [s for _, s in q["answers"]]}
            )
        data[split] = Dataset.from_dict(rows, features=SQUAD_FEATURES)
    validate(data, task, ", ".join(str(p) for p in paths.values()))
    return data


def _version_task(version: str) -> str:
    if version in ("squad", "squad_v2"):
        return version
    major = version.lower().removeprefix("v").split(".")[0]
    if major in ("1", "2"):
        return "squad" if major == "1" else "squad_v2"
    raise LmforgeError(f"SQuAD version {version!r}: expected 1.1, 2.0, squad or squad_v2")


def _task_of(docs: dict[Path, dict], questions: dict[Path, list[dict]]) -> str:
    says_v2 = any(str(doc.get("version", "")).lower().removeprefix("v").startswith("2") for doc in docs.values())
    impossible = any(q["impossible"] for qs in questions.values() for q in qs)
    return "squad_v2" if says_v2 or impossible else "squad"


def _load(path: Path) -> dict:
    text = read_utf8(path, "SQuAD JSON")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise LmforgeError(f"{path} line {e.lineno} column {e.colno}: not valid JSON ({e.msg})") from None
    if not isinstance(doc, dict) or "data" not in doc:
        raise LmforgeError(f'{path}: no \'data\' key; expected SQuAD\'s {{"version": ..., "data": [articles]}}')
    return doc


def _questions(doc: dict, path: Path) -> list[dict]:
    """Every question in a SQuAD document, its structure and answer offsets checked."""
    out, seen = [], {}
    for a, article in enumerate(_field(doc, "data", list, path, "top level")):
        title = _field(article, "title", str, path, f"data[{a}]", default="")
        for p, paragraph in enumerate(_field(article, "paragraphs", list, path, f"data[{a}]")):
            at = f"data[{a}].paragraphs[{p}]"
            context = _field(paragraph, "context", str, path, at)
            for q, qa in enumerate(_field(paragraph, "qas", list, path, at)):
                qid = _field(qa, "id", str, path, f"{at}.qas[{q}]")
                where = f"{at}.qas[{q}] (id {qid})"
                if qid in seen:
                    raise LmforgeError(f"{path} {where}: duplicate question id {qid!r}, first at {seen[qid]}")
                seen[qid] = where
                question = _field(qa, "question", str, path, where)
                impossible = _field(qa, "is_impossible", bool, path, where, default=False)
                answers = [] if impossible else _answers(qa, context, path, where, qid)
                out.append(dict(id=qid, title=title, context=context, question=question,
                                answers=answers, impossible=impossible, where=where))  # fmt: skip
    return out


def _answers(qa: dict, context: str, path: Path, where: str, qid: str) -> list[tuple[str, int]]:
    answers = []
    for i, answer in enumerate(_field(qa, "answers", list, path, where)):
        text = _field(answer, "text", str, path, f"{where} answers[{i}]")
        start = _field(answer, "answer_start", int, path, f"{where} answers[{i}]")
        found = context[start : start + len(text)] if start >= 0 else ""
        if found != text:
            raise LmforgeError(
                f"{path} question id {qid}: answer_start {start} points at {found!r} in the context, "
                f"expected the answer text {text!r}"
            )
        answers.append((text, start))
    return answers


_MISSING = object()


def _field(obj: Any, key: str, kind: type, path: Path, where: str, default: Any = _MISSING) -> Any:
    if not isinstance(obj, dict):
        raise LmforgeError(f"{path} {where}: is {type(obj).__name__}, expected an object with {key!r}")
    if key not in obj:
        if default is _MISSING:
            raise LmforgeError(f"{path} {where}: missing field {key!r}")
        return default
    value = obj[key]
    # bool is an int in Python; an answer_start of `true` is still a mistake
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = {str: "a string", int: "an integer", bool: "true or false", list: "a list"}
        raise LmforgeError(f"{path} {where}: field {key!r} is {json.dumps(value)[:60]}, expected {names[kind]}")
    return value
