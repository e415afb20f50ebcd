"""Pretrained vs scratch: what pretraining buys, read from the finetune stage's reports.

Each task fine-tuned from our pretrained model is paired with the same model fine-tuned from
random weights (init scratch). A report counts when it is one the finetune stage wrote: it has
task, model, init and score, its init is `pretrained` or `scratch`, and its file is named as the
stage names it (bert-sst2.json, bert-scratch-sst2.json). Anything else in the folder (pretraining
and tokenizer metrics, prompting reports, runs from another local checkpoint) is left out.

Runs fine-tuned with GPT-1's auxiliary LM loss (aux_lm_weight, e.g. gpt-sst2-auxlm0p5) are left out
of the pairs and set beside the same run with the plain head, in a table of their own.

Runs that differ only in their seed (bert-qnli-seed1, ...) are the same comparison again: each
side is their mean, with its range, and the report says whether the difference is larger than
that noise (the ranges do not overlap) or within it.

The score of a task is the report's `score`: the mean of the task's GLUE metrics over its
validation splits (QA and tagging: the main metric). The GLUE score of each side is
`metrics.glue_score` over the GLUE tasks that both sides have, so the two are comparable.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.components.atomic import write_json, write_text
from lmforge.components.config import FinetuneRun
from lmforge.components.data.schemas import GLUE_TASKS
from lmforge.components.errors import LmforgeError
from lmforge.components.evaluation.plots import paired_bars
from lmforge.components.finetuning.metrics import glue_score

INITS = ("pretrained", "scratch")


def pretrained_vs_scratch_report(metrics_dir: Path, out_dir: Path) -> Path:
    """Write <out_dir>/pretrained_vs_scratch.{json,md,png}; return the JSON's path."""
    reports = finetune_reports(Path(metrics_dir))
    auxiliary = auxiliary_lm_rows(list(reports.values()))
    pairs: dict[tuple[str, str], dict] = {}  # (model, task) -> {init: [reports, one per seed]}
    for report in reports.values():
        if report.get("aux_lm_weight"):
            continue
        pairs.setdefault((report["model"], report["task"]), {i: [] for i in INITS})[report["init"]].append(report)
    rows = [pair_row(model, task, pair) for (model, task), pair in sorted(pairs.items())]
    glue = {model: glue_scores({t: pair for (m, t), pair in pairs.items() if m == model})
            for model in sorted({m for m, _ in pairs})}
    result = {"rows": rows, "glue_score": glue, "auxiliary_lm": auxiliary, "reports": sorted(reports)}

    out_dir = Path(out_dir)
    path = write_json(out_dir / "pretrained_vs_scratch.json", result)
    write_text(out_dir / "pretrained_vs_scratch.md", markdown_table(rows, glue) + auxiliary_table(auxiliary))
    scored = {m: g for m, g in glue.items() if g["tasks"]}
    # One scale: QA's F1 and exact match are 0-100, every other score 0-1.
    scale = [0.01 if r["task"] in QA_TASKS else 1.0 for r in rows] + [1.0] * len(scored)
    labels = [f"{r['model']} {r['task']}{' (/100)' if r['task'] in QA_TASKS else ''}{seeds_label(r)}" for r in rows]
    labels += [f"{m} GLUE ({len(g['tasks'])})" for m, g in scored.items()]
    values = [[None if v is None else v * k for v, k in zip([r[i] for r in rows] + [g[i] for g in scored.values()],
                                                             scale)] for i in INITS]
    title = "fine-tuned from pretrained weights vs from random weights"
    if not rows:
        title += f"\n(no fine-tuning reports in {metrics_dir}: finetune.runs is empty)"
    # The whiskers: each side's range over its seeds, where it has more than one.
    ranges = tuple([None if r["seeds"][i] < 2 else [v * k for v in r["range"][i]] for r, k in zip(rows, scale)]
                   + [None] * len(scored) for i in INITS)
    paired_bars(labels, values[0], values[1], INITS, "task score (validation), mean over seeds (whisker: range)",
                title, out_dir / "pretrained_vs_scratch.png", ranges)
    return path


QA_TASKS = ("squad", "squad_v2")


def seeds_label(row: dict) -> str:
    n = min(row["seeds"].values())
    return f", {n} seeds" if n > 1 else ""


def pair_row(model: str, task: str, pair: dict) -> dict:
    """One table row: each side's mean score over its seeds (None where that side has no report),
    their difference, each side's range over seeds, and whether the difference is larger than the
    seeds' noise: `verdict` is 'pretrained better' / 'scratch better' when the two sides' ranges do
    not overlap, 'within the noise' when they do, and 'one seed: noise unknown' with a single seed."""
    scores = {init: [r["score"] for r in pair[init]] for init in INITS}
    mean = {init: sum(v) / len(v) if v else None for init, v in scores.items()}
    main = next(r for init in INITS for r in pair[init])["main_metric"]
    row = {"model": model, "task": task, "main_metric": main, **mean,
           "difference": None if None in mean.values() else mean["pretrained"] - mean["scratch"],
           "seeds": {init: len(v) for init, v in scores.items()},
           "range": {init: [min(v), max(v)] if v else None for init, v in scores.items()}}
    row["verdict"] = verdict(scores)
    return row


