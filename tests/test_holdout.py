"""The validation split ingest carves for a dataset that has none: deterministic, by document,
stable when data is appended, recorded in the manifest, and what pretraining holds out."""

import json

import pytest
from datasets import load_from_disk

from lmforge.components.config import HoldoutConfig, IngestConfig
from lmforge.components.data.holdout import carve_rows, choose
from lmforge.components.data.ingest import ingest
from lmforge.components.errors import LmforgeError


def write_corpus(folder, n_files: int, lines_per_file: int = 3, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n_files):
        (folder / f"book{i:03d}.txt").write_text(
            "".join(f"Book {i} line {j} tells of the river and the bank.\n" for j in range(lines_per_file)))


def run_ingest(root, sources, **validation):
    cfg = IngestConfig.model_validate({"demo": {"enabled": False}, "sources": sources, "validation": validation})
    out = ingest(cfg, root / "raw", root)
    return out, json.loads((out / "manifest.json").read_text())


CORPUS = {"name": "corpus", "source": "local", "format": "text", "data_files": "books/*.txt", "text_unit": "line"}


def test_text_files_are_held_out_whole_recorded_and_the_same_each_time(tmp_path):
    write_corpus(tmp_path / "books", 60)
    out, manifest = run_ingest(tmp_path, [CORPUS], fraction=0.1, seed=3)
    data = load_from_disk(str(out / "corpus"))
    held = {line.split(" line ")[0] for line in data["validation"]["text"]}
    trained = {line.split(" line ")[0] for line in data["train"]["text"]}
    assert held and not held & trained                      # a book is on one side only: by document
    assert len(data["validation"]) == 3 * len(held)         # all its lines went with it
    assert 1 <= len(held) <= 15                             # about 10% of 60 books
    carved = manifest["corpus"]["validation_carved"]
    assert carved == {"by": "file", "split": "validation", "documents": len(held), "from": "train",
                      "fraction": 0.1, "seed": 3}
    assert manifest["corpus"]["rows"] == {"train": len(data["train"]), "validation": len(data["validation"])}

    again = load_from_disk(str(run_ingest(tmp_path, [CORPUS], fraction=0.1, seed=3)[0] / "corpus"))
    assert again["validation"]["text"] == data["validation"]["text"]
    other_seed = load_from_disk(str(run_ingest(tmp_path, [CORPUS], fraction=0.1, seed=4)[0] / "corpus"))
    assert other_seed["validation"]["text"] != data["validation"]["text"]


def test_appended_documents_never_move_an_existing_one_across(tmp_path):
    write_corpus(tmp_path / "books", 40)
    before = load_from_disk(str(run_ingest(tmp_path, [CORPUS])[0] / "corpus"))
    write_corpus(tmp_path / "books", 40, start=40)  # the corpus doubles
    after = load_from_disk(str(run_ingest(tmp_path, [CORPUS])[0] / "corpus"))
    assert set(before["validation"]["text"]) <= set(after["validation"]["text"])
    assert set(before["train"]["text"]) <= set(after["train"]["text"])


def test_rows_of_a_task_file_are_carved_into_the_tasks_validation_split(tmp_path):
    rows = "".join(f"premise {i}\thypothesis {i}\t{i % 3}\n"
                   for i in range(200))
    (tmp_path / "mnli.tsv").write_text("premise\thypothesis\tlabel\n" + rows)
    source = {"name": "mnli", "source": "local", "format": "tsv", "data_files": "mnli.tsv", "task": "mnli"}
    out, manifest = run_ingest(tmp_path, [source], fraction=0.2)
    data = load_from_disk(str(out / "mnli"))
    assert set(data) == {"train", "validation_matched"}     # where MNLI's evaluation reads
    assert 20 <= len(data["validation_matched"]) <= 60 and len(data["train"]) + len(data["validation_matched"]) == 200
    assert not set(data["train"]["premise"]) & set(data["validation_matched"]["premise"])
    assert manifest["mnli"]["validation_carved"]["by"] == "row"


def test_a_dataset_with_validation_is_left_as_it_came(tmp_path):
    write_corpus(tmp_path / "books", 10)
    write_corpus(tmp_path / "dev", 2)
    source = {**CORPUS, "data_files": {"train": "books/*.txt", "validation": "dev/*.txt"}}
    out, manifest = run_ingest(tmp_path, [source])
    assert "validation_carved" not in manifest["corpus"]
    assert len(load_from_disk(str(out / "corpus"))["validation"]) == 6


def test_every_side_gets_a_document_and_one_document_is_refused():
    cfg = HoldoutConfig(fraction=0.01, seed=0)
    assert sum(choose(["a", "b", "c"], cfg, "x")) == 1       # none fell below 1%: the lowest hash goes
    assert sum(choose(["a", "b"], HoldoutConfig(fraction=0.5), "x")) == 1
    with pytest.raises(LmforgeError, match="x: 1 document"):
        choose(["a"], cfg, "x")


def test_duplicate_rows_land_on_the_same_side():
    from datasets import Dataset, DatasetDict

    texts = [f"doc {i % 50}" for i in range(500)]  # every text ten times
    data = carve_rows(DatasetDict({"train": Dataset.from_dict({"text": texts})}), "validation",
                      HoldoutConfig(fraction=0.2), "x")
    assert not set(data["train"]["text"]) & set(data["validation"]["text"])
    assert len(data["validation"]) % 10 == 0


def test_qa_settings_are_checked_for_qa_tasks_only():
    from lmforge.components.params_file import validate_params

    params = validate_params({"finetune": {"task": "sst2", "max_seq_length": 64}})  # doc_stride 32 is fine for SST-2
    assert params.finetune.max_seq_length == 64
    with pytest.raises(LmforgeError, match="finetune.doc_stride 32 must be below half of finetune.max_seq_length 64"):
        params.finetune.check_qa_windows()
