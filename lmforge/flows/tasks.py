"""Prefect tasks around lmforge's stages: skip what DVC says is current, run, record in DVC.

Retries are for transient faults only (a tracking server that refused a connection); a user
error (LmforgeError) or a bug fails the task at once with its message in the flow's log. A stage
whose tracking server stops answering fails with one TrackingUnavailable naming the URI, which is
both: retried `orchestration.retries` times, then reported as that one line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lmforge.components.console import CONSOLE
from lmforge.components.errors import LmforgeError
from lmforge.components.stages import PlannedStage
from lmforge.components.tracking import server_errors
from lmforge.components.versioning import DvcProject
from lmforge.flows.stage_processes import stage_processes, torch_threads

TRANSIENT_MARKERS = ("Connection refused", "Max retries exceeded", "Temporary failure in name resolution",
                     "Read timed out", "RemoteDisconnected", "502 Bad Gateway", "503 Service Unavailable")


HEADLINE_KEYS = ("score", "val_perplexity", "accuracy")  # the first a metrics JSON has is its headline


@dataclass
class StageOutcome:
    stage: str
    status: str            # ran | skipped | failed
    reason: str
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)


def is_transient(error: BaseException | None) -> bool:
    """Worth retrying: the network or a server, never the user's input or our code."""
    if getattr(error, "transient", False):  # TrackingUnavailable: a user error that may pass by itself
        return True
    if error is None or isinstance(error, LmforgeError):
        return False
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    text = f"{type(error).__name__}: {error}"
    return any(marker in text for marker in TRANSIENT_MARKERS)


def _retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except BaseException as error:  # noqa: BLE001 - the state's own exception, re-raised by result()
        return is_transient(error)
    return False


@task(task_run_name="{planned.dvc_name}", cache_policy=NO_CACHE, retry_condition_fn=_retry_transient)
def run_stage(planned: PlannedStage, force: bool = False, root: str = ".", known: list[str] | None = None,
              record: bool = True, threads: int = 0, beside: bool = False) -> StageOutcome:
    """Run one stage unless DVC says its deps, params and outs are what dvc.lock recorded.
    `known`: what the flow's one `dvc status` of the whole pipeline said of it (empty: unchanged),
    where nothing it depends on has run since; None: ask DVC now. `record`: record it in dvc.lock
    here (a flow's Recorder does it instead, while the next stage runs). `threads`: torch's threads for
    it (0: as they are); `beside`: the flow started it while other stages run, so it runs in a worker
    process (stage_processes)."""
    logger = get_run_logger()
    dvc = DvcProject(root)
    changes = dvc.changes(planned.dvc_name) if known is None else known
    if not changes and not force:
        outcome = StageOutcome(planned.dvc_name, "skipped", "unchanged since dvc.lock")
        logger.info("%s", console_line(outcome), extra=CONSOLE)
        return outcome
    reason = "forced" if force else "; ".join(changes)
    logger.info("%s: running (%s)", planned.dvc_name, reason)
    start = time.perf_counter()
    try:
        with server_errors(planned.params.tracking, planned.dvc_name):  # the stage's own MLflow calls too
            if planned.processes > 1:
                outputs = run_command(planned, logger)
            elif beside and (processes := stage_processes.get()) is not None:
                outputs = processes.run(planned, threads)
            else:
                with torch_threads(threads):
                    outputs = planned.function(planned.params)
    except BaseException as error:
        failed = StageOutcome(planned.dvc_name, "failed", str(error).splitlines()[0] if str(error) else
                              type(error).__name__, time.perf_counter() - start)
        logger.error("%s", console_line(failed), extra=CONSOLE)
        raise
    if record:
        dvc.record(planned.dvc_name)
    outcome = StageOutcome(planned.dvc_name, "ran", reason, time.perf_counter() - start, [str(p) for p in outputs])
    logger.info("%s", console_line(outcome), extra=CONSOLE)
    return outcome


