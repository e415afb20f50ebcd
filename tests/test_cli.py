import subprocess
import sys

import yaml

from components.cli import main
from tests.conftest import REPO


def test_params_prints_effective_values(capsys):
    assert main(["params", "-p", str(REPO / "params.yaml"), "-S", "tokenizer.bert.vocab_size=1234"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["tokenizer"]["bert"]["vocab_size"] == 1234
    assert printed["ingest"]["demo"]["enabled"] is True


def test_user_error_is_one_line_exit_2_no_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "components.cli", "params", "-p", str(REPO / "params.yaml"),
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
