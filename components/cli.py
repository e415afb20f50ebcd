"""`lmforge`: run a stage, print the effective params.

    lmforge stage NAME [-p params.yaml] [-S section.key=value ...]
    lmforge params [-p params.yaml] [-S section.key=value ...]

A user mistake (LmforgeError) is printed as one line on stderr with exit code 2; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from components.config import DEFAULT_PARAMS, Params, load_params
from components.errors import LmforgeError


def _ingest(params: Params) -> list[Path]:
    from components.data.ingest import ingest

    return [ingest(params.ingest, Path(params.ingest.out_dir))]


def _tokenizer(params: Params) -> list[Path]:
    from components.tokenizer import train_tokenizers

    cfg = params.tokenizer
    corpus = Path(params.ingest.out_dir) / cfg.corpus
    paths = train_tokenizers(cfg, corpus, Path(cfg.out_dir), Path(cfg.metrics))
    return [*paths.values(), Path(cfg.metrics)]


def _pretrain_bert(params: Params) -> list[Path]:
    from components.pretraining.stages import pretrain_bert

    cfg = params.pretrain.bert
    return [pretrain_bert(cfg, Path(params.ingest.out_dir) / cfg.corpus, params.tracking), Path(cfg.metrics)]


def _pretrain_gpt(params: Params) -> list[Path]:
    from components.pretraining.stages import pretrain_gpt

    cfg = params.pretrain.gpt
    return [pretrain_gpt(cfg, Path(params.ingest.out_dir) / cfg.corpus, params.tracking), Path(cfg.metrics)]


def _finetune(params: Params) -> list[Path]:
    from components.config import FinetuneRun
    from components.finetuning.stage import finetune_glue

    cfg = params.finetune
    run = FinetuneRun(task=cfg.task, model=cfg.model, init=cfg.init, dataset=cfg.dataset)
    out = finetune_glue(cfg, run, Path(params.ingest.out_dir), params.tracking)
    return [out, Path(cfg.reports_dir) / f"{run.name}.json"]


# Stage name -> function(params) -> output paths. Imports stay inside so `lmforge params` is instant.
STAGES: dict[str, Callable[[Params], list[Path]]] = {
    "ingest": _ingest,
    "tokenizer": _tokenizer,
    "pretrain-bert": _pretrain_bert,
    "pretrain-gpt": _pretrain_gpt,
    "finetune": _finetune,
}


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("LMFORGE_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    try:
        params = load_params(args.params, args.overrides)
        if args.command == "params":
            yaml.safe_dump(params.model_dump(mode="json"), sys.stdout, sort_keys=False)
        elif args.command == "stage":
            for path in STAGES[args.name](params):
                print(path)
    except LmforgeError as e:
        print(f"lmforge: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `lmforge params | head` closed the pipe early: not an error
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
