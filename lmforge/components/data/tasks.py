"""The tasks lmforge knows by name: GLUE's, with their columns and labels, SQuAD, CoNLL-2003, a corpus and a
dictionary. Apart from `schemas` (their `datasets.Features` and checks) so that the config and the CLI
read them without importing `datasets` (`lmforge params` took 2.3 s with it, 0.6 s without).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Features


@dataclass(frozen=True)
class GlueTask:
    name: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...] | None  # None: regression (STS-B)
    validation_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[str, ...] = ("test",)

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def features(self) -> Features:
        from datasets import ClassLabel, Features, Value

        columns = {c: Value("string") for c in self.text_columns}
        label = Value("float32") if self.is_regression else ClassLabel(names=list(self.label_names))
        return Features({**columns, "label": label, "idx": Value("int32")})

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", *self.validation_splits, *self.test_splits)


# Column names, label names and their order as in the Hub's `nyu-mll/glue`.
GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask("cola", ("sentence",), ("unacceptable", "acceptable")),
        GlueTask("sst2", ("sentence",), ("negative", "positive")),
        GlueTask("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent")),
        GlueTask("qqp", ("question1", "question2"), ("not_duplicate", "duplicate")),
        GlueTask("stsb", ("sentence1", "sentence2"), None),
        GlueTask(
            "mnli",
            ("premise", "hypothesis"),
            ("entailment", "neutral", "contradiction"),
            validation_splits=("validation_matched", "validation_mismatched"),
            test_splits=("test_matched", "test_mismatched"),
        ),
        GlueTask("qnli", ("question", "sentence"), ("entailment", "not_entailment")),
        GlueTask("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment")),
        GlueTask("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment")),
    ]
}

CONLL_NER_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")

TASKS = (*GLUE_TASKS, "squad", "squad_v2", "conll2003", "corpus", "dictionary")
