"""Local files and Hub datasets through the ingest stage (the demo is off: these test the sources)."""

import json

import pandas as pd
import pytest
from datasets import ClassLabel, Dataset, load_from_disk

from lmforge.components.config import IngestConfig
from lmforge.components.data.hub import infer_hub_task, parse_hub_spec
from lmforge.components.data.ingest import ingest
from lmforge.components.errors import LmforgeError


def run_ingest(tmp_path, *sources):
    cfg = IngestConfig.model_validate({"demo": {"enabled": False}, "sources": list(sources)})
    out = ingest(cfg, tmp_path / "raw", base_dir=tmp_path)
    return out, json.loads((out / "manifest.json").read_text())


def test_text_files_one_document_per_file_or_per_blank_line_block(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("First doc, line one.\nLine two.\n")
    (tmp_path / "docs" / "b.txt").write_text("Second doc.\n\nStill the second doc.\n")
    out, manifest = run_ingest(
        tmp_path,
        {"name": "per_file", "source": "local", "format": "text", "data_files": "docs/*.txt"},
        {"name": "per_block", "source": "local", "format": "text", "data_files": "docs/*.txt", "text_unit": "paragraph"},
    )
    # Two files and no validation split: one file is held out whole (tests/test_holdout.py).
    per_file = load_from_disk(str(out / "per_file"))
    assert sorted([*per_file["train"]["text"], *per_file["validation"]["text"]]) == [
        "First doc, line one.\nLine two.\n", "Second doc.\n\nStill the second doc.\n"]
    per_block = load_from_disk(str(out / "per_block"))
    blocks = [*per_block["train"]["text"], *per_block["validation"]["text"]]
    assert len(blocks) == 3 and "Still the second doc.\n" in blocks
    assert manifest["per_file"]["task"] == "corpus"
    assert manifest["per_file"]["rows"] == {"train": 1, "validation": 1}
    assert manifest["per_block"]["validation_carved"]["by"] == "file"
    assert set(manifest["per_file"]["sha256"]) == {str(tmp_path / "docs" / n) for n in ("a.txt", "b.txt")}


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_table_formats_map_to_the_task_schema(tmp_path, fmt):
    frame = pd.DataFrame({"sentence": ["a fine film", "a dull film", "great"], "label": [1, 0, 1]})
    path = tmp_path / f"reviews.{fmt}"
    {
        "csv": lambda: frame.to_csv(path, index=False),
        "tsv": lambda: frame.to_csv(path, sep="\t", index=False),
        "json": lambda: path.write_text(json.dumps(frame.to_dict(orient="records"))),
        "jsonl": lambda: frame.to_json(path, orient="records", lines=True),
        "parquet": lambda: frame.to_parquet(path),
    }[fmt]()
    out, manifest = run_ingest(
        tmp_path, {"name": "reviews", "source": "local", "format": fmt, "data_files": {"train": path.name}, "task": "sst2"}
    )
    data = load_from_disk(str(out / "reviews"))  # train and the validation rows carved from it
    rows = sorted((row["idx"], row["label"]) for split in ("train", "validation") for row in data[split])
    assert rows == [(0, 1), (1, 0), (2, 1)]  # idx added as the Hub has it
    assert data["train"].features["label"] == ClassLabel(names=["negative", "positive"])
    assert manifest["reviews"]["task"] == "sst2"


def test_missing_column_fails_and_leaves_previous_output(tmp_path):
    good = tmp_path / "good.csv"
    pd.DataFrame({"sentence": ["ok", "fine"], "label": [1, 1], "idx": [0, 1]}).to_csv(good, index=False)
    out, _ = run_ingest(tmp_path, {"name": "r", "source": "local", "format": "csv", "data_files": "good.csv", "task": "sst2"})
    before = sorted(p.name for p in out.iterdir())
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"text": ["ok"], "label": [1]}).to_csv(bad, index=False)
    with pytest.raises(LmforgeError, match=r"missing column\(s\) sentence; task 'sst2' needs sentence, label, idx"):
        run_ingest(tmp_path, {"name": "r", "source": "local", "format": "csv", "data_files": "bad.csv", "task": "sst2"})
    assert sorted(p.name for p in out.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".raw.tmp")]


def test_label_outside_label_set_names_row_and_field(tmp_path):
    pd.DataFrame({"sentence": ["a", "b"], "label": [1, 7], "idx": [0, 1]}).to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(LmforgeError, match=r"\[train\] row 1: field 'label' is 7, expected one of \[0, 1\]"):
        run_ingest(tmp_path, {"name": "r", "source": "local", "format": "csv", "data_files": "r.csv", "task": "sst2"})


