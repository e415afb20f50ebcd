"""Bad input: one line naming the file, key or value, exit code 2, nothing half-written.

Every case runs `lmforge` on a mistake a user can make (in params.yaml, a `-S` override, an input
file, an init checkpoint or the model registry) and checks what the user sees: exit code 2, exactly
one line on stderr, `lmforge: error: ...`, naming the file, key or value at fault and what was
expected; no traceback; and the project folder exactly as it was before (no output, no temporary
leftovers). The cases run in-process through `lmforge.components.cli.main`; two also run through the real
`lmforge` executable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from lmforge.components.cli import main

NO_DEMO = {"demo": {"enabled": False}}
WORDS = ["the", "a", "film", "fine", "dull", "great", "movie", "is", "was", "not", "very", "good", "bad", "plot",
         "actor", "story", "scene", "end", "long", "short", "funny", "sad", "and", "but", "it", "of", "to", "in"]


# ------------------------------------------------------------------ shared, read-only inputs


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """Tiny BERT checkpoints (good, without weights, vocab too small) and an ingested sst2 dataset."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    root = tmp_path_factory.mktemp("bad-input-shared")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizer(str(vocab))

    def model(name: str, vocab_size: int, weights: bool = True) -> None:
        config = BertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=128, max_position_embeddings=64)
        folder = root / "models" / name
        net = BertForMaskedLM(config)
        if weights:
            net.save_pretrained(str(folder))
        else:
            config.architectures = ["BertForMaskedLM"]
            config.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))

    model("bert-pos64", len(tokenizer))
    model("bert-noweights", len(tokenizer), weights=False)
    model("bert-smallvocab", 8)

    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"]),
                         "idx": Value("int32")})
    rows = {"sentence": ["a fine film", "a dull film", "great", "bad plot"], "label": [1, 0, 1, 0], "idx": [0, 1, 2, 3]}
    DatasetDict({s: Dataset.from_dict(rows, features=features) for s in ("train", "validation")}
                ).save_to_disk(str(root / "raw" / "sst2"))
    return root


# ------------------------------------------------------------------ writing a bad project


def write_params(root: Path, **sections) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(sections, sort_keys=False))


def write(root: Path, name: str, content: str | bytes) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def ingest_one(root: Path, files: dict[str, str | bytes], **source) -> list[str]:
    """Files, and a params.yaml ingesting them as the one local dataset `bad`; the argv to run it."""
    for name, content in files.items():
        write(root, name, content)
    write_params(root, ingest={**NO_DEMO, "sources": [{"name": "bad", "source": "local", **source}]})
    return ["stage", "ingest"]


def finetune_from(init: str, *overrides: str) -> Callable[[Path, Path], list[str]]:
    """Fine-tune sst2 (the shared ingested copy) from `init`, where {models} is the shared models folder."""

    def prepare(root: Path, shared: Path) -> list[str]:
        write_params(root, ingest={**NO_DEMO, "out_dir": str(shared / "raw")})
        init_path = init.format(models=shared / "models")
        return ["stage", "finetune", "-S", "finetune.task=sst2", "-S", f"finetune.init={init_path}", *overrides]

    return prepare


def squad(context: str, answer: str, start: int) -> str:
    qa = {"id": "q1", "question": "What?", "answers": [{"text": answer, "answer_start": start}]}
    return json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": [qa]}]}]})


def empty_parquet(root: Path) -> list[str]:
    pd.DataFrame({"sentence": pd.Series([], dtype=str), "label": pd.Series([], dtype=int)}).to_parquet(
        root / "empty.parquet")
    return ingest_one(root, {}, format="parquet", data_files="empty.parquet", task="sst2")


def registry_without_alias(root: Path) -> list[str]:
    """A registry holding the model, but no version under the alias asked for."""
    import mlflow

    uri = f"sqlite:///{root}/mlflow.db"
    mlflow.MlflowClient(tracking_uri=uri).create_registered_model("lmforge-bert-pretrained")
    write_params(root, ingest=NO_DEMO, tracking={"uri": uri})
    return ["stage", "finetune", "-S", "finetune.init=models:/lmforge-bert-pretrained@nightly",
            "-S", f"tracking.uri={uri}"]


