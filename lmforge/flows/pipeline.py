"""The flows users run: the whole pipeline, and its parts on their own.

Flows only wire stages. Each reads dvc.yaml's graph (its stages, their order and commands: the one
definition of the pipeline), picks its part by stage name, and runs each stage through
`run_stage`, which skips what DVC says is current and records what ran. Registration is a stage
(`register@<run>`, `register-pretrained@<model>`) like the others. Each flow run opens one MLflow
parent run in the experiment `<tracking.experiment>-<flow>`; every stage run nests under it.

A flow run reads params.yaml when it starts (a deployment run from the Prefect UI or a schedule
runs today's file, not a copy taken when it was deployed). Parameters given to the run (`params`,
or `overrides` as `section.key=value`) apply to that run and are written to params.yaml, as
`dvc exp run -S` does, so DVC sees what ran; nothing else in the file changes.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from lmforge.components import stages as S
from lmforge.components.config import FinetuneRun, Params
from lmforge.components.config import FINETUNE_TASKS  # the finetune form's choice of tasks
from lmforge.components.console import CONSOLE
from lmforge.components.errors import LmforgeError
from lmforge.components.params_file import DEFAULT_PARAMS, load_params, write_params
from lmforge.components.tracking import client_run, parent_run
from lmforge.components.tracking import flow_run as flow_run_id
from lmforge.components.versioning import DvcProject, Recorder
from lmforge.flows.tasks import StageOutcome, metrics_summary, run_stage, stage_options


@contextlib.contextmanager
def flow_tracking(params: Params, flow_name: str) -> Iterator[Params]:
    """Params whose stages log into this flow's experiment, nested under one parent run; every run
    opened meanwhile is tagged with the Prefect flow run's id (lmforge.flow_run)."""
    from prefect.runtime import flow_run

    tracking = params.tracking.model_copy(update={"experiment": f"{params.tracking.experiment}-{flow_name}"})
    params = params.model_copy(update={"tracking": tracking})
    if not tracking.enabled:
        yield params
        return
    tags = {"prefect.flow_run_id": str(flow_run.id or ""), "prefect.flow_run_url": str(flow_run.ui_url or ""),
            "prefect.flow": flow_name}
    flow_token = flow_run_id.set(str(flow_run.id or "") or None)
    try:
        with client_run(tracking, str(flow_run.name or flow_name), tags, stage="flow") as (_, run_id):
            token = parent_run.set(run_id)
            try:
                yield params
            finally:
                parent_run.reset(token)
    finally:
        flow_run_id.reset(flow_token)


def resolve_params(params: Params | None, params_file: str, overrides: list[str] | None = None) -> Params:
    """The run's params: params.yaml as it is now, or `params` when given, with `overrides` on top;
    what differs from the file is written to it (DVC compares against it), nothing else."""
    on_disk = load_params(params_file)
    if params is None and not overrides:
        return on_disk
    if overrides:
        from lmforge.components.params_file import apply_override, validate_params

        raw = (params or on_disk).model_dump(mode="json")
        for item in overrides:
            apply_override(raw, item)
        params = validate_params(raw, origin="overrides")
    changed = write_params(params, params_file, base=on_disk)
    if changed:
        get_run_logger().info("params.yaml updated for this run: %s", ", ".join(changed), extra=CONSOLE)
    return params


@dataclass(frozen=True)
class Step:
    stage: S.PlannedStage
    upstream: frozenset[str]    # the selected stages it waits for


def plan(params: Params, patterns: list[str], with_upstream: bool = False) -> list[Step]:
    """The stages of dvc.yaml whose names match `patterns` (shell patterns: `register@*`), and with
    `with_upstream` every stage they depend on, as `dvc repro TARGET` does; in the graph's order."""
    graph = DvcProject(".").stages()
    chosen = {s.name for s in graph if any(fnmatch.fnmatchcase(s.name, p) for p in patterns)}
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(s.name, p) for s in graph)]
    if unknown and with_upstream:  # targets the user typed: a typo should not run nothing in silence
        raise LmforgeError(f"pipeline targets: {', '.join(unknown)} match no stage of dvc.yaml "
                           f"(its stages: {', '.join(s.name for s in graph)})")
    if with_upstream:
        chosen |= {u for s in graph if s.name in chosen for u in s.upstream}
    return [Step(S.plan(s.name, s.cmd, params), s.upstream & chosen) for s in graph if s.name in chosen]


