"""Every pipeline stage as one function of the effective params, named as `lmforge stage NAME`.

dvc.yaml is the one definition of the pipeline: its stages, their order, and each stage's command
`lmforge stage NAME [-S key=value ...]`. `dvc repro` runs those commands; the Prefect flows read
the same graph and call the same functions in-process (`plan`), so a stage behaves the same
whichever way it runs. Each returns the paths it wrote. Imports stay inside the functions so
`lmforge params` starts instantly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmforge.components.config import Params, PromptRun, TrainConfig


def ingest(params: Params) -> list[Path]:
    from lmforge.components.data.ingest import ingest as run

    return [run(params.ingest, Path(params.ingest.out_dir))]


def tokenizer(params: Params) -> list[Path]:
    from lmforge.components.tokenizer import train_tokenizers

    cfg = params.tokenizer
    paths = train_tokenizers(cfg, Path(params.ingest.out_dir) / cfg.corpus, Path(cfg.out_dir), Path(cfg.metrics))
    return [*paths.values(), Path(cfg.metrics)]


def pretrain_bert(params: Params) -> list[Path]:
    from lmforge.components.pretraining.pretrain import pretrain_bert as run

    cfg = params.pretrain.bert
    return [run(cfg, Path(params.ingest.out_dir) / cfg.corpus, params.tracking), Path(cfg.metrics)]


def pretrain_gpt(params: Params) -> list[Path]:
    from lmforge.components.pretraining.pretrain import pretrain_gpt as run

    cfg = params.pretrain.gpt
    return [run(cfg, Path(params.ingest.out_dir) / cfg.corpus, params.tracking), Path(cfg.metrics)]


def pretrain_seq2seq(params: Params) -> list[Path]:
    from lmforge.components.pretraining.seq2seq import pretrain_seq2seq as run

    cfg = params.pretrain.seq2seq
    return [run(cfg, Path(params.ingest.out_dir) / cfg.corpus, params.tracking), Path(cfg.metrics)]


def seq2seq_ablation(params: Params) -> list[Path]:
    from lmforge.components.evaluation.seq2seq_ablation import corruption_ablation

    cfg = params.seq2seq_ablation
    return [corruption_ablation(cfg, params.pretrain.seq2seq, Path(params.ingest.out_dir), params.tracking),
            Path(cfg.plot)]


def finetune(params: Params) -> list[Path]:
    """The run finetune.run names (dvc.yaml passes each configured run's name), else the one of
    finetune.task/model/init/seed. It starts from pretrain.<model>.out_dir (pretrained, scratch), a
    folder, or for models:/<name>@<alias> that registered model, downloaded."""
    from lmforge.components.finetuning.finetune import finetune as run_finetune, seeded

    from lmforge.components.registry.packaging import resolve_init

    cfg = params.finetune
    chosen = cfg.selected()
    run = chosen.model_copy(update={"init": resolve_init(chosen.init, params.tracking, cfg.models_dir)})
    cfg = seeded(cfg, run)
    out = run_finetune(cfg, run, run.init_dir(params.pretrain), Path(params.ingest.out_dir), params.tracking)
    return [out, Path(cfg.reports_dir) / f"{run.name}.json"]


def prompt(params: Params) -> list[Path]:
    from lmforge.components.prompting import prompt_classify

    cfg = params.prompt
    run = PromptRun(task=cfg.task, shots=cfg.shots, init=cfg.init, dataset=cfg.dataset)
    return [prompt_classify(cfg, run, run.init_dir(params.pretrain), Path(params.ingest.out_dir), params.tracking)]


def evaluate(params: Params) -> list[Path]:
    from lmforge.components.evaluation.evaluate import evaluate_model

    return [evaluate_model(params.evaluate, Path(params.ingest.out_dir), params.tracking, params.finetune)]


def report(params: Params) -> list[Path]:
    from lmforge.components.evaluation.pretrained_vs_scratch import pretrained_vs_scratch_report
    from lmforge.components.evaluation.why_bert import why_bert_report

    cfg = params.evaluate
    out = Path(cfg.reports_dir)
    return [why_bert_report(cfg, params.pretrain.model_dir("bert"), out),
            pretrained_vs_scratch_report(Path(params.finetune.reports_dir), out)]


def crosslingual(params: Params) -> list[Path]:
    from lmforge.components.evaluation.crosslingual import crosslingual_report

    cfg = params.crosslingual
    model = Path(cfg.model) if cfg.model else params.pretrain.model_dir("bert")
    return [crosslingual_report(cfg, model, params.finetune, Path(params.ingest.out_dir), params.tracking),
            Path(cfg.plot)]


def when_bert_learns(params: Params) -> list[Path]:
    from lmforge.components.evaluation.when_bert_learns import when_bert_learns_report

    return [when_bert_learns_report(params), Path(params.when_bert_learns.plot)]


def register(params: Params) -> list[Path]:
    """registry.model into the MLflow registry through the gate; its receipt."""
    from lmforge.components.registry.register import register_model

    return [register_model(params)]


# CLI name -> stage function; dvc.yaml names a stage the same (pretrain-bert), with @<item> where it
# runs one per configured run (finetune@bert-sst2, register@bert-sst2, register-pretrained@gpt).
STAGES: dict[str, Callable[[Params], list[Path]]] = {
    "ingest": ingest,
    "tokenizer": tokenizer,
    "pretrain-bert": pretrain_bert,
    "pretrain-gpt": pretrain_gpt,
    "pretrain-seq2seq": pretrain_seq2seq,
    "seq2seq-ablation": seq2seq_ablation,
    "finetune": finetune,
    "prompt": prompt,
    "evaluate": evaluate,
    "report": report,
    "crosslingual": crosslingual,
    "when-bert-learns": when_bert_learns,
    "register": register,
}


# The training each stage runs, where it has one: with several processes (DDP, FSDP, several
# nodes) Lightning starts them by running the stage's command again, so a flow runs such a stage as
# a command of its own rather than in its own process.
TRAINING: dict[str, Callable[[Params], TrainConfig]] = {
    "pretrain-bert": lambda p: p.pretrain.bert.train,
    "pretrain-gpt": lambda p: p.pretrain.gpt.train,
    "pretrain-seq2seq": lambda p: p.pretrain.seq2seq.train,
    "finetune": lambda p: p.finetune.train,
}


@dataclass(frozen=True)
class PlannedStage:
    """One stage of the pipeline as dvc.yaml names it, with the params it runs under."""

    dvc_name: str
    function: Callable[[Params], list[Path]]
    params: Params
    name: str = ""  # as `lmforge stage NAME` names it

    @property
    def processes(self) -> int:
        """How many processes its training runs in (1 for a stage without training)."""
        train = TRAINING.get(self.name)
        if train is None:  # asked before every stage a flow runs: an ingest imports no torch for it
            return 1
        from lmforge.components.training.distributed import processes

        return processes(train(self.params))


def plan(dvc_name: str, cmd: str, params: Params) -> PlannedStage:
    """What dvc.yaml's `cmd` for stage `dvc_name` runs, as an in-process call: the stage function
    `lmforge stage NAME` names, under `params` with the command's `-S` overrides applied."""
    import contextlib
    import io
    import shlex

    from lmforge.components.cli import build_parser
    from lmforge.components.params_file import apply_override, validate_params
    from lmforge.components.errors import LmforgeError

    argv = shlex.split(cmd)
    try:
        if argv[:2] != ["lmforge", "stage"]:
            raise SystemExit
        with contextlib.redirect_stderr(io.StringIO()):  # argparse's usage text: the error below says it
            args = build_parser().parse_args(argv[1:])
    except SystemExit:  # argparse exits on what it cannot parse
        raise LmforgeError(f"dvc.yaml: stage {dvc_name}: cmd {cmd!r} is not `lmforge stage NAME [-S key=value ...]`; "
                           "the flows run lmforge's stages only (dvc repro runs any command)") from None
    raw = params.model_dump(mode="json")
    for item in args.overrides:
        apply_override(raw, item)
    return PlannedStage(dvc_name, STAGES[args.name], validate_params(raw, origin=f"dvc.yaml: stage {dvc_name}"),
                        args.name)
