"""`lmforge compare`: the MLflow runs of an experiment, grouped by task and model, against each group's champion.

A run's task, model, init, stage and flow run are its lmforge.* tags (lmforge/components/tracking.py
run_tags); runs logged before those tags existed fall back to their params and name. Each group is
one compact table: the runs, best first on the group's metric (the task's main metric unless
--metric), the params that differ within the group (and no others), and each run's difference to
the champion of the group's registered model (`<registry.prefix><model>-<task>@champion`, or
`<prefix><model>-pretrained` for pretraining), measured on the champion's own training run. The
plot has one panel per task, each on its own scale.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.components.config import TrackingConfig
from lmforge.components.errors import LmforgeError
from lmforge.components.tracking import FLOW_RUN_TAG, INIT_TAG, MODEL_TAG, STAGE_TAG, TASK_TAG

STAGE_PREFIXES = ("finetune", "evaluate", "prompt", "register", "pretrain")
MAX_PARAM_COLUMNS = 6   # more differing params are named under the table, not given a column each
MAX_CELL = 28           # characters of a param value shown


@dataclass
class Labels:
    task: str
    model: str
    init: str
    stage: str
    flow_run: str
    flow_name: str = ""     # the Prefect flow run's name (its MLflow parent run's name)


@dataclass
class Row:
    run_id: str
    name: str
    labels: Labels
    params: dict[str, str]
    value: float
    delta: float | None = None      # value - the champion's, on the same metric
    is_champion: bool = False       # this run trained (or registered) the champion


@dataclass
class Champion:
    model: str                      # registered model, e.g. lmforge-bert-sst2
    version: str
    value: float | None             # on the group's metric; None when the champion never measured it
    training_run: str = ""          # the MLflow run that trained it (lineage.training_run)
    run_id: str = ""                # the registration run


@dataclass
class Group:
    task: str
    model: str
    metric: str
    higher_is_better: bool
    rows: list[Row]
    params: list[str] = field(default_factory=list)     # those that differ within the group
    champion: Champion | None = None
    champion_note: str = ""         # why there is no champion (value)


def compare_runs(tracking: TrackingConfig, experiment: str, metric: str | None = None, filter_string: str = "",
                 max_runs: int = 20, plot_path: str | Path | None = "reports/compare.png", *, task: str | None = None,
                 model: str | None = None, flow_run: str | None = None, registry_prefix: str = "lmforge-") -> str:
    """Print the runs of `experiment` grouped by task and model (see the module); plot them to
    `plot_path` (None: no plot). `max_runs`: the latest that many runs of each group. Returns the text."""
    groups = collect_groups(tracking, experiment, metric, filter_string, max_runs, task=task, model=model,
                            flow_run=flow_run, registry_prefix=registry_prefix)
    text = render(groups)
    print(text)
    if plot_path is not None:
        plot_groups(groups, Path(plot_path), experiment)
        print(f"plot: {plot_path}")
    return text


# ------------------------------------------------------------------ the runs, grouped


def collect_groups(tracking: TrackingConfig, experiment: str, metric: str | None = None, filter_string: str = "",
                   max_runs: int = 20, *, task: str | None = None, model: str | None = None,
                   flow_run: str | None = None, registry_prefix: str = "lmforge-") -> list[Group]:
    """The runs of `experiment` that match the filters and have the metric, grouped by (task, model)."""
    from lmforge.components.tracking import tracking_client

    client = tracking_client(tracking, "lmforge compare")
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise LmforgeError(f"MLflow experiment {experiment!r} not found at {tracking.uri} (experiments: {names})")
    runs = _search(client, found.experiment_id, filter_string)
    by_id = {r.info.run_id: r for r in runs}
    labelled = [(r, run_labels(r, by_id)) for r in runs]
    wanted = [(r, lab) for r, lab in labelled if lab.task and lab.model
              and (task is None or lab.task == task) and (model is None or lab.model == model)
              and (flow_run is None or _same_flow(lab, flow_run))]
    if not wanted:
        asked = ", ".join(f"{k} {v!r}" for k, v in (("task", task), ("model", model), ("flow run", flow_run),
                                                     ("filter", filter_string or None)) if v)
        raise LmforgeError(f"experiment {experiment!r}: no run with a task and model"
                           + (f" for {asked}" if asked else "") + f" ({len(runs)} runs in all)")

    buckets: dict[tuple[str, str], list] = {}
    for run, lab in wanted:  # newest first, as searched
        buckets.setdefault((lab.task, lab.model), []).append((run, lab))
    groups = []
    for (group_task, group_model), members in sorted(buckets.items()):
        key = metric or default_metric(group_task, [r for r, _ in members])
        if key is None:
            continue
        members = [(r, lab) for r, lab in members if key in r.data.metrics][:max_runs]
        if not members:
            continue
        higher = higher_is_better(key)
        rows = [Row(r.info.run_id, r.info.run_name or r.info.run_id[:8], lab, dict(r.data.params),
                    float(r.data.metrics[key])) for r, lab in members]
        rows.sort(key=lambda row: -row.value if higher else row.value)
        group = Group(group_task, group_model, key, higher, rows, differing_params(rows))
        _add_champion(client, group, registry_prefix)
        groups.append(group)
    if not groups:
        raise LmforgeError(f"experiment {experiment!r}: none of the {len(wanted)} matching runs has "
                           + (f"metric {metric!r}" if metric else "its task's main metric"))
    return groups


def _search(client, experiment_id: str, filter_string: str) -> list:
    """Every run of the experiment matching the filter, newest first (page by page)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def run_labels(run, by_id: dict | None = None) -> Labels:
    """What a run is: its lmforge.* tags, else (a run from before them) its params and name."""
    tags, params, name = run.data.tags, run.data.params, run.info.run_name or ""
    prefix = name.split("-", 1)[0]
    task = tags.get(TASK_TAG) or params.get("task", "")
    model = tags.get(MODEL_TAG) or params.get("model", "").split("-", 1)[0]
    if not task and prefix == "pretrain":
        task, model = "pretrain", name.removeprefix("pretrain-")
    parent = (by_id or {}).get(tags.get("mlflow.parentRunId", ""))
    flow_id = tags.get(FLOW_RUN_TAG) or (parent.data.tags.get("prefect.flow_run_id", "") if parent else "")
    return Labels(task, model, tags.get(INIT_TAG) or params.get("init", ""),
                  tags.get(STAGE_TAG) or (prefix if prefix in STAGE_PREFIXES else ""), flow_id,
                  (parent.info.run_name or "") if parent else "")