def crosslingual_one_language(root: Path, shared: Path) -> list[str]:
    """The cross-lingual stage on a corpus in one language (and a dictionary in two)."""
    raw = root / "raw"
    DatasetDict({"train": Dataset.from_dict({"text": [f"the {w} is fine ." for w in WORDS]})}).save_to_disk(
        str(raw / "corpus"))
    DatasetDict({"train": Dataset.from_dict({"source": ["film", "good", "bad", "story", "end"],
                                             "target": ["电影", "好", "坏", "故事", "结局"]})}).save_to_disk(str(raw / "dict"))
    DatasetDict.load_from_disk(str(shared / "raw" / "sst2")).save_to_disk(str(raw / "sst2"))
    write_params(root, ingest={**NO_DEMO, "out_dir": "raw"})
    return ["stage", "crosslingual", "-S", "crosslingual.task=sst2", "-S", "crosslingual.source=sst2",
            "-S", "crosslingual.target=sst2", "-S", "crosslingual.dictionary=dict",
            "-S", f"crosslingual.model={shared / 'models' / 'bert-pos64'}"]


def params_folder(root: Path) -> list[str]:
    """Root can read any file, so an unreadable params file is one that is a folder."""
    (root / "conf").mkdir()
    return ["stage", "ingest", "-p", "conf"]


def params_only(params: dict | str | bytes, *argv: str) -> Callable[[Path], list[str]]:
    def prepare(root: Path) -> list[str]:
        if isinstance(params, dict):
            write_params(root, **params)
        else:
            write(root, "params.yaml", params)
        return list(argv)

    return prepare


@dataclass
class Case:
    id: str
    prepare: Callable[..., list[str]]   # (root[, shared]) -> argv, run in root
    expect: tuple[str, ...]             # texts the error line must contain
    output: str                         # the stage's output path, which must not appear
    needs_shared: bool = False          # prepare takes (root, shared): the tiny checkpoints and sst2 data


