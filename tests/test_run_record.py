"""The run record: the one file a training folder keeps about its training, written when training
starts, read to resume and by the registry's lineage; a missing or malformed one fails in one line."""

import json

import pytest

from lmforge.components.errors import LmforgeError
from lmforge.components.training.checkpoints import resumable
from lmforge.components.training.run_record import RUN_RECORD, RunRecord, read_run_record, write_run_record


def test_a_record_reads_back_as_written_and_decides_what_resumes(tmp_path):
    params = {"train": {"adam_betas": (0.9, 0.98), "max_steps": 10}}
    assert not resumable(tmp_path, params)  # nothing trained here yet
    path = write_run_record(tmp_path, RunRecord("abc123", params))
    assert path == tmp_path / RUN_RECORD
    record = read_run_record(tmp_path)
    assert record == RunRecord("abc123", {"train": {"adam_betas": [0.9, 0.98], "max_steps": 10}})  # as JSON has it
    assert resumable(tmp_path, params)
    assert not resumable(tmp_path, {"train": {"adam_betas": (0.9, 0.98), "max_steps": 11}})  # other params: afresh
    write_run_record(tmp_path, RunRecord(None, params))  # trained with tracking off
    assert read_run_record(tmp_path).mlflow_run_id is None


@pytest.mark.parametrize(("content", "message"), [
    (None, r"run.json: run record not found \(expected JSON \{mlflow_run_id, params\} written when training "
           r"starts\); run the stage that trains into .* first"),
    ("{not json", r"run.json: unreadable run record \(.*\); expected JSON .*: delete .* and run its stage again"),
    ('["abc"]', r"run.json: malformed run record; expected JSON \{mlflow_run_id, params\}"),
    ('{"mlflow_run_id": 7, "params": {}}', r"run.json: malformed run record"),
    ('{"mlflow_run_id": "abc"}', r"run.json: malformed run record"),
])
def test_a_missing_or_malformed_record_is_one_line_naming_the_file(tmp_path, content, message):
    if content is not None:
        (tmp_path / RUN_RECORD).write_text(content)
    with pytest.raises(LmforgeError, match=message) as error:
        read_run_record(tmp_path)
    assert "\n" not in str(error.value)


def test_registration_needs_the_record_of_the_run_that_trained_the_model(tmp_path, monkeypatch):
    """A fine-tuned model without its run record (trained elsewhere, runs/ deleted) is not registered
    with a lineage that points nowhere: the registry says which file is missing and what writes it."""
    from lmforge.components.params_file import validate_params
    from lmforge.components.registry import register

    monkeypatch.chdir(tmp_path)
    params = validate_params({"finetune": {"runs_dir": "elsewhere"}})
    (tmp_path / "models" / "bert-sst2").mkdir(parents=True)
    metrics = tmp_path / "reports" / "metrics" / "bert-sst2.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"main_metric": "accuracy", "validation": {"accuracy": 0.75}}))
    monkeypatch.setattr(register, "scorer", lambda *_: register.Scorer("accuracy", True, tmp_path, lambda _: 0.75))
    with pytest.raises(LmforgeError, match=r"^elsewhere/finetune-bert-sst2/run.json: run record not found .* "
                                           r"run the stage that trains into elsewhere/finetune-bert-sst2 first"):
        register.candidate(params, "bert-sst2")