def verdict(scores: dict[str, list[float]]) -> str | None:
    p, s = scores["pretrained"], scores["scratch"]
    if not p or not s:
        return None
    if min(len(p), len(s)) < 2:
        return "one seed: noise unknown"
    if min(p) > max(s):
        return "pretrained better"
    if min(s) > max(p):
        return "scratch better"
    return "within the noise"


def glue_scores(pairs: dict[str, dict]) -> dict:
    """{tasks, pretrained, scratch}: glue_score of each side over the GLUE tasks both sides have,
    each task's metrics averaged over its seeds."""
    both = sorted(task for task, pair in pairs.items() if task in GLUE_TASKS and all(pair.values()))
    if not both:
        return {"tasks": [], **dict.fromkeys(INITS)}
    return {"tasks": both, **{init: glue_score({t: seed_mean(pairs[t][init]) for t in both}) for init in INITS}}


def seed_mean(reports: list[dict]) -> dict[str, float]:
    """A task's metrics (split_metrics) averaged over the reports of its seeds."""
    metrics = [split_metrics(r) for r in reports]
    return {k: sum(m[k] for m in metrics) / len(metrics) for k in metrics[0]}


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


def run_name(report: dict) -> str | None:
    """The file name (without .json) the finetune stage gives the report's run (FinetuneRun.name);
    None when the report cannot be one of its runs."""
    try:
        return FinetuneRun(task=report["task"], model=report["model"], init=report["init"], seed=report.get("seed"),
                           aux_lm_weight=report.get("aux_lm_weight", 0.0)).name
    except ValueError:  # pydantic's ValidationError: e.g. a task no finetune run has
        return None


def auxiliary_lm_rows(reports: list[dict]) -> list[dict]:
    """Each run fine-tuned with the auxiliary LM loss beside the same run (model, task, init, seed)
    with the plain head, when both have reported."""
    def key(r: dict) -> tuple:
        return r["model"], r["task"], r["init"], r.get("seed")

    plain = {key(r): r for r in reports if not r.get("aux_lm_weight")}
    rows = []
    for r in sorted((r for r in reports if r.get("aux_lm_weight")), key=lambda r: (key(r), r["aux_lm_weight"])):
        if key(r) in plain:
            base = plain[key(r)]["score"]
            rows.append({"model": r["model"], "task": r["task"], "init": r["init"], "seed": r.get("seed"),
                         "main_metric": r["main_metric"], "aux_lm_weight": r["aux_lm_weight"],
                         "plain_head": base, "with_aux_lm": r["score"], "difference": r["score"] - base})
    return rows


def auxiliary_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = ["", "GPT-1's auxiliary objective: the head's loss plus λ times the language-modelling loss while "
             "fine-tuning (one seed each: a small difference may be noise).", "",
             "| model | task | main metric | plain head | head + λ·LM | λ | difference |", "|---|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['task']} | {r['main_metric']} | {r['plain_head']:.4f} | {r['with_aux_lm']:.4f} "
              f"| {r['aux_lm_weight']:g} | {r['difference']:+.4f} |" for r in rows]
    return "\n".join(lines) + "\n"


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

    def side(r: dict, init: str) -> str:
        low, high = r["range"][init] or (None, None)
        spread = f" ({low:.3f}–{high:.3f}, {r['seeds'][init]} seeds)" if r["seeds"][init] > 1 else ""
        return cell(r[init]) + spread

    lines = ["| model | task | main metric | pretrained | scratch | pretrained − scratch | verdict |",
             "|---|---|---|---:|---:|---:|---|"]
    lines += [f"| {r['model']} | {r['task']} | {r['main_metric']} | {side(r, 'pretrained')} | {side(r, 'scratch')} "
              f"| {cell(r['difference'], True)} | {r['verdict'] or ''} |" for r in rows]
    for model, g in glue.items():
        if g["tasks"]:
            diff = g["pretrained"] - g["scratch"]
            lines.append(f"| {model} | **GLUE score** ({', '.join(g['tasks'])}) | mean task score "
                         f"| {cell(g['pretrained'])} | {cell(g['scratch'])} | {cell(diff, True)} | |")
    if not rows:
        return "No fine-tuning reports to compare: finetune.runs has no run (or none has run yet).\n"
    return ("Task score on validation (the mean of the task's metrics; MNLI over matched and mismatched), the mean "
            "over the seeds each side ran, with their range. A difference counts only when the two ranges do not "
            "overlap; otherwise it is within the noise of the seeds. A blank cell: that run has no report.\n\n"
            + "\n".join(lines) + "\n")
