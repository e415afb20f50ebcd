import subprocess
import sys

import pytest
import yaml

from lmforge.components.cli import main
from tests.conftest import REPO


def test_params_prints_effective_values(capsys):
    assert main(["params", "-p", str(REPO / "params.yaml"), "-S", "tokenizer.bert.vocab_size=1234"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["tokenizer"]["bert"]["vocab_size"] == 1234
    assert printed["ingest"]["demo"]["enabled"] is True


def test_user_error_is_one_line_exit_2_no_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "lmforge.components.cli", "params", "-p", str(REPO / "params.yaml"),
         "-S", "tokenizer.bert.vocab_size=5"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "lmforge: error: " + f"{REPO / 'params.yaml'}: tokenizer.bert.vocab_size: must be >= 100, got 5"
    assert "Traceback" not in result.stderr


def test_missing_corpus_is_a_user_error(tmp_path, capsys):
    code = main(["stage", "tokenizer", "-p", str(REPO / "params.yaml"), "-S", f"ingest.out_dir={tmp_path}/none"])
    assert code == 2
    err = capsys.readouterr().err
    assert "corpus not found; run `lmforge stage ingest` first" in err
    assert err.count("\n") == 1


def test_a_flow_ends_with_a_summary_that_answers(tmp_path):
    """One line per stage with its headline number, what pretraining bought, the registrations and
    where to look next."""
    import json

    from lmforge.components.cli import summary
    from lmforge.components.config import Params

    (tmp_path / "m.json").write_text(json.dumps({"score": 0.875}))
    (tmp_path / "pretrained_vs_scratch.json").write_text(json.dumps({"rows": [
        {"model": "bert", "task": "qnli", "main_metric": "accuracy", "pretrained": 0.93, "scratch": 0.75,
         "verdict": "pretrained better"}]}))
    params = Params.model_validate({"evaluate": {"reports_dir": str(tmp_path)}})
    result = {"stages": [
        {"stage": "finetune@bert-qnli", "status": "ran", "reason": "params changed", "seconds": 12.34,
         "outputs": [str(tmp_path / "m.json")]},
        {"stage": "ingest", "status": "skipped", "reason": "up to date", "seconds": 0.1, "outputs": []}],
        "registered": [{"model": "lmforge-bert-qnli", "version": 2, "promoted": True, "metric": "accuracy",
                        "value": 0.875, "reason": "beats champion v1"}]}
    lines = summary(result, params).splitlines()
    assert lines[0].split() == ["finetune@bert-qnli", "ran", "12.3s", "params", "changed", "[m", "0.875]"]
    assert lines[1].split() == ["ingest", "skipped", "0.1s", "up", "to", "date"]
    assert "  bert  qnli       accuracy               0.930 vs 0.750  pretrained better" in lines
    assert "  lmforge-bert-qnli v2: champion now (accuracy 0.8750; beats champion v1)" in lines
    assert lines[-1].startswith("1 stage(s) ran, 1 skipped.") and "mlflow ui --backend-store-uri" in lines[-1]


@pytest.mark.parametrize("verbose", [False, True])
def test_known_library_chatter_stays_off_the_console_and_in_the_log_file(verbose, tmp_path):
    """Lightning's per-run INFO lines, the pytree deprecation warning and datasets' bars are off the
    console by default (warnings still show); a flow's log file keeps every line; -v shows all."""
    import subprocess
    import sys

    log = tmp_path / "runs" / "flow-1" / "log.txt"
    code = f"""
import logging, warnings
from pathlib import Path
from lmforge.components.console import configure, log_file
configure({verbose})
import datasets, lightning.pytorch
import lmforge.components.training.trainer  # what every lmforge training imports
from lightning.pytorch.utilities.rank_zero import rank_zero_info
with log_file(Path({str(log)!r})):
    rank_zero_info("GPU available: False")
    warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").warning("a real warning")
    logging.getLogger("lmforge.components.stages").info("ingest: ran")
print("bars", datasets.is_progress_bar_enabled())
"""
    done = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, check=True)
    assert "a real warning" in done.stderr and "ingest: ran" in done.stderr
    assert ("GPU available" in done.stderr) == verbose and ("LeafSpec" in done.stderr) == verbose
    assert done.stdout.strip() == f"bars {verbose}"
    kept = log.read_text()
    for line in ("GPU available: False", "LeafSpec", "a real warning", "ingest: ran"):
        assert line in kept