SOURCE = "ingest.sources.0"
BAD_JSONL = '{"sentence": "fine", "label": 1}\n{"sentence": "dull", label: 0}\n'  # line 2: a key without quotes
CASES = [
    # -------------------------------------------------------------- params.yaml and -S overrides
    Case("unknown-params-key", params_only({"tokenizer": {"bert": {"vocab_sise": 500}}}, "stage", "tokenizer"),
         ("params.yaml: tokenizer.bert.vocab_sise: unknown key",), "data/tokenizers"),
    Case("wrong-type", params_only({}, "stage", "pretrain-bert", "-S", "pretrain.bert.train.batch_size=many"),
         ("pretrain.bert.train.batch_size: expected an integer, got 'many'",), "models/bert-pretrained"),
    Case("zero-size", params_only({}, "stage", "pretrain-gpt", "-S", "pretrain.gpt.block_size=0"),
         ("pretrain.gpt.block_size: must be >= 8, got 0",), "models/gpt-pretrained"),
    Case("negative-size",
         params_only({"pretrain": {"bert": {"model": {"hidden_size": -64}}}}, "stage", "pretrain-bert"),
         ("pretrain.bert.model.hidden_size: must be >= 8, got -64",), "models/bert-pretrained"),
    Case("negative-batch-size", params_only({}, "stage", "finetune", "-S", "finetune.train.batch_size=-4"),
         ("finetune.train.batch_size: must be >= 1, got -4",), "models/bert-sst2"),
    Case("mask-rates-not-summing-to-1",
         params_only({}, "stage", "pretrain-bert", "-S", "pretrain.bert.masking.keep=0.3"),
         ("pretrain.bert.masking: mask_token + random_token + keep must sum to 1", "0.8 + 0.1 + 0.3 = 1.2"),
         "models/bert-pretrained"),
    Case("max-seq-length-over-model-positions",
         params_only({}, "stage", "pretrain-bert", "-S", "pretrain.bert.max_seq_length=256",
                     "-S", "pretrain.bert.model.max_position_embeddings=128"),
         ("pretrain.bert: max_seq_length 256 exceeds model.max_position_embeddings 128",), "models/bert-pretrained"),
    Case("snapshot-step-negative",
         params_only({}, "stage", "pretrain-bert", "-S", "pretrain.bert.snapshot_steps=[0, -10]"),
         ("pretrain.bert: snapshot_steps [0, -10]: expected distinct steps >= 0",), "models/bert-snapshots"),
    Case("when-bert-learns-without-snapshots",
         params_only({}, "stage", "when-bert-learns", "-S", "pretrain.bert.snapshots_dir=nowhere"),
         ("when-bert-learns: no snapshots in nowhere; set pretrain.bert.snapshot_steps",), "reports/when_bert_learns.json"),
    Case("crosslingual-corpus-in-one-language", crosslingual_one_language,
         ("crosslingual: corpus raw/corpus has 0 sentences in CJK script (sentences by script: LATIN 28)",
          "pretrain on a corpus with both"), "reports/crosslingual.json", needs_shared=True),
    Case("vocab-size-below-special-tokens", params_only({}, "stage", "tokenizer", "-S", "tokenizer.bert.vocab_size=4"),
         ("tokenizer.bert.vocab_size: must be >= 100, got 4",), "data/tokenizers"),
    Case("validation-fraction-above-half", params_only({}, "stage", "ingest", "-S", "ingest.validation.fraction=0.7"),
         ("ingest.validation.fraction: must be <= 0.5, got 0.7",), "data/raw"),
    Case("validation-fraction-zero", params_only({}, "stage", "ingest", "-S", "ingest.validation.fraction=0"),
         ("ingest.validation.fraction: must be > 0.0, got 0",), "data/raw"),
    Case("one-document-corpus-without-validation",
         lambda root: ingest_one(root, {"books/only.txt": "One book, one line.\n"}, format="text",
                                 data_files="books/*.txt"),
         ("dataset 'bad'", "1 document(s) in train, no validation split to hold out from"), "data/raw"),
    Case("doc-stride-not-below-half-the-window",
         params_only({}, "stage", "finetune", "-S", "finetune.task=squad", "-S", "finetune.doc_stride=64"),
         ("finetune.doc_stride 64 must be below half of finetune.max_seq_length 128",), "models/bert-squad"),
    Case("unknown-glue-task",
         lambda root: ingest_one(root, {"SST-3/train.tsv": "sentence\tlabel\nfine\t1\n"},
                                 format="glue_tsv", data_files="SST-3", task="sst3"),
         (f"{SOURCE}.task: expected one of", "got 'sst3'"), "data/raw"),
    Case("unknown-finetune-task", params_only({}, "stage", "finetune", "-S", "finetune.task=sst3"),
         ("finetune.task: expected one of", "got 'sst3'"), "models/bert-sst3"),
    Case("unknown-format",
         lambda root: ingest_one(root, {"reviews.xml": "<r/>"}, format="xml", data_files="reviews.xml"),
         (f"{SOURCE}.format: expected one of", "got 'xml'"), "data/raw"),
    Case("params-file-missing", params_only({}, "stage", "ingest", "-p", "nowhere.yaml"),
         ("nowhere.yaml: params file not found",), "data/raw"),
    Case("params-file-is-a-folder", params_folder,
         ("conf: cannot read params file", "Is a directory"), "data/raw"),
    Case("params-file-not-utf8", params_only("ingest:\n  out_dir: caf\xe9\n".encode("latin-1"), "stage", "ingest"),
         ("params.yaml: cannot read params file", "utf-8"), "data/raw"),
    Case("params-yaml-syntax-error",
         params_only("ingest:\n  demo:\n    enabled: [true\n  out_dir: data/raw\n", "stage", "ingest"),
         ("params.yaml: line 4", "YAML syntax error"), "data/raw"),
    Case("override-without-equals-sign", params_only({}, "stage", "tokenizer", "-S", "tokenizer.bert.vocab_size"),
         ("override 'tokenizer.bert.vocab_size': expected section.key=value",), "data/tokenizers"),
    Case("override-into-a-value", params_only({}, "stage", "tokenizer", "-S", "tokenizer.bert.vocab_size.max=5"),
         ("tokenizer.bert.vocab_size: expected an integer, got {'max': 5}",), "data/tokenizers"),
    # -------------------------------------------------------------- input files
    Case("empty-corpus",
         lambda root: ingest_one(root, {"corpus/a.txt": ""}, format="text", data_files="corpus/*.txt"),
         ("dataset 'bad'", "empty corpus, expected at least one non-blank text"), "data/raw"),
    Case("whitespace-only-corpus",
         lambda root: ingest_one(root, {"corpus/a.txt": "  \n\n\t \n"}, format="text", data_files="corpus/*.txt"),
         ("dataset 'bad'", "empty corpus, expected at least one non-blank text"), "data/raw"),
    Case("non-utf8-file",
         lambda root: ingest_one(root, {"latin.txt": "line one\ncaf\xe9 au lait\n".encode("latin-1")},
                                 format="text", data_files="latin.txt"),
         ("latin.txt line 2: byte 0xe9 at offset 12 is not UTF-8", "expected a UTF-8 text file"), "data/raw"),
    Case("data-files-glob-matches-nothing",
         lambda root: ingest_one(root, {}, format="text", data_files="corpus/*.txt"),
         ("data_files [train]: no file matches 'corpus/*.txt'",), "data/raw"),
    Case("glue-tsv-missing-column",
         lambda root: ingest_one(root, {"SST-2/train.tsv": "sentence\tscore\na fine film\t1\n"},
                                 format="glue_tsv", data_files="SST-2", task="sst2"),
         ("SST-2/train.tsv: missing column 'label'", "SST-2 needs label, sentence; found sentence, score"), "data/raw"),
    Case("label-outside-label-set",
         lambda root: ingest_one(root, {"reviews.csv": "sentence,label\na fine film,1\na dull film,7\n"},
                                 format="csv", data_files="reviews.csv", task="sst2"),
         ("dataset 'bad'", "[train] row 1: field 'label' is 7, expected one of [0, 1]"), "data/raw"),
    Case("csv-missing-text-column",
         lambda root: ingest_one(root, {"docs.csv": "body\nsome text\n"}, format="csv", data_files="docs.csv",
                                 task="corpus"),
         ("docs.csv", "missing column(s) text; task 'corpus' needs text (found body)"), "data/raw"),
    Case("empty-csv",
         lambda root: ingest_one(root, {"reviews.csv": ""}, format="csv", data_files="reviews.csv", task="sst2"),
         ("reviews.csv: empty file, expected a header line and comma-separated rows",), "data/raw"),
    Case("csv-header-only",
         lambda root: ingest_one(root, {"reviews.csv": "sentence,label\n"}, format="csv", data_files="reviews.csv",
                                 task="sst2"),
         ("reviews.csv [train]: a header line but no rows; expected a header line and comma-separated rows",),
         "data/raw"),
    Case("empty-parquet", empty_parquet,
         ("empty.parquet: no rows, expected a Parquet table with at least one row",), "data/raw"),
    Case("malformed-jsonl-line",
         lambda root: ingest_one(root, {"reviews.jsonl": BAD_JSONL}, format="jsonl", data_files="reviews.jsonl",
                                 task="sst2"),
         ("reviews.jsonl line 2 column 22: not valid JSON", "expected one JSON object per line"), "data/raw"),
    Case("json-array-without-rows",
         lambda root: ingest_one(root, {"reviews.json": "[]"}, format="json", data_files="reviews.json", task="sst2"),
         ("reviews.json [train]: no rows; expected a JSON array of row objects",), "data/raw"),
    Case("squad-answer-start-off",
         lambda root: ingest_one(root, {"squad.json": squad("The cat sat on the mat.", "the mat", 3)},
                                 format="squad_json", data_files="squad.json"),
         ("squad.json question id q1: answer_start 3 points at ' cat sa'", "expected the answer text 'the mat'"),
         "data/raw"),
    Case("squad-json-without-data",
         lambda root: ingest_one(root, {"squad.json": '{"version": "1.1"}'}, format="squad_json",
                                 data_files="squad.json"),
         ("squad.json: no 'data' key",), "data/raw"),
    Case("conll-tag-not-bio",
         lambda root: ingest_one(root, {"ner.txt": "Angela PER\nvisited O\n\n"}, format="conll", data_files="ner.txt"),
         ("ner.txt line 1: NER tag 'PER'", "allowed: O, B-PER"), "data/raw"),
    # -------------------------------------------------------------- init checkpoints and the registry
    Case("init-folder-missing", finetune_from("nowhere/bert"),
         ("init checkpoint nowhere/bert: folder not found", "config.json + model.safetensors"), "models/bert-bert-sst2",
         needs_shared=True),
    Case("init-folder-without-weights", finetune_from("{models}/bert-noweights"),
         ("bert-noweights: no model.safetensors (found config.json",), "models/bert-bert-noweights-sst2",
         needs_shared=True),
    Case("tokenizer-model-vocab-mismatch", finetune_from("{models}/bert-smallvocab"),
         ("bert-smallvocab: the tokenizer has 33 tokens but the model's vocab_size is 8",),
         "models/bert-bert-smallvocab-sst2", needs_shared=True),
    Case("max-seq-length-over-init-positions",
         finetune_from("{models}/bert-pos64", "-S", "finetune.max_seq_length=128"),
         ("bert-pos64", "finetune.max_seq_length 128 exceeds the model's max_position_embeddings 64"),
         "models/bert-bert-pos64-sst2", needs_shared=True),
    Case("registry-store-missing",
         params_only({}, "stage", "finetune", "-S", "finetune.init=models:/lmforge-bert-pretrained@champion",
                     "-S", "tracking.uri=sqlite:///nowhere/mlflow.db"),
         ("init models:/lmforge-bert-pretrained@champion: no MLflow registry at sqlite:///nowhere/mlflow.db",),
         "models/registry"),
    Case("registered-alias-missing", registry_without_alias,
         ("init models:/lmforge-bert-pretrained@nightly:",
          "registered model 'lmforge-bert-pretrained' has no alias 'nightly'"),
         "models/registry"),
]


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def said(line: str, *folders: Path) -> str:
    """The error line as docs/reliability.md shows it: the test's temporary folders as <tmp>."""
    for folder in folders:
        line = line.replace(str(folder), "<tmp>")
    return line