def _same_flow(labels: Labels, wanted: str) -> bool:
    """`wanted` is the flow run's id, the start of it, or its name."""
    return bool(labels.flow_run) and (labels.flow_run.startswith(wanted) or wanted == labels.flow_name)


def default_metric(task: str, runs: list) -> str | None:
    """The task's main metric as the runs log it: validation/<main> (finetune, evaluate, prompt),
    validation_matched/<main> (MNLI), val/<main> (Lightning's, during training); val/loss for
    pretraining. The first of these any run has."""
    from lmforge.components.finetuning.metrics import SCORED_TASKS, main_metric

    if task == "pretrain":
        candidates = ["val/loss"]
    elif task in SCORED_TASKS:
        main = main_metric(task)
        candidates = [f"validation/{main}", f"validation_matched/{main}", f"val/{main}", "score"]
    else:
        candidates = ["score"]
    return next((c for c in candidates if any(c in r.data.metrics for r in runs)), None)


def higher_is_better(metric: str) -> bool:
    name = metric.rsplit("/", 1)[-1]
    return not any(word in name for word in ("loss", "perplexity", "bits_per_byte", "error"))


def differing_params(rows: list[Row]) -> list[str]:
    """The params whose values differ between the group's runs that log them; not the labels (task,
    model, init: the group and its columns) nor paths (where a run wrote, not how it ran)."""
    keys = sorted({k for row in rows for k in row.params} - {"task", "model", "init"})
    shown = []
    for key in keys:
        values = {row.params[key] for row in rows if key in row.params}
        if len(values) > 1 and not all("/" in v for v in values if v):
            shown.append(key)
    return shown


def registered_names(group: Group, prefix: str) -> list[str]:
    """The registered models whose champion the group is measured against, in order of preference:
    <prefix><model>-<task> (<prefix><model>-pretrained for pretraining), then those of its runs' names."""
    first = f"{prefix}{group.model}-pretrained" if group.task == "pretrain" else f"{prefix}{group.model}-{group.task}"
    names = [first]
    for row in group.rows:
        base = row.name.split("-", 1)[1] if row.name.split("-", 1)[0] in STAGE_PREFIXES and "-" in row.name else ""
        if base and f"{prefix}{base}" not in names:
            names.append(f"{prefix}{base}")
    return names


