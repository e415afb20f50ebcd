"""The flows users run: the whole pipeline, and its parts on their own.

Flows only wire stages (components/stages.py) through `run_stage`, which skips what DVC says is
current and records what ran. Each flow run opens one MLflow parent run in the experiment
`<tracking.experiment>-<flow>`; every stage run nests under it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components import stages as S
from components.config import DEFAULT_PARAMS, FinetuneRun, Params, load_params, write_params
from components.tracking import client_run, parent_run
from components.versioning import DvcProject
from flows.tasks import StageOutcome, metrics_summary, run_stage, stage_options


@contextlib.contextmanager
def flow_tracking(params: Params, flow_name: str) -> Iterator[Params]:
    """Params whose stages log into this flow's experiment, nested under one parent run."""
    from prefect.runtime import flow_run

    tracking = params.tracking.model_copy(update={"experiment": f"{params.tracking.experiment}-{flow_name}"})
    params = params.model_copy(update={"tracking": tracking})
    if not tracking.enabled:
        yield params
        return
    tags = {"prefect.flow_run_id": str(flow_run.id or ""), "prefect.flow_run_url": str(flow_run.ui_url or ""),
            "prefect.flow": flow_name}
    with client_run(tracking, str(flow_run.name or flow_name), tags) as (_, run_id):
        token = parent_run.set(run_id)
        try:
            yield params
        finally:
            parent_run.reset(token)


def resolve_params(params: Params | None, params_file: str) -> Params:
    """The flow's params, written to the params file where they differ (DVC compares against it)."""
    if params is None:
        return load_params(params_file)
    changed = write_params(params, params_file)
    if changed:
        get_run_logger().info("params.yaml updated for this run: %s", ", ".join(changed))
    return params


def run_all(planned: list[S.PlannedStage], params: Params, force: bool) -> list[StageOutcome]:
    options = stage_options(params.orchestration.retries, params.orchestration.retry_delay_s)
    return [run_stage.with_options(**options)(p, force) for p in planned]


@task(cache_policy=NO_CACHE)
def register_models(params: Params, names: list[str] | None = None) -> list[dict]:
    """Register each model in MLflow (skipping weights already registered) and apply the gate."""
    from components.registry import register, workspace_candidates

    if not (params.registry.enabled and params.tracking.enabled):
        return []
    rescore = _rescorer(params)
    return [asdict(register(c, params.registry, params.tracking, rescore(c.name)))
            for c in workspace_candidates(params, names)]


def _rescorer(params: Params):
    """For the gate: scores a champion's folder on today's evaluation data, as the evaluate stage does."""
    def for_model(name: str):
        run = params.finetune.runs.get(name)
        if run is None:
            return None

        def score(folder: Path) -> float:
            import json
            import tempfile

            from components.config import EvaluateConfig, TrackingConfig
            from components.evaluation.evaluate import evaluate_model
            from components.registry import validation_value

            with tempfile.TemporaryDirectory() as tmp:
                cfg = EvaluateConfig(model=str(folder), dataset=run.dataset or run.task, out_dir=tmp)
                out = evaluate_model(cfg, Path(params.ingest.out_dir), TrackingConfig(enabled=False), params.finetune)
                return validation_value(json.loads((out / "metrics.json").read_text()))
        return score
    return for_model