def error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith("lmforge: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(case: Case, tmp_path, monkeypatch, capsys, request,
                                                          record_property):
    """A user mistake stops lmforge with one line naming what is wrong, exit code 2, nothing written"""
    monkeypatch.chdir(tmp_path)
    args = (tmp_path, request.getfixturevalue("shared")) if case.needs_shared else (tmp_path,)
    argv = case.prepare(*args)
    before = [tree(folder) for folder in args]
    capsys.readouterr()  # what setting up the case printed

    code = main(argv)

    out, err = capsys.readouterr()
    assert code == 2, f"exit code {code}; stderr:\n{err}"
    line = error_line(err)
    record_property("message", said(line, *args))
    for text in case.expect:
        assert text in line, f"{text!r} not in {line!r}"
    assert "Traceback" not in err
    assert not (tmp_path / case.output).exists()
    for folder, files in zip(args, before):
        assert tree(folder) == files, f"changed in {folder}: {sorted(tree(folder) ^ files)}"


SUBPROCESS_CASES = [c for c in CASES if c.id in ("params-yaml-syntax-error", "malformed-jsonl-line")]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c.id for c in SUBPROCESS_CASES])
def test_real_executable_exits_2_with_one_stderr_line(case: Case, tmp_path, record_property):
    """The `lmforge` executable itself exits 2 with one stderr line and no traceback"""
    argv = case.prepare(tmp_path)
    before = tree(tmp_path)
    exe = Path(sys.executable).parent / "lmforge"
    env = {**os.environ, "PATH": f"{exe.parent}:{os.environ['PATH']}"}
    result = subprocess.run([str(exe), *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    line = error_line(result.stderr)
    record_property("message", said(line, tmp_path))
    assert all(text in line for text in case.expect), line
    assert not (tmp_path / case.output).exists()
    assert tree(tmp_path) == before
