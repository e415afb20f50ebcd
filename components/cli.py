"""`lmforge`: run a stage, print the effective params.

    lmforge pipeline [TARGET ...] [-p params.yaml] [-S section.key=value ...] [--force]
                                                 the pipeline (a Prefect flow); targets as `dvc repro` takes them
    lmforge flow NAME [...]                      one flow: pretrain, finetune, evaluate_and_register, retrain
    lmforge stage NAME [-p params.yaml] [-S section.key=value ...]           one stage, as dvc.yaml runs it
    lmforge params [-p params.yaml] [-S section.key=value ...]
    lmforge serve [-p params.yaml]               Prefect deployments of every flow, retrain on a schedule
    lmforge compare [--experiment NAME] [--metric M]
    lmforge generate TEXT [--model models/gpt-pretrained]

A user mistake (LmforgeError) is printed as one line on stderr with exit code 2; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import yaml

from components.config import DEFAULT_PARAMS, Params, load_params
from components.errors import LmforgeError
from components.stages import STAGES

OUTPUTS_ENV = "LMFORGE_STAGE_OUTPUTS"  # where `lmforge stage` also writes the paths it printed, as JSON


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmforge", description="Pipeline-orchestrated MLOps for BERT and GPT.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_params(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-p", "--params", default=DEFAULT_PARAMS, help="params file (default: params.yaml)")
        p.add_argument(
            "-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
            help="override a parameter, e.g. -S tokenizer.bert.vocab_size=2000 (repeatable)",
        )
        return p

    stage = with_params(sub.add_parser("stage", help="run one pipeline stage"))
    stage.add_argument("name", choices=sorted(STAGES), metavar="NAME", help=", ".join(STAGES))
    with_params(sub.add_parser("params", help="print the effective, validated parameters"))
    pipe = with_params(sub.add_parser("pipeline", help="run the whole pipeline as a Prefect flow"))
    pipe.add_argument("targets", nargs="*", metavar="TARGET",
                      help="stages of dvc.yaml (or patterns: 'register-pretrained@*') to run with what they depend "
                           "on, as `dvc repro TARGET` does; default: every stage")
    pipe.add_argument("--force", action="store_true", help="rerun stages DVC considers up to date")
    one = with_params(sub.add_parser("flow", help="run one flow: pretrain, finetune, evaluate_and_register, retrain"))
    one.add_argument("name", choices=["pipeline", "pretrain", "finetune", "evaluate_and_register", "retrain"])
    one.add_argument("--force", action="store_true")
    one.add_argument("--tasks", nargs="+", default=["sst2"], help="finetune: the tasks (default: sst2)")
    one.add_argument("--model", default="bert", help="finetune: bert or gpt")
    one.add_argument("--init", default="pretrained", help="finetune: pretrained, scratch, a folder, or models:/NAME@ALIAS")
    one.add_argument("--models", nargs="+", default=None,
                     help="evaluate_and_register: these finetune runs only (default: every model)")
    serve = with_params(sub.add_parser("serve", help="serve every flow as a Prefect deployment (Ctrl-C stops)"))
    serve.add_argument("--no-server", action="store_true", help="do not start a Prefect server; use the one at the URL")
    compare = with_params(sub.add_parser("compare", help="MLflow runs side by side: differing params, metrics"))
    compare.add_argument("--experiment", default=None, help="default: <tracking.experiment>-pipeline")
    compare.add_argument("--metric", default=None, help="the metric to sort and plot by")
    compare.add_argument("--filter", default="", help="an MLflow search filter, e.g. \"tags.lmforge.stage = 'finetune'\"")
    compare.add_argument("--max-runs", type=int, default=20)
    compare.add_argument("--out", default="reports/compare.png", help="the comparison plot")
    generate = with_params(sub.add_parser("generate", help="continue a prompt with the GPT model"))
    generate.add_argument("text", nargs="+")
    generate.add_argument("--model", default=None, help="default: models/gpt-pretrained")
    return parser


def _run(args, params: Params) -> None:
    if args.command == "params":
        yaml.safe_dump(params.model_dump(mode="json"), sys.stdout, sort_keys=False)
    elif args.command == "stage":
        paths = STAGES[args.name](params)
        from components.training.distributed import world

        if world()[0] == 0:  # the other ranks of a multi-process run wrote nothing
            for path in paths:
                print(path)
            if outputs_file := os.environ.get(OUTPUTS_ENV):  # a flow that ran this stage as a command reads them
                Path(outputs_file).write_text(json.dumps([str(p) for p in paths]))
    elif args.command in ("pipeline", "flow"):
        from flows.pipeline import FLOWS

        name = "pipeline" if args.command == "pipeline" else args.name
        kwargs = {"force": args.force} if name != "retrain" else {}
        if args.command == "pipeline" and args.targets:
            kwargs["targets"] = args.targets
        if name == "finetune":
            kwargs.update(tasks=args.tasks, model=args.model, init=args.init)
        if name == "evaluate_and_register":
            kwargs["models"] = args.models
        result = FLOWS[name](params=params, params_file=args.params, **kwargs)
        for stage in result["stages"]:
            print(f"{stage['stage']:<32} {stage['status']:<8} {stage['seconds']:7.1f}s  {stage['reason']}")
        for reg in result["registered"]:
            print(f"registered {reg['model']} v{reg['version']}: {reg['reason']}")
    elif args.command == "serve":
        from flows.serve import serve_flows

        serve_flows(params, args.params, start=not args.no_server)
    elif args.command == "compare":
        from components.compare import compare_runs

        compare_runs(params.tracking, args.experiment or f"{params.tracking.experiment}-pipeline", args.metric,
                     args.filter, args.max_runs, args.out)
    elif args.command == "generate":
        from components.finetuning.prompting import generate

        cfg = params.prompt
        model = args.model or f"{cfg.models_dir}/gpt-pretrained"
        for text in generate(model, [" ".join(args.text)], cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.seed):
            print(text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Offline by design: Prefect's telemetry heartbeat only fails (and logs it) without internet.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # A flow without a server starts Prefect's own; its 20 s default is too short on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    logging.basicConfig(level=os.environ.get("LMFORGE_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request to the Prefect API
    try:
        _run(args, load_params(args.params, args.overrides))
    except LmforgeError as e:
        print(f"lmforge: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `lmforge params | head` closed the pipe early: not an error
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