def publish_summary(flow_name: str, params: Params, outcomes: list[StageOutcome], registrations: list[dict]) -> str:
    """A Prefect markdown artifact: what ran or was skipped, key metrics, registered versions."""
    lines = [f"# lmforge {flow_name}", "", "| stage | status | why | seconds |", "|---|---|---|---|"]
    lines += [f"| {o.stage} | {o.status} | {o.reason} | {o.seconds:.1f} |" for o in outcomes]
    metrics = metrics_summary([p for o in outcomes for p in o.outputs])
    if metrics:
        lines += ["", "| metrics file | headline |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in metrics.items()]
    if registrations:
        ui = params.tracking.ui_url.rstrip("/")
        lines += ["", "| registered model | version | metric | champion? | decision |", "|---|---|---|---|---|"]
        for r in registrations:
            link = f"[{r['model']}]({ui}/#/models/{r['model']}/versions/{r['version']})"
            lines.append(f"| {link} | {r['version']} | {r['metric']} {r['value']:.4f} | "
                         f"{'yes' if r['promoted'] else 'no'} | {r['reason']} |")
    markdown = "\n".join(lines)
    # Prefect allows lowercase letters, digits and dashes in a key: evaluate_and_register would fail the flow.
    create_markdown_artifact(markdown, key=f"lmforge-{flow_name.replace('_', '-')}",
                             description=f"lmforge {flow_name} summary")
    return markdown


def _result(outcomes: list[StageOutcome], registrations: list[dict], **extra) -> dict:
    return {"stages": [asdict(o) for o in outcomes], "registered": registrations, **extra}


# log_prints stays off: lmforge logs through `logging`, and with it on, Prefect takes every print of
# the process, even dill's disassembly that datasets reads back to fingerprint a .map function.
@flow(name="pipeline")
def pipeline(params: Params | None = None, force: bool = False, params_file: str = DEFAULT_PARAMS) -> dict:
    """ingest -> tokenizer -> pretrain BERT and GPT -> fine-tune -> prompt -> evaluate -> report -> register."""
    params = resolve_params(params, params_file)
    with flow_tracking(params, "pipeline") as params:
        outcomes = run_all([S.PlannedStage("ingest", S.ingest, params),
                            S.PlannedStage("tokenizer", S.tokenizer, params)], params, force)
        outcomes += _pretrain(params, force)
        outcomes += run_all([*S.finetune_stages(params), *S.prompt_stages(params), *S.evaluate_stages(params),
                             S.PlannedStage("report", S.report, params)], params, force)
        registrations = register_models(params)
        publish_summary("pipeline", params, outcomes, registrations)
    return _result(outcomes, registrations)


def _pretrain(params: Params, force: bool) -> list[StageOutcome]:
    planned = [S.PlannedStage("pretrain_bert", S.pretrain_bert, params),
               S.PlannedStage("pretrain_gpt", S.pretrain_gpt, params)]
    if not params.orchestration.parallel_pretraining:
        return run_all(planned, params, force)
    options = stage_options(params.orchestration.retries, params.orchestration.retry_delay_s)
    futures = [run_stage.with_options(**options).submit(p, force) for p in planned]
    return [f.result() for f in futures]


@flow(name="pretrain")
def pretrain(params: Params | None = None, force: bool = False, params_file: str = DEFAULT_PARAMS) -> dict:
    """Pretrain BERT and GPT on the ingested corpus (ingesting and training tokenizers if needed)."""
    params = resolve_params(params, params_file)
    with flow_tracking(params, "pretrain") as params:
        outcomes = run_all([S.PlannedStage("ingest", S.ingest, params),
                            S.PlannedStage("tokenizer", S.tokenizer, params)], params, force)
        outcomes += _pretrain(params, force)
        registrations = register_models(params, ["bert-pretrained", "gpt-pretrained"])
        publish_summary("pretrain", params, outcomes, registrations)
    return _result(outcomes, registrations)


@flow(name="finetune")
def finetune(tasks: list[str], model: str = "bert", init: str = "pretrained", params: Params | None = None,
             force: bool = False, params_file: str = DEFAULT_PARAMS) -> dict:
    """Fine-tune `model` on each task from `init`: pretrained, scratch, a local HF folder, or a
    registered model as models:/<name>@<alias>. The runs join finetune.runs in params.yaml."""
    from components.registry import resolve_init

    base = resolve_params(params, params_file)
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
    with flow_tracking(params, "finetune") as params:
        outcomes = run_all([*S.finetune_stages(params, names), *S.evaluate_stages(params, names)], params, force)
        registrations = register_models(params, names)
        publish_summary("finetune", params, outcomes, registrations)
    return _result(outcomes, registrations)


@flow(name="evaluate_and_register")
def evaluate_and_register(models: list[str] | None = None, params: Params | None = None, force: bool = False,
                          params_file: str = DEFAULT_PARAMS) -> dict:
    """Score fine-tuned models without training, write the reports, and register (through the gate)."""
    params = resolve_params(params, params_file)
    with flow_tracking(params, "evaluate_and_register") as params:
        outcomes = run_all([*S.evaluate_stages(params, models), S.PlannedStage("report", S.report, params)],
                           params, force)
        registrations = register_models(params, models)
        publish_summary("evaluate_and_register", params, outcomes, registrations)
    return _result(outcomes, registrations)


@flow(name="retrain")
def retrain(params: Params | None = None, params_file: str = DEFAULT_PARAMS) -> dict:
    """Re-ingest; if the data's DVC hash changed, rerun the pipeline and register; else stop early."""
    params = resolve_params(params, params_file)
    dvc = DvcProject(".")
    before = dvc.out_hash(params.ingest.out_dir)
    with flow_tracking(params, "retrain") as tracked:
        outcomes = run_all([S.PlannedStage("ingest", S.ingest, tracked)], tracked, force=True)
    after = dvc.out_hash(params.ingest.out_dir)
    if before is not None and before == after:
        reason = f"data unchanged ({params.ingest.out_dir} md5 {after}): nothing to retrain"
        get_run_logger().info(reason)
        publish_summary("retrain", params, outcomes, [])
        return _result(outcomes, [], retrained=False, reason=reason)
    result = pipeline(params=params, params_file=params_file)
    reason = f"data changed ({params.ingest.out_dir} md5 {before} -> {after})"
    return {**result, "stages": [asdict(o) for o in outcomes] + result["stages"], "retrained": True, "reason": reason}


FLOWS = {"pipeline": pipeline, "pretrain": pretrain, "finetune": finetune,
         "evaluate_and_register": evaluate_and_register, "retrain": retrain}