def test_non_utf8_file_names_file_and_line(tmp_path):
    (tmp_path / "latin.txt").write_bytes("line one\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(LmforgeError, match=r"latin.txt line 2: byte 0xe9 at offset 12 is not UTF-8"):
        run_ingest(tmp_path, {"name": "c", "source": "local", "format": "text", "data_files": "latin.txt"})


def test_empty_corpus_and_missing_files(tmp_path):
    (tmp_path / "blank.txt").write_text("\n   \n\n")
    with pytest.raises(LmforgeError, match=r"empty corpus"):
        run_ingest(tmp_path, {"name": "c", "source": "local", "format": "text", "data_files": "blank.txt"})
    with pytest.raises(LmforgeError, match=r"data_files \[train\]: no file matches 'nowhere/\*.txt'"):
        run_ingest(tmp_path, {"name": "c", "source": "local", "format": "text", "data_files": "nowhere/*.txt"})
    assert not (tmp_path / "raw").exists()


def test_malformed_json_is_one_clear_error(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"sentence": "a", "label": 1, "idx": 0}\n{"sentence": "b", "label"\n')
    with pytest.raises(LmforgeError, match=r"rows.jsonl line 2 column 26: not valid JSON \(Expecting ':' delimiter\)"):
        run_ingest(tmp_path, {"name": "j", "source": "local", "format": "jsonl", "data_files": "rows.jsonl"})


def test_hub_source_loads_through_load_dataset(tmp_path):
    """The Hub code path, on a dataset folder the test writes (the Hub is unreachable here)."""
    repo = tmp_path / "hub_repo"
    (repo / "data").mkdir(parents=True)
    Dataset.from_dict({"sentence": ["good", "bad"], "label": [1, 0], "idx": [0, 1]}).to_parquet(
        str(repo / "data" / "train-00000-of-00001.parquet")
    )
    Dataset.from_dict({"sentence": ["fine"], "label": [1], "idx": [0]}).to_parquet(
        str(repo / "data" / "validation-00000-of-00001.parquet")
    )
    out, manifest = run_ingest(tmp_path, {"name": "sst2", "source": f"hf:{repo}", "task": "sst2"})
    data = load_from_disk(str(out / "sst2"))
    assert {s: len(d) for s, d in data.items()} == {"train": 2, "validation": 1}
    assert data["train"].features["label"].names == ["negative", "positive"]
    assert manifest["sst2"]["source"] == f"hf:{repo}" and set(manifest["sst2"]["fingerprints"]) == {"train", "validation"}


def test_hub_errors_and_name_parsing(tmp_path):
    with pytest.raises(LmforgeError, match=r"source 'hf:lmforge-test/does-not-exist': could not load dataset"):
        run_ingest(tmp_path, {"name": "x", "source": "hf:lmforge-test/does-not-exist"})
    assert parse_hub_spec("hf:nyu-mll/glue:sst2") == ("nyu-mll/glue", "sst2")
    assert parse_hub_spec("hf:rajpurkar/squad") == ("rajpurkar/squad", None)
    assert infer_hub_task("nyu-mll/glue", "mnli") == "mnli"
    assert infer_hub_task("rajpurkar/squad_v2", None) == "squad_v2"
    assert infer_hub_task("wikitext", "wikitext-103-raw-v1") is None


def test_nothing_to_ingest(tmp_path):
    with pytest.raises(LmforgeError, match="nothing to ingest"):
        run_ingest(tmp_path)


def test_glue_folder_and_squad_json_ingest_into_hub_schemas(tmp_path):
    rte = tmp_path / "glue_data" / "RTE"
    rte.mkdir(parents=True)
    (rte / "train.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n"
        '0\tHe said "yes" twice.\tHe agreed.\tentailment\n'
        "1\tThe sky is green.\tThe sky is blue.\tnot_entailment\n"
    )
    (rte / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tA cat sat.\tAn animal sat.\tentailment\n")
    squad = {"version": "v2.0", "data": [{"title": "Velmora", "paragraphs": [{
        "context": "Velmora lies on the river Ost.",
        "qas": [
            {"id": "q1", "question": "Where does Velmora lie?", "is_impossible": False,
             "answers": [{"text": "on the river Ost", "answer_start": 13}]},
            {"id": "q2", "question": "Who founded Velmora?", "is_impossible": True, "answers": [],
             "plausible_answers": [{"text": "Velmora", "answer_start": 0}]},
        ]}]}]}
    (tmp_path / "dev-v2.0.json").write_text(json.dumps(squad))
    out, manifest = run_ingest(
        tmp_path,
        {"name": "rte", "source": "local", "format": "glue_tsv", "data_files": "glue_data/RTE", "task": "rte"},
        {"name": "sq", "source": "local", "format": "squad_json", "data_files": {"validation": "dev-v2.0.json"}},
    )
    rte_data = load_from_disk(str(out / "rte"))
    assert rte_data["train"]["sentence1"][0] == 'He said "yes" twice.'
    assert rte_data["train"]["label"] == [0, 1] and rte_data["validation"]["idx"] == [0]
    assert manifest["sq"]["task"] == "squad_v2"
    sq = load_from_disk(str(out / "sq"))["validation"]
    assert sq["answers"] == [{"text": ["on the river Ost"], "answer_start": [13]}, {"text": [], "answer_start": []}]
    assert len(manifest["rte"]["sha256"]) == 2
