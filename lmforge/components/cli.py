"""`lmforge`: run a stage, print the effective params.

    lmforge pipeline [TARGET ...] [-p params.yaml] [-S section.key=value ...] [--force]
                                                 the pipeline (a Prefect flow); targets as `dvc repro` takes them
    lmforge flow NAME [...]                      one flow: pretrain, finetune, evaluate_and_register, retrain
    lmforge stage NAME [-p params.yaml] [-S section.key=value ...]           one stage, as dvc.yaml runs it
    lmforge params [-p params.yaml] [-S section.key=value ...]
    lmforge serve [-p params.yaml]               Prefect deployments of every flow, retrain on a schedule
    lmforge compare [--experiment NAME] [--task T] [--model M] [--flow-run ID] [--metric M]
                                                 runs grouped by task/model, against each group's champion
    lmforge generate TEXT [--model FOLDER]       GPT continues TEXT (default model: pretrain.gpt.out_dir)

A user mistake (LmforgeError) is printed as one line on stderr with exit code 2; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

from lmforge.components.config import FINETUNE_TASKS, Params
from lmforge.components.errors import LmforgeError
from lmforge.components.params_file import DEFAULT_PARAMS, load_params
from lmforge.components.stages import STAGES

_STARTED = time.monotonic()  # the command's wall time counts from here (its imports before are ~0.3 s)

OUTPUTS_ENV = "LMFORGE_STAGE_OUTPUTS"  # where `lmforge stage` also writes the paths it printed, as JSON


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmforge", description="Pipeline-orchestrated MLOps for BERT and GPT.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="every library's log lines and progress bars, not only lmforge's")
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
    one.add_argument("--tasks", nargs="+", default=["sst2"], choices=FINETUNE_TASKS, metavar="TASK",
                     help=f"finetune: the tasks (default: sst2; one of {', '.join(FINETUNE_TASKS)})")
    one.add_argument("--model", default="bert", choices=("bert", "gpt"), help="finetune: bert or gpt")
    one.add_argument("--learning-rate", type=float, default=None, help="finetune: finetune.train.learning_rate")
    one.add_argument("--epochs", type=int, default=None, help="finetune: finetune.train.max_epochs")
    one.add_argument("--init", default="pretrained", help="finetune: pretrained, scratch, a folder, or models:/NAME@ALIAS")
    one.add_argument("--models", nargs="+", default=None,
                     help="evaluate_and_register: these finetune runs only (default: every model)")
    serve = with_params(sub.add_parser("serve", help="serve every flow as a Prefect deployment (Ctrl-C stops)"))
    serve.add_argument("--no-server", action="store_true", help="do not start a Prefect server; use the one at the URL")
    compare = with_params(sub.add_parser(
        "compare", help="MLflow runs grouped by task and model: the params that differ, the metric, the gap to "
                        "each group's champion; a plot with a panel per task"))
    compare.add_argument("--experiment", default=None, help="default: <tracking.experiment>-pipeline")
    compare.add_argument("--task", default=None, help="only this task's runs, e.g. sst2 (pretrain: pretraining)")
    compare.add_argument("--model", default=None, help="only this model's runs: bert, gpt, seq2seq")
    compare.add_argument("--flow-run", default=None, help="only the runs of this Prefect flow run: its id, the start "
                                                          "of it, or its name")
    compare.add_argument("--metric", default=None, help="the metric to sort and plot by; default: each task's "
                                                        "main metric (validation/<main>), val/loss for pretraining")
    compare.add_argument("--filter", default="",
                         help="an MLflow search filter, e.g. \"tags.`lmforge.stage` = 'finetune'\"")
    compare.add_argument("--max-runs", type=int, default=20, help="the latest this many runs of each group")
    compare.add_argument("--out", default="reports/compare.png", help="the comparison plot")
    generate = with_params(sub.add_parser("generate", help="continue a prompt with the GPT model"))
    generate.add_argument("text", nargs="+")
    generate.add_argument("--model", default=None, help="an HF causal-LM folder (default: pretrain.gpt.out_dir)")
    return parser


def _run(args, params: Params) -> None:
    if args.command == "params":
        yaml.safe_dump(params.model_dump(mode="json"), sys.stdout, sort_keys=False)
    elif args.command == "stage":
        paths = STAGES[args.name](params)
        # A stage that never imported torch ran in one process (importing it here costs ~2 s).
        rank = 0
        if "torch" in sys.modules:
            from lmforge.components.training.distributed import world

            rank = world()[0]
        if rank == 0:  # the other ranks of a multi-process run wrote nothing
            for path in paths:
                print(path)
            if outputs_file := os.environ.get(OUTPUTS_ENV):  # a flow that ran this stage as a command reads them
                Path(outputs_file).write_text(json.dumps([str(p) for p in paths]))
    elif args.command in ("pipeline", "flow"):
        from lmforge.flows.pipeline import FLOWS

        name = "pipeline" if args.command == "pipeline" else args.name
        if name == "pipeline" and not args.force and not args.overrides and up_to_date():
            # What `dvc repro` does: nothing, at once. The flow would skip every stage too, after
            # starting Prefect's temporary server (measured: 26 s for the demo against 8 s).
            print("pipeline: every stage is up to date (dvc status): nothing to run; --force runs them again")
            return
        kwargs = {"force": args.force} if name != "retrain" else {}
        if args.command == "pipeline" and args.targets:
            kwargs["targets"] = args.targets
        if name == "finetune":
            kwargs.update(tasks=args.tasks, model=args.model, init=args.init, learning_rate=args.learning_rate,
                          epochs=args.epochs)
        if name == "evaluate_and_register":
            kwargs["models"] = args.models
        server_ready()
        result = FLOWS[name](params=params, params_file=args.params, **kwargs)
        print(summary(result, params, time.monotonic() - _STARTED))
    elif args.command == "serve":
        from lmforge.flows.serve import serve_flows

        serve_flows(params, args.params, start=not args.no_server)
    elif args.command == "compare":
        from lmforge.components.compare import compare_runs

        compare_runs(params.tracking, args.experiment or f"{params.tracking.experiment}-pipeline", args.metric,
                     args.filter, args.max_runs, args.out, task=args.task, model=args.model, flow_run=args.flow_run,
                     registry_prefix=params.registry.prefix)
    elif args.command == "generate":
        from lmforge.components.prompting import generate

        cfg = params.prompt
        model = args.model or params.pretrain.model_dir("gpt")
        for text in generate(model, [" ".join(args.text)], cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.seed):
            print(text)


def summary(result: dict, params: Params, wall_seconds: float | None = None) -> str:
    """What a flow run came to, after its line per stage: what pretraining bought, the registrations
    (champion or not), how many stages ran and in what time (the command's wall time, and the stages'
    own, which is more where they ran side by side), where the plots are and the commands that open the UIs."""
    lines = []
    report = Path(params.evaluate.reports_dir) / "pretrained_vs_scratch.json"
    if report.exists():
        rows = json.loads(report.read_text())["rows"]
        if rows:
            lines += ["", f"pretrained vs scratch ({report.with_suffix('.md')}):"]
            for r in rows:
                sides = " vs ".join("-" if r[i] is None else f"{r[i]:.3f}" for i in ("pretrained", "scratch"))
                lines.append(f"  {r['model']:<5} {r['task']:<10} {r['main_metric']:<22} {sides:<15} {r['verdict'] or ''}")
    if result["registered"]:
        lines += ["", "registered:"]
        from lmforge.flows.tasks import registration_words

        lines += [f"  {r['model']} v{r['version']}: {registration_words(r)} "
                  f"({r['metric']} {r['value']:.4f}; {r['reason']})" for r in result["registered"]]
    stages = result["stages"]
    count = {status: sum(s["status"] == status for s in stages) for status in ("ran", "skipped")}
    seconds = sum(s["seconds"] for s in stages)
    took = ("" if wall_seconds is None else f" in {duration(wall_seconds)}") + f" ({duration(seconds)} of stage time)"
    lines += ["", f"{count['ran']} stage(s) ran{took}, {count['skipped']} skipped. "
                  f"Plots: {params.evaluate.reports_dir}/*.png, {params.evaluate.reports_dir}/plots/",
              f"MLflow UI:  mlflow ui --backend-store-uri {params.tracking.uri}   ({params.tracking.ui_url})",
              "Prefect UI: prefect server start   (http://127.0.0.1:4200)"]
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """3 min 05 s, or 42.0 s under a minute."""
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def server_ready() -> None:
    """Without a Prefect server (no PREFECT_API_URL), a flow starts Prefect's temporary one and waits
    ~4 s for it; boot it in the background while this process imports what the stages need (~5 s),
    instead of one after the other. The flow's client then finds it running (one server per process)."""
    import threading

    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():  # as Prefect's get_client decides
        return
    failed: list[BaseException] = []

    def boot() -> None:
        try:
            from prefect.server.api.server import SubprocessASGIServer

            SubprocessASGIServer().start()
        except BaseException as error:  # noqa: BLE001 - raised below, in the CLI's thread
            failed.append(error)

    thread = threading.Thread(target=boot, name="prefect-server", daemon=True)
    thread.start()
    try:
        import datasets, lightning, torch, transformers  # noqa: F401, E401 - what every training stage imports
    finally:  # even on Ctrl-C: the server is up and registered to stop at exit, not left behind
        thread.join()
    if failed:
        raise failed[0]


def up_to_date() -> bool:
    """Whether DVC says no stage of the pipeline would run (False outside a DVC repository)."""
    from lmforge.components.versioning import DvcProject

    return DvcProject(".").stale() == {}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Offline by design: Prefect's telemetry heartbeat only fails (and logs it) without internet.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # A flow without a server starts Prefect's own; its 20 s default is too short on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from lmforge.components.console import configure

    configure(args.verbose)
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
