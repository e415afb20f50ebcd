"""Every pipeline stage as one function of the effective params, named as in dvc.yaml.

`lmforge stage NAME` (what dvc.yaml's commands run) and the Prefect flows both call these, so a
stage behaves the same whichever way it runs. Each returns the paths it wrote. Imports stay
inside the functions so `lmforge params` starts instantly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from components.config import FinetuneRun, Params, PromptRun


def ingest(params: Params) -> list[Path]:
    from components.data.ingest import ingest as run

    return [run(params.ingest, Path(params.ingest.out_dir))]


def tokenizer(params: Params) -> list[Path]:
    from components.tokenizer import train_tokenizers

    cfg = params.tokenizer
    paths = train_tokenizers(cfg, Path(params.ingest.out_dir) / cfg.corpus, Path(cfg.out_dir), Path(cfg.metrics))
    return [*paths.values(), Path(cfg.metrics)]


def pretrain_bert(params: Params) -> list[Path]:
    from components.pretraining.stages import pretrain_bert as run

    cfg = params.pretrain.bert
    return [run(cfg, Path(params.ingest.out_dir) / cfg.corpus, params.tracking), Path(cfg.metrics)]


def pretrain_gpt(params: Params) -> list[Path]:
    from components.pretraining.stages import pretrain_gpt as run

    cfg = params.pretrain.gpt
    return [run(cfg, Path(params.ingest.out_dir) / cfg.corpus, params.tracking), Path(cfg.metrics)]


def finetune(params: Params) -> list[Path]:
    """The run named by finetune.task/model/init (dvc.yaml passes each configured run with -S);
    an init of models:/<name>@<alias> starts from that registered model."""
    from components.finetuning.stage import finetune as run_finetune

    from components.registry import resolve_init

    cfg = params.finetune
    init = resolve_init(cfg.init, params.tracking, cfg.models_dir)
    run = FinetuneRun(task=cfg.task, model=cfg.model, init=init, dataset=cfg.dataset)
    out = run_finetune(cfg, run, Path(params.ingest.out_dir), params.tracking)
    return [out, Path(cfg.reports_dir) / f"{run.name}.json"]


def prompt(params: Params) -> list[Path]:
    from components.finetuning.prompting import prompt_classify

    cfg = params.prompt
    run = PromptRun(task=cfg.task, shots=cfg.shots, init=cfg.init, dataset=cfg.dataset)
    return [prompt_classify(cfg, run, Path(params.ingest.out_dir), params.tracking)]


def evaluate(params: Params) -> list[Path]:
    from components.evaluation.evaluate import evaluate_model

    return [evaluate_model(params.evaluate, Path(params.ingest.out_dir), params.tracking, params.finetune)]


def report(params: Params) -> list[Path]:
    from components.evaluation.comparison import pretrained_vs_scratch_report
    from components.evaluation.why_bert import why_bert_report

    cfg = params.evaluate
    out = Path(cfg.reports_dir)
    return [why_bert_report(cfg, Path(params.pretrain.bert.out_dir), out),
            pretrained_vs_scratch_report(Path(params.finetune.reports_dir), out)]


# CLI name -> stage function. dvc.yaml names them with underscores (pretrain_bert) and expands
# finetune / prompt / evaluate per configured run (finetune@bert-sst2).
STAGES: dict[str, Callable[[Params], list[Path]]] = {
    "ingest": ingest,
    "tokenizer": tokenizer,
    "pretrain-bert": pretrain_bert,
    "pretrain-gpt": pretrain_gpt,
    "finetune": finetune,
    "prompt": prompt,
    "evaluate": evaluate,
    "report": report,
}


@dataclass(frozen=True)
class PlannedStage:
    """One stage of the pipeline as dvc.yaml names it, with the params it runs under."""

    dvc_name: str
    function: Callable[[Params], list[Path]]
    params: Params


def with_updates(params: Params, section: str, **values) -> Params:
    updated = params.model_copy(deep=True)
    setattr(updated, section, getattr(updated, section).model_copy(update=values))
    return updated


def finetune_stages(params: Params, names: list[str] | None = None) -> list[PlannedStage]:
    runs = params.finetune.runs
    return [PlannedStage(f"finetune@{name}", finetune,
                         with_updates(params, "finetune", task=run.task, model=run.model, init=run.init, dataset=run.dataset))
            for name, run in runs.items() if names is None or name in names]


def prompt_stages(params: Params) -> list[PlannedStage]:
    return [PlannedStage(f"prompt@{name}", prompt,
                         with_updates(params, "prompt", task=run.task, shots=run.shots, init=run.init, dataset=run.dataset))
            for name, run in params.prompt.runs.items()]


def evaluate_stages(params: Params, names: list[str] | None = None) -> list[PlannedStage]:
    return [PlannedStage(f"evaluate@{name}", evaluate, with_updates(params, "evaluate", model=name))
            for name in params.finetune.runs if names is None or name in names]