def _add_champion(client, group: Group, prefix: str) -> None:
    """Set the group's champion, its value on the group's metric and every row's difference to it."""
    from mlflow.exceptions import MlflowException

    from lmforge.components.registry.packaging import CHAMPION, version_by_alias

    names = registered_names(group, prefix)
    for name in names:
        version = version_by_alias(client, name, CHAMPION)
        if version is not None:
            break
    else:
        group.champion_note = f"no champion: {names[0]} has no version with alias {CHAMPION!r}"
        return
    tags = version.tags or {}
    champion = Champion(name, str(version.version), None, tags.get("lineage.training_run", ""), version.run_id or "")
    if champion.training_run:
        try:
            champion.value = client.get_run(champion.training_run).data.metrics.get(group.metric)
        except MlflowException:  # deleted, or in another tracking store
            pass
    if champion.value is None and group.metric.rsplit("/", 1)[-1] == tags.get("metric.name"):
        champion.value = float(tags["metric.value"])  # the gate's number: the same metric, on validation
    group.champion = champion
    if champion.value is None:
        group.champion_note = f"{name} v{champion.version} has no {group.metric} to compare with"
    for row in group.rows:
        row.is_champion = row.run_id in (champion.training_run, champion.run_id)
        if champion.value is not None:
            row.delta = row.value - champion.value


# ------------------------------------------------------------------ the terminal


def render(groups: list[Group]) -> str:
    return "\n\n".join(render_group(g) for g in groups)


def render_group(group: Group) -> str:
    """A header (task / model, metric, the labels all rows share, the champion) and a compact table."""
    same = {label: values.pop() for label in ("stage", "init")
            if len(values := {getattr(r.labels, label) for r in group.rows}) == 1}
    shared = ", ".join(f"{k} {v}" for k, v in same.items() if v)
    direction = "higher" if group.higher_is_better else "lower"
    lines = [f"{group.task} / {group.model}: {group.metric} ({direction} is better), {len(group.rows)} run"
             + ("s" if len(group.rows) != 1 else "") + (f"; {shared}" if shared else "")]
    champion = group.champion
    if champion is not None and champion.value is not None:
        lines.append(f"  champion {champion.model} v{champion.version}: {_number(champion.value)}")
    else:
        lines.append(f"  {group.champion_note}")

    params, more = group.params[:MAX_PARAM_COLUMNS], group.params[MAX_PARAM_COLUMNS:]
    labels = [label for label in ("stage", "init") if label not in same]
    gaps = any(row.delta is not None for row in group.rows)
    header = ["run", *labels, *params, group.metric, *(["vs champion"] if gaps else [])]
    rows = [[row.name + (" *" if row.is_champion else ""), *(getattr(row.labels, k) for k in labels),
             *(_cell(row.params.get(k, "")) for k in params), _number(row.value),
             *([f"{row.delta:+.4f}"] if gaps else [])] for row in group.rows]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        lines.append("  " + "  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
    if any(row.is_champion for row in group.rows):
        lines.append("  * trained or registered the champion")
    if more:
        lines.append(f"  also differ: {', '.join(more)}")
    return "\n".join(lines)


def _number(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) and abs(value) < 1e5 else f"{value:.4g}"


def _cell(value: str) -> str:
    return value if len(value) <= MAX_CELL else value[:MAX_CELL - 1] + "…"


# ------------------------------------------------------------------ the plot


def plot_groups(groups: list[Group], path: Path, experiment: str = ""):
    """One panel per task, each on its own scale: a bar per run, coloured by model, the model's
    champion as a dashed line. Written to `path`; returns the (closed) matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(g.task for g in groups))
    models = list(dict.fromkeys(g.model for g in groups))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    columns = min(len(tasks), 3)
    lines = math.ceil(len(tasks) / columns)
    widest = max(sum(len(g.rows) for g in groups if g.task == t) for t in tasks)
    fig, axes = plt.subplots(lines, columns, figsize=(columns * max(3.5, 0.5 * widest + 1.5), 3.8 * lines),
                             squeeze=False)
    flat = list(axes.flat)
    for ax in flat[len(tasks):]:
        fig.delaxes(ax)
    for ax, task in zip(flat, tasks):
        x, names = 0, []
        for group in (g for g in groups if g.task == task):
            start = x
            for row in group.rows:
                ax.bar(x, row.value, color=colours[group.model], label=group.model if x == start else None,
                       edgecolor="black" if row.is_champion else None)
                names.append(row.name)
                x += 1
            if group.champion is not None and group.champion.value is not None:
                ax.hlines(group.champion.value, start - 0.4, x - 0.6, colors=[colours[group.model]], linestyles="--")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel(" / ".join(dict.fromkeys(g.metric for g in groups if g.task == task)), fontsize=8)
        ax.set_title(task)
        if len({g.model for g in groups if g.task == task}) > 1:
            ax.legend(fontsize=7)
    if experiment:
        fig.suptitle(f"{experiment} (dashed: the champion)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return fig
