"""Pretrained vs scratch: what pretraining buys, read from the finetune stage's reports.

Each task fine-tuned from our pretrained model is paired with the same model fine-tuned from
random weights (init scratch). A report counts when it is one the finetune stage wrote: it has
task, model, init and score, its init is `pretrained` or `scratch`, and its file is named as the
stage names it (bert-sst2.json, bert-scratch-sst2.json). Anything else in the folder (pretraining
and tokenizer metrics, prompting reports, runs from another local checkpoint) is left out.

The score of a task is the report's `score`: the mean of the task's GLUE metrics over its
validation splits (QA and tagging: the main metric). The GLUE score of each side is
`metrics.glue_score` over the GLUE tasks that both sides have, so the two are comparable.
"""

from __future__ import annotations

import json
from pathlib import Path

from components.atomic import write_json, write_text
from components.data.schemas import GLUE_TASKS
from components.errors import LmforgeError
from components.evaluation.plots import paired_bars
from components.finetuning.metrics import glue_score

INITS = ("pretrained", "scratch")


def pretrained_vs_scratch_report(metrics_dir: Path, out_dir: Path) -> Path:
    """Write <out_dir>/pretrained_vs_scratch.{json,md,png}; return the JSON's path."""
    reports = finetune_reports(Path(metrics_dir))
    pairs: dict[tuple[str, str], dict] = {}  # (model, task) -> {init: report or None}
    for report in reports.values():
        pairs.setdefault((report["model"], report["task"]), dict.fromkeys(INITS))[report["init"]] = report
    rows = [pair_row(model, task, pair) for (model, task), pair in sorted(pairs.items())]
    glue = {model: glue_scores({t: pair for (m, t), pair in pairs.items() if m == model})
            for model in sorted({m for m, _ in pairs})}
    result = {"rows": rows, "glue_score": glue, "reports": sorted(reports)}

    out_dir = Path(out_dir)
    path = write_json(out_dir / "pretrained_vs_scratch.json", result)
    write_text(out_dir / "pretrained_vs_scratch.md", markdown_table(rows, glue))
    scored = {m: g for m, g in glue.items() if g["tasks"]}
    labels = [f"{r['model']} {r['task']}" for r in rows] + [f"{m} GLUE ({len(g['tasks'])})" for m, g in scored.items()]
    values = [[r[i] for r in rows] + [g[i] for g in scored.values()] for i in INITS]
    title = "fine-tuned from pretrained weights vs from random weights"
    if not rows:
        title += f"\n(no fine-tuning reports in {metrics_dir}: finetune.runs is empty)"
    paired_bars(labels, values[0], values[1], INITS, "task score (validation)", title,
                out_dir / "pretrained_vs_scratch.png")
    return path


def pair_row(model: str, task: str, pair: dict) -> dict:
    """One table row: each side's score (None where that run has no report) and their difference."""
    p, s = (pair[init]["score"] if pair[init] else None for init in INITS)
    main = (pair["pretrained"] or pair["scratch"])["main_metric"]
    return {"model": model, "task": task, "main_metric": main, "pretrained": p, "scratch": s,
            "difference": None if p is None or s is None else p - s}


def glue_scores(pairs: dict[str, dict]) -> dict:
    """{tasks, pretrained, scratch}: glue_score of each side over the GLUE tasks both sides have."""
    both = sorted(task for task, pair in pairs.items() if task in GLUE_TASKS and all(pair.values()))
    if not both:
        return {"tasks": [], **dict.fromkeys(INITS)}
    return {"tasks": both, **{init: glue_score({t: split_metrics(pairs[t][init]) for t in both}) for init in INITS}}


def finetune_reports(metrics_dir: Path) -> dict[str, dict]:
    """{file name: report} of the finetune stage's reports in `metrics_dir` (see the module's doc)."""
    reports = {}
    if not metrics_dir.is_dir():  # a pipeline without fine-tuning runs: nothing to compare
        return reports
    for path in sorted(metrics_dir.glob("*.json")):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LmforgeError(f"report: cannot read metrics file {path} ({e})") from None
        if not isinstance(report, dict) or not {"task", "model", "init", "score"} <= report.keys():
            continue
        if report["init"] not in INITS or path.stem != run_name(report):
            continue
        reports[path.name] = report
    return reports


def run_name(report: dict) -> str:
    """The file name (without .json) the finetune stage gives a run: FinetuneRun.name."""
    init = "" if report["init"] == "pretrained" else f"-{report['init']}"
    return f"{report['model']}{init}-{report['task']}"


def split_metrics(report: dict) -> dict[str, float]:
    """A report's metrics in the shape `glue_score` reads: one split's metrics as they are; MNLI's
    two splits as accuracy_matched and accuracy_mismatched, which it averages into one task score."""
    splits = [s for s in GLUE_TASKS[report["task"]].validation_splits if isinstance(report.get(s), dict)]
    if not splits:
        raise LmforgeError(f"report: the {report['model']}/{report['init']} report for {report['task']!r} has none of "
                           f"its validation splits {', '.join(GLUE_TASKS[report['task']].validation_splits)}")
    if len(splits) == 1:
        return dict(report[splits[0]])
    return {f"{k}_{s.removeprefix('validation_')}": v for s in splits for k, v in report[s].items()}


def markdown_table(rows: list[dict], glue: dict[str, dict]) -> str:
    def cell(value: float | None, signed: bool = False) -> str:
        return "" if value is None else f"{value:+.4f}" if signed else f"{value:.4f}"

    lines = ["| model | task | main metric | pretrained | scratch | pretrained − scratch |",
             "|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['task']} | {r['main_metric']} | {cell(r['pretrained'])} | {cell(r['scratch'])} "
              f"| {cell(r['difference'], True)} |" for r in rows]
    for model, g in glue.items():
        if g["tasks"]:
            diff = g["pretrained"] - g["scratch"]
            lines.append(f"| {model} | **GLUE score** ({', '.join(g['tasks'])}) | mean task score "
                         f"| {cell(g['pretrained'])} | {cell(g['scratch'])} | {cell(diff, True)} |")
    if not rows:
        return "No fine-tuning reports to compare: finetune.runs has no run (or none has run yet).\n"
    return ("Task score on validation (the mean of the task's metrics; MNLI over matched and mismatched). "
            "A blank cell: that run has no report.\n\n" + "\n".join(lines) + "\n")