def run_all(steps: list[Step], params: Params, force: bool, log_path: Path | None = None) -> list[StageOutcome]:
    """Run the steps in order, or up to orchestration.max_parallel_stages at a time, each once the
    stages it depends on have finished and are recorded in dvc.lock (recording runs beside the next
    stage). Each runs on its share of the cores: in a worker process when it starts beside others
    (stage_processes), else in this one. A failed stage fails the flow after what runs has finished."""
    task = run_stage.with_options(**stage_options(params.orchestration.retries, params.orchestration.retry_delay_s))
    dvc = DvcProject(".")
    stale = None if force else dvc.stale()

    def known(step: Step, outcomes: dict[str, StageOutcome]) -> list[str] | None:
        """Why the stage reruns, or [] when it does not, as far as the status before the flow tells:
        a stage that was stale still is; one that was not may be, once a stage it depends on ran."""
        if stale is None:
            return None
        if step.stage.dvc_name in stale:
            return stale[step.stage.dvc_name] or None  # listed without a reason: ask again
        ran = {name for name, o in outcomes.items() if o.status == "ran"}
        return None if step.upstream & ran else []

    def ended(outcome: StageOutcome) -> StageOutcome:
        if outcome.status == "ran":
            recorder.add(outcome.stage)
        return outcome

    width = params.orchestration.max_parallel_stages
    with Recorder(dvc, params.orchestration.record_within_s) as recorder:
        if width == 1:
            done: dict[str, StageOutcome] = {}
            for step in steps:
                recorder.wait_for(step.upstream)
                done[step.stage.dvc_name] = ended(task(step.stage, force, known=known(step, done), record=False))
            return list(done.values())
        from prefect.futures import as_completed

        from lmforge.flows.stage_processes import StageProcesses, cores, stage_processes

        waiting, running, outcomes, failed = list(steps), {}, {}, None
        with contextlib.ExitStack() as workers:  # started when a stage first starts beside another
            while waiting or running:
                ready = [s for s in waiting if s.upstream <= outcomes.keys()] if failed is None else []
                runs = [s for s in ready if force or known(s, outcomes) != []]  # not known to be current
                for step in ready[:width - len(running)]:
                    waiting.remove(step)
                    recorder.wait_for(step.upstream)
                    beside = step in runs and (bool(running) or len(runs) > 1)
                    if beside and stage_processes.get() is None:
                        workers.enter_context(StageProcesses(width, log_path).installed())
                    # Every stage on the same share of the cores, alone or not: what it computes must not
                    # depend on what else was ready (torch's sums differ in their last bits by thread count).
                    running[step.stage.dvc_name] = task.submit(step.stage, force, known=known(step, outcomes),
                                                               record=False, threads=max(1, cores() // width),
                                                               beside=beside)
                if not running:
                    break
                future = next(as_completed(list(running.values())))
                name = next(n for n, f in running.items() if f is future)
                del running[name]
                try:
                    outcomes[name] = ended(future.result())
                except BaseException as error:  # noqa: BLE001 - raised again once the running stages end
                    failed = failed or error
    if failed is not None:
        raise failed
    return [outcomes[s.stage.dvc_name] for s in steps]


def registrations(outcomes: list[StageOutcome]) -> list[dict]:
    """The receipts of the register stages that ran and registered a version (or found one)."""
    receipts = [json.loads(Path(o.outputs[0]).read_text()) for o in outcomes
                if o.status == "ran" and o.stage.startswith("register") and o.outputs]
    return [r for r in receipts if r.get("registered")]


def publish_summary(flow_name: str, params: Params, outcomes: list[StageOutcome], registered: list[dict]) -> str:
    """A Prefect markdown artifact: what ran or was skipped, key metrics, registered versions."""
    lines = [f"# lmforge {flow_name}", "", "| stage | status | why | seconds |", "|---|---|---|---|"]
    lines += [f"| {o.stage} | {o.status} | {o.reason} | {o.seconds:.1f} |" for o in outcomes]
    metrics = metrics_summary([p for o in outcomes for p in o.outputs])
    if metrics:
        lines += ["", "| metrics file | headline |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in metrics.items()]
    if registered:
        ui = params.tracking.ui_url.rstrip("/")
        lines += ["", "| registered model | version | metric | champion? | decision |", "|---|---|---|---|---|"]
        for r in registered:
            link = f"[{r['model']}]({ui}/#/models/{r['model']}/versions/{r['version']})"
            lines.append(f"| {link} | {r['version']} | {r['metric']} {r['value']:.4f} | "
                         f"{'yes' if r['promoted'] else 'no'} | {r['reason']} |")
    markdown = "\n".join(lines)
    # Prefect allows lowercase letters, digits and dashes in a key: evaluate_and_register would fail the flow.
    create_markdown_artifact(markdown, key=f"lmforge-{flow_name.replace('_', '-')}",
                             description=f"lmforge {flow_name} summary")
    return markdown


def run_flow(flow_name: str, params: Params, patterns: list[str], force: bool, with_upstream: bool = False) -> dict:
    """Plan, run and summarise one flow's part of the graph, tracked as one MLflow parent run."""
    from prefect.runtime import flow_run

    from lmforge.components.console import debugging, log_file, quiet_library_bars

    if not debugging():  # as the CLI leaves them: a run Prefect starts itself never went through it
        quiet_library_bars()

    # Everything this flow run logs, unfiltered (the console shows a line per stage): runs/<flow run>/log.txt.
    with log_file(Path("runs") / str(flow_run.name or flow_name) / "log.txt") as log, \
            flow_tracking(params, flow_name) as tracked:
        steps = plan(tracked, patterns, with_upstream)
        get_run_logger().info("%s: flow run %s, %d stage(s); full log %s", flow_name, flow_run.name, len(steps), log,
                              extra=CONSOLE)
        outcomes = run_all(steps, tracked, force, log)
        registered = registrations(outcomes)
        publish_summary(flow_name, tracked, outcomes, registered)
    return {"stages": [asdict(o) for o in outcomes], "registered": registered}


def with_settings(params: Params, params_file: str, settings: dict[str, Any]) -> Params:
    """`params` with the flow's typed fields set (dotted key -> value; None leaves the key as it is),
    validated as params.yaml is (a bad value fails naming its key) and written to the file for this
    run, as `overrides` are, so DVC sees what ran."""
    from lmforge.components.params_file import validate_params

    chosen = {key: value for key, value in settings.items() if value is not None}
    if not chosen:
        return params
    raw = params.model_dump(mode="json")
    for dotted, value in chosen.items():
        *sections, last = dotted.split(".")
        node = raw
        for section in sections:
            node = node[section]
        node[last] = value
    updated = validate_params(raw, origin="flow parameters")
    if changed := write_params(updated, params_file, base=params):
        get_run_logger().info("params.yaml updated for this run: %s", ", ".join(changed))
    return updated


# The flows' parameters, in the order the Prefect run form shows them: the few typed fields users
# change most first, then `overrides` (any key, as -S), the whole `params` object and the file. The
# Args sections are the form's field descriptions (Prefect reads them from the docstrings), shown as
# markdown: no <angle brackets> (an HTML tag to the UI) or asterisks in them.
# log_prints stays off: lmforge logs through `logging`, and with it on, Prefect takes every print of
# the process, even dill's disassembly that datasets reads back to fingerprint a .map function.
@flow(name="pipeline")
def pipeline(targets: list[str] | None = None, force: bool = False, overrides: list[str] | None = None,
             params: Params | None = None, params_file: str = DEFAULT_PARAMS) -> dict:
    """Every stage of dvc.yaml: ingest -> tokenizer -> pretrain -> fine-tune, prompt -> evaluate ->
    report -> register. With `targets` (stage names or patterns), those and what they depend on.

    Args:
        targets: stages to bring up to date, with what they depend on: names or shell patterns of
            dvc.yaml's stages (finetune@bert-sst2); empty: every stage
        force: run every chosen stage even where DVC says it is current
        overrides: params for this run as section.key=value (finetune.train.learning_rate=0.002);
            written to params.yaml
        params: the whole params object for this run instead of params.yaml's (written to it)
        params_file: the params file the run reads and records what ran in
    """
    params = resolve_params(params, params_file, overrides)
    return run_flow("pipeline", params, targets or ["*"], force, with_upstream=bool(targets))


@flow(name="pretrain")
def pretrain(models: list[Literal["bert", "gpt", "seq2seq"]] | None = None, max_steps: int | None = None,
             force: bool = False, overrides: list[str] | None = None, params: Params | None = None,
             params_file: str = DEFAULT_PARAMS) -> dict:
    """Pretrain the models on the ingested corpus (ingesting and training tokenizers if needed), register them.

    Args:
        models: which models to pretrain and register (bert, gpt, seq2seq); empty: all three
        max_steps: optimizer steps of each chosen model's pretraining (pretrain.MODEL.train.max_steps);
            empty: as params.yaml says
        force: pretrain again even where DVC says the models are current
        overrides: params for this run as section.key=value (pretrain.bert.train.learning_rate=0.001);
            written to params.yaml
        params: the whole params object for this run instead of params.yaml's (written to it)
        params_file: the params file the run reads and records what ran in
    """
    params = resolve_params(params, params_file, overrides)
    chosen = models or list(type(params.pretrain).model_fields)
    params = with_settings(params, params_file, {f"pretrain.{m}.train.max_steps": max_steps for m in chosen})
    return run_flow("pretrain", params, [f"register-pretrained@{m}" for m in chosen], force, with_upstream=True)


@flow(name="finetune")
def finetune(tasks: list[Literal[FINETUNE_TASKS]], model: Literal["bert", "gpt"] = "bert", init: str = "pretrained",
             learning_rate: float | None = None, epochs: int | None = None, force: bool = False,
             overrides: list[str] | None = None, params: Params | None = None,
             params_file: str = DEFAULT_PARAMS) -> dict:
    """Fine-tune `model` on each task from `init`, evaluate and register each. The runs join
    finetune.runs in params.yaml (so dvc.yaml's foreach has their stages).

    Args:
        tasks: the tasks to fine-tune on, a run each (GLUE tasks, squad, squad_v2, conll2003)
        model: the model family: bert, or gpt (GLUE tasks only)
        init: where the weights start: pretrained (models/MODEL-pretrained), scratch (random), a local
            Hugging Face folder, or a registered model as models:/NAME@ALIAS
        learning_rate: AdamW's peak learning rate (finetune.train.learning_rate); empty: as params.yaml says
        epochs: passes over the training data (finetune.train.max_epochs, with max_steps -1 so the epochs
            decide); empty: as params.yaml says
        force: fine-tune again even where DVC says a run is current
        overrides: params for this run as section.key=value (finetune.train.batch_size=16); written to
            params.yaml
        params: the whole params object for this run instead of params.yaml's (written to it)
        params_file: the params file the run reads and records what ran in
    """
    from lmforge.components.registry.packaging import resolve_init

    base = resolve_params(params, params_file, overrides)
    # finetune.train is shared by every fine-tuning run (dvc.yaml's finetune stages all depend on it):
    # a value set here is recorded there, and `dvc status` then lists the runs that trained otherwise.
    base = with_settings(base, params_file, {"finetune.train.learning_rate": learning_rate,
                                             "finetune.train.max_epochs": epochs,
                                             "finetune.train.max_steps": None if epochs is None else -1})
    params = base.model_copy(deep=True)
    init = resolve_init(init, params.tracking, params.finetune.models_dir)
    names = []
    for t in tasks:
        run = FinetuneRun(task=t, model=model, init=init)
        params.finetune.runs[run.name] = run
        names.append(run.name)
    # Only the new runs are written: finetune flows running at once each add theirs.
    if added := write_params(params, params_file, base=base):
        get_run_logger().info("params.yaml: added %s", ", ".join(added))
    return run_flow("finetune", params, [f"{stage}@{n}" for n in names for stage in ("finetune", "evaluate",
                                                                                     "register")], force)


@flow(name="evaluate_and_register")
def evaluate_and_register(models: list[str] | None = None, force: bool = False, overrides: list[str] | None = None,
                          params: Params | None = None, params_file: str = DEFAULT_PARAMS) -> dict:
    """Score fine-tuned models without training, write the reports, and register (through the gate)
    `models` (finetune run names), or every model.

    Args:
        models: finetune run names to evaluate and register (bert-sst2); empty: every model, the
            pretrained ones included
        force: evaluate and register again even where DVC says they are current
        overrides: params for this run as section.key=value (registry.min_improvement=0.01); written to
            params.yaml
        params: the whole params object for this run instead of params.yaml's (written to it)
        params_file: the params file the run reads and records what ran in
    """
    params = resolve_params(params, params_file, overrides)
    patterns = ([f"{stage}@{m}" for m in models for stage in ("evaluate", "register")] if models is not None
                else ["evaluate@*", "register@*", "register-pretrained@*"])
    return run_flow("evaluate_and_register", params, [*patterns, "report"], force)


@flow(name="retrain")
def retrain(overrides: list[str] | None = None, params: Params | None = None,
            params_file: str = DEFAULT_PARAMS) -> dict:
    """Re-ingest; if the data's DVC hash changed, rerun the pipeline (every stage the change reaches,
    the champions rescored on the new evaluation data by the gate); else stop early.

    Args:
        overrides: params for this run as section.key=value (registry.min_improvement=0.01); written to
            params.yaml
        params: the whole params object for this run instead of params.yaml's (written to it)
        params_file: the params file the run reads and records what ran in
    """
    params = resolve_params(params, params_file, overrides)
    dvc = DvcProject(".")
    before = dvc.out_hash(params.ingest.out_dir)
    ingested = run_flow("retrain", params, ["ingest"], force=True)
    after = dvc.out_hash(params.ingest.out_dir)
    if before is not None and before == after:
        reason = f"data unchanged ({params.ingest.out_dir} md5 {after}): nothing to retrain"
        get_run_logger().info(reason)
        return {**ingested, "retrained": False, "reason": reason}
    result = pipeline(params=params, params_file=params_file)
    reason = f"data changed ({params.ingest.out_dir} md5 {before} -> {after})"
    return {**result, "stages": ingested["stages"] + result["stages"], "retrained": True, "reason": reason}


FLOWS = {"pipeline": pipeline, "pretrain": pretrain, "finetune": finetune,
         "evaluate_and_register": evaluate_and_register, "retrain": retrain}