def console_line(outcome: StageOutcome) -> str:
    """The one console line of a stage: ran (seconds, its headline number, why), skipped, or failed."""
    if outcome.status == "skipped":
        return f"  {outcome.stage:<38} skipped  {outcome.reason}"
    if outcome.status == "failed":
        return f"✗ {outcome.stage:<38} failed after {outcome.seconds:.1f} s: {outcome.reason}"
    why = outcome.reason if len(outcome.reason) <= 44 else outcome.reason[:43] + "…"
    numbers = headline(outcome.outputs)
    return f"✓ {outcome.stage:<38} {outcome.seconds:6.1f} s  " + (f"{numbers}  " if numbers else "") + f"({why})"


def run_command(planned: PlannedStage, logger) -> list[Path]:
    """Run a stage whose training takes several processes as `lmforge stage NAME` (Lightning starts
    the other ranks by running that command again, which the flow's own process must not be), under
    exactly the planned params, nested in the flow's MLflow run; its output goes to the flow's log."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    import yaml

    from lmforge.components.tracking import FLOW_RUN_ENV, PARENT_RUN_ENV, flow_run, parent_run

    from lmforge.components.cli import OUTPUTS_ENV

    with tempfile.TemporaryDirectory(prefix=".lmforge-stage-", dir=".") as tmp:
        params_file, outputs = Path(tmp) / "params.yaml", Path(tmp) / "outputs.json"
        params_file.write_text(yaml.safe_dump(planned.params.model_dump(mode="json"), sort_keys=False))
        env = {**os.environ, PARENT_RUN_ENV: parent_run.get() or "", FLOW_RUN_ENV: flow_run.get() or "",
               OUTPUTS_ENV: str(outputs)}
        command = [sys.executable, "-m", "lmforge.components.cli", "stage", planned.name, "-p", str(params_file)]
        logger.info("%s: %d processes: %s", planned.dvc_name, planned.processes, " ".join(command[2:]))
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in process.stdout:
            lines.append(line.rstrip())
            logger.info("%s", line.rstrip())
        process.wait()
        errors = [line.removeprefix("lmforge: error: ") for line in lines if line.startswith("lmforge: error: ")]
        if process.returncode == 2 and errors:
            raise LmforgeError(errors[-1])
        if process.returncode != 0:
            raise RuntimeError(f"{planned.dvc_name}: `lmforge stage {planned.name}` exited with {process.returncode}:"
                               "\n" + "\n".join(lines[-30:]))
        return [Path(p) for p in json.loads(outputs.read_text())]


def stage_options(retries: int, delay_s: float) -> dict:
    """`run_stage.with_options(...)` for the flow's retry settings."""
    return {"retries": retries, "retry_delay_seconds": delay_s}


def metrics_summary(paths: list[str | Path]) -> dict[str, float]:
    """The headline number of each metrics JSON a stage wrote."""
    import json

    summary = {}
    for path in map(Path, paths):
        if path.suffix == ".json" and path.exists():
            data = json.loads(path.read_text())
            for key in HEADLINE_KEYS:
                if isinstance(data.get(key), (int, float)):
                    summary[path.stem] = float(data[key])
                    break
    return summary


def registration_words(receipt: dict) -> str:
    """What the gate did, in a few words: a version already holding these weights is said so, not
    'not promoted' (it may well be the champion)."""
    if receipt.get("skipped"):
        return "already registered"
    return "champion now" if receipt["promoted"] else "not promoted"


def headline(paths: list[str | Path]) -> str:
    """A stage's outcome in a few words: its metrics' headline numbers, or what a register stage did."""
    import json

    words = []
    for path in map(Path, paths):
        data = json.loads(path.read_text()) if path.suffix == ".json" and path.exists() else None
        if not isinstance(data, dict):
            continue
        if data.get("registered") and "promoted" in data:  # a register stage's receipt: what the gate decided
            words.append(f"v{data['version']} {registration_words(data)}")
        key = next((k for k in HEADLINE_KEYS if isinstance(data.get(k), (int, float))), None)
        if key:
            words.append(f"{key} {data[key]:.4g}")
    return ", ".join(words[:2]) + (", …" if len(words) > 2 else "")
