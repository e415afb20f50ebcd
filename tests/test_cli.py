import subprocess
import sys
import threading

import pytest
import yaml

from lmforge.components.cli import main
from tests.conftest import REPO, fresh_python, shell_env


def test_params_prints_effective_values(capsys):
    assert main(["params", "-p", str(REPO / "params.yaml"), "-S", "tokenizer.bert.vocab_size=1234"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["tokenizer"]["bert"]["vocab_size"] == 1234
    assert printed["ingest"]["demo"]["enabled"] is True


def test_params_imports_no_data_or_training_library():
    """`lmforge params` and the config it validates load no datasets, torch or MLflow (datasets alone cost
    it 1.5 s of its 2.3 s); the datasets bars stay off for the stages that import it later."""
    code = f"""
import sys
from lmforge.components.cli import main
main(["params", "-p", {str(REPO / "params.yaml")!r}])
print("loaded", sorted(m for m in ("datasets", "torch", "transformers", "mlflow", "lightning") if m in sys.modules))
import datasets
print("bars", datasets.is_progress_bar_enabled())
"""
    assert fresh_python(code, env=shell_env()).splitlines()[-2:] == ["loaded []", "bars False"]


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
    """After the flow's line per stage: what pretraining bought, the registrations, how many stages ran,
    and the commands that open the UIs; no stage is listed twice."""
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
    assert not any("finetune@bert-qnli" in line or "ingest" in line for line in lines)
    assert "  bert  qnli       accuracy               0.930 vs 0.750  pretrained better" in lines
    assert "  lmforge-bert-qnli v2: champion now (accuracy 0.8750; beats champion v1)" in lines
    assert lines[-3].startswith("1 stage(s) ran (12.4 s of stage time), 1 skipped.")
    # with the command's wall time: stages that ran side by side add up to more than it
    assert summary({**result, "stages": result["stages"] * 8}, params, 65.2).splitlines()[-3].startswith(
        "8 stage(s) ran in 1 min 05 s (1 min 39 s of stage time), 8 skipped.")
    assert lines[-2].startswith("MLflow UI:  mlflow ui --backend-store-uri") and lines[-1].startswith("Prefect UI:")


@pytest.mark.parametrize("verbose", [False, True])
def test_known_library_chatter_stays_off_the_console_and_in_the_log_file(verbose, tmp_path):
    """Only lmforge's console lines and warnings reach the console by default: Lightning's per-run INFO
    lines, a stage's own details, the pytree deprecation warning and datasets' bars do not; a flow's log
    file keeps every line; -v shows all."""
    import subprocess
    import sys

    log = tmp_path / "runs" / "flow-1" / "log.txt"
    code = f"""
import logging, warnings
from pathlib import Path
from lmforge.components.console import CONSOLE, configure, log_file
configure({verbose})
import datasets, lightning.pytorch
import lmforge.components.training.trainer  # what every lmforge training imports
from lightning.pytorch.utilities.rank_zero import rank_zero_info
with log_file(Path({str(log)!r})):
    rank_zero_info("GPU available: False")
    warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").warning("a real warning")
    logging.getLogger("lmforge.flows.tasks").info("ingest: ran", extra=CONSOLE)
    logging.getLogger("lmforge.components.data.ingest").info("saving corpus: 2000 rows")
print("bars", datasets.is_progress_bar_enabled())
"""
    done = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, check=True,
                          env=shell_env())
    assert "a real warning" in done.stderr and "ingest: ran" in done.stderr
    assert ("GPU available" in done.stderr) == verbose and ("LeafSpec" in done.stderr) == verbose
    assert ("saving corpus" in done.stderr) == verbose  # a stage's detail: the log file's, not the console's
    assert done.stdout.strip() == f"bars {verbose}"
    kept = log.read_text()
    for line in ("GPU available: False", "LeafSpec", "a real warning", "ingest: ran", "saving corpus"):
        assert line in kept


@pytest.mark.parametrize("argv", [["--tasks", "sts2"], ["--model", "t5"], ["--learning-rate", "fast"]])
def test_a_bad_finetune_flag_is_one_usage_error_exit_2(argv, capsys):
    """A typo in `lmforge flow finetune`'s flags stops before any flow starts, naming the value."""
    from lmforge.components.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["flow", "finetune", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid" in err and argv[1] in err and "Traceback" not in err


def test_the_temporary_prefect_server_boots_beside_the_imports_and_only_without_a_server(monkeypatch):
    """Without PREFECT_API_URL a flow starts Prefect's own server (~4 s): the CLI boots it on another
    thread while it imports torch and the rest, and waits for it before the flow; with a server, not at all."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, temporary_settings

    from lmforge.components.cli import server_ready

    started = []
    monkeypatch.setattr(SubprocessASGIServer, "start", lambda self, timeout=None: started.append(
        threading.current_thread().name))
    own = {PREFECT_API_URL: "", PREFECT_SERVER_EPHEMERAL_ENABLED: True}
    with temporary_settings(updates=own):
        server_ready()
    assert started == ["prefect-server"]
    with temporary_settings(updates={**own, PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        server_ready()
    with temporary_settings(updates={**own, PREFECT_SERVER_EPHEMERAL_ENABLED: False}):
        server_ready()  # Prefect would not start one either: the flow fails with Prefect's own message
    assert started == ["prefect-server"]

    def fails(self, timeout=None):
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")

    monkeypatch.setattr(SubprocessASGIServer, "start", fails)
    with temporary_settings(updates=own), pytest.raises(RuntimeError, match="Timed out"):
        server_ready()


def test_a_flow_the_cli_runs_finds_its_server_booted_first(monkeypatch):
    from lmforge.components import cli
    from lmforge.flows import pipeline

    calls = []
    monkeypatch.setattr(cli, "server_ready", lambda: calls.append("server"))
    monkeypatch.setattr(cli, "up_to_date", lambda: False)
    monkeypatch.setitem(pipeline.FLOWS, "pipeline", lambda **kwargs: calls.append("flow") or {"stages": []})
    monkeypatch.setattr(cli, "summary", lambda result, params, seconds: "")
    assert main(["pipeline", "-p", str(REPO / "params.yaml")]) == 0
    assert calls == ["server", "flow"]


def test_a_registration_that_found_its_weights_already_registered_says_so():
    from lmforge.flows.tasks import headline, registration_words

    assert registration_words({"version": 2, "promoted": True}) == "champion now"
    assert registration_words({"version": 3, "promoted": False}) == "not promoted"
    # The same weights again (a rerun): not "not promoted", which read as if the champion had lost.
    assert registration_words({"version": 1, "promoted": False, "skipped": True}) == "already registered"
    assert headline([]) == ""
