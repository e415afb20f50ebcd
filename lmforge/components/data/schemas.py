"""The Hub's schemas for the tasks lmforge knows, and the checks every ingested dataset passes.

Every source (Hub, local files, the demo generator) ends in one of these `datasets.Features`,
so later stages read GLUE, SQuAD and CoNLL data the same way wherever it came from.
"""

from __future__ import annotations

from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

from lmforge.components.data.tasks import CONLL_NER_TAGS, GLUE_TASKS, TASKS, GlueTask  # noqa: F401 - the names, here with their schemas
from lmforge.components.errors import LmforgeError


SQUAD_FEATURES = Features(
    {
        "id": Value("string"),
        "title": Value("string"),
        "context": Value("string"),
        "question": Value("string"),
        "answers": {"text": List(Value("string")), "answer_start": List(Value("int32"))},
    }
)

# The columns token classification needs; a CoNLL file's POS and chunk columns are kept when present.
CONLL_FEATURES = Features(
    {
        "id": Value("string"),
        "tokens": List(Value("string")),
        "ner_tags": List(ClassLabel(names=list(CONLL_NER_TAGS))),
    }
)

CORPUS_FEATURES = Features({"text": Value("string")})

# A bilingual dictionary (one word and its translation per row): what the cross-lingual report's
# word-retrieval part looks translations up in.
DICTIONARY_FEATURES = Features({"source": Value("string"), "target": Value("string")})


def task_features(task: str) -> Features:
    if task in GLUE_TASKS:
        return GLUE_TASKS[task].features
    if task in ("squad", "squad_v2"):
        return SQUAD_FEATURES
    if task == "conll2003":
        return CONLL_FEATURES
    if task == "corpus":
        return CORPUS_FEATURES
    if task == "dictionary":
        return DICTIONARY_FEATURES
    raise LmforgeError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")


def validate(data: DatasetDict, task: str, origin: str) -> None:
    """Check a dataset against its task's columns, label set and answer offsets.

    `origin` names where the data came from (a file, a Hub id) so the error can point at it.
    Raises LmforgeError naming the split, row and field at fault.
    """
    features = task_features(task)
    if len(data) == 0:
        raise LmforgeError(f"{origin}: no splits found, expected at least 'train'")
    for split, ds in data.items():
        missing = [c for c in features if c not in ds.column_names]
        if missing:
            raise LmforgeError(
                f"{origin} [{split}]: missing column(s) {', '.join(missing)}; "
                f"task {task!r} needs {', '.join(features)} (found {', '.join(ds.column_names) or 'none'})"
            )
        if task == "corpus":
            _check_corpus(ds, origin, split)
        elif task in GLUE_TASKS:
            _check_glue_labels(ds, GLUE_TASKS[task], origin, split)
        elif task in ("squad", "squad_v2"):
            _check_squad(ds, task, origin, split)
        elif task == "conll2003":
            _check_conll(ds, origin, split)
        elif task == "dictionary":
            _check_dictionary(ds, origin, split)


def _check_dictionary(ds: Dataset, origin: str, split: str) -> None:
    for row, (source, target) in enumerate(zip(ds["source"], ds["target"])):
        if not (source or "").strip() or not (target or "").strip():
            raise LmforgeError(f"{origin} [{split}] row {row}: a dictionary row needs a word in 'source' and its "
                               f"translation in 'target' (got {source!r}, {target!r})")


def _check_corpus(ds: Dataset, origin: str, split: str) -> None:
    if not any(text and text.strip() for text in ds["text"]):
        raise LmforgeError(f"{origin} [{split}]: empty corpus, expected at least one non-blank text")


def _check_glue_labels(ds: Dataset, task: GlueTask, origin: str, split: str) -> None:
    is_test = split.startswith("test")
    for row, label in enumerate(ds["label"]):
        if label is None:
            raise LmforgeError(f"{origin} [{split}] row {row}: field 'label' is empty")
        if is_test and label == -1:  # the Hub's GLUE marks hidden test labels as -1
            continue
        if task.is_regression:
            if not 0.0 <= float(label) <= 5.0:
                raise LmforgeError(
                    f"{origin} [{split}] row {row}: field 'label' is {label}, expected a score in [0, 5]"
                )
        elif not (isinstance(label, int) and 0 <= label < len(task.label_names)):
            raise LmforgeError(
                f"{origin} [{split}] row {row}: field 'label' is {label!r}, expected one of "
                f"{list(range(len(task.label_names)))} ({', '.join(task.label_names)})"
            )


def _check_squad(ds: Dataset, task: str, origin: str, split: str) -> None:
    for row, ex in enumerate(ds.select_columns(["id", "context", "answers"])):
        texts, starts = ex["answers"]["text"], ex["answers"]["answer_start"]
        if len(texts) != len(starts):
            raise LmforgeError(
                f"{origin} [{split}] row {row} (id {ex['id']}): field 'answers' has {len(texts)} texts "
                f"but {len(starts)} answer_start values"
            )
        if not texts and task == "squad":
            raise LmforgeError(
                f"{origin} [{split}] row {row} (id {ex['id']}): no answer; unanswerable questions "
                "belong to squad_v2"
            )
        for text, start in zip(texts, starts):
            found = ex["context"][start : start + len(text)]
            if found != text:
                raise LmforgeError(
                    f"{origin} [{split}] row {row} (id {ex['id']}): field 'answer_start' {start} points "
                    f"at {found!r}, expected the answer text {text!r}"
                )


def _check_conll(ds: Dataset, origin: str, split: str) -> None:
    for row, ex in enumerate(ds.select_columns(["id", "tokens", "ner_tags"])):
        if len(ex["tokens"]) != len(ex["ner_tags"]):
            raise LmforgeError(
                f"{origin} [{split}] row {row} (id {ex['id']}): {len(ex['tokens'])} tokens but "
                f"{len(ex['ner_tags'])} ner_tags"
            )
