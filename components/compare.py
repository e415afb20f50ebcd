"""`lmforge compare`: MLflow runs side by side in the terminal, and a plot of one metric."""

from __future__ import annotations

from pathlib import Path

from components.config import TrackingConfig
from components.errors import LmforgeError


def compare_runs(tracking: TrackingConfig, experiment: str, metric: str | None = None, filter_string: str = "",
                 max_runs: int = 20, plot_path: str | Path = "reports/compare.png") -> str:
    """Print the runs of `experiment`: the params that differ between them and their metrics."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking.uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise LmforgeError(f"MLflow experiment {experiment!r} not found at {tracking.uri} (experiments: {names})")
    order = [f"metrics.`{metric}` DESC"] if metric else ["attributes.start_time DESC"]
    runs = client.search_runs([found.experiment_id], filter_string, max_results=max_runs, order_by=order)
    if metric:
        runs = [r for r in runs if metric in r.data.metrics]
    if not runs:
        raise LmforgeError(f"experiment {experiment!r}: no runs" + (f" with metric {metric!r}" if metric else ""))

    param_keys = sorted({k for r in runs for k in r.data.params})
    differing = [k for k in param_keys if len({r.data.params.get(k) for r in runs}) > 1]
    metric_keys = [metric] if metric else sorted({k for r in runs for k in r.data.metrics if "/" not in k or k.startswith("val")})[:8]
    header = ["run", *differing, *metric_keys]
    rows = [[r.info.run_name or r.info.run_id[:8], *(r.data.params.get(k, "") for k in differing),
             *(f"{r.data.metrics[k]:.4f}" if k in r.data.metrics else "" for k in metric_keys)] for r in runs]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    table = "\n".join("  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in [header, *rows])
    print(table)
    if metric:
        _plot(rows, [float(r.data.metrics[metric]) for r in runs], metric, experiment, Path(plot_path))
        print(f"plot: {plot_path}")
    return table


def _plot(rows: list[list], values: list[float], metric: str, experiment: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import os

    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(values) + 2), 3.5))
    ax.bar(range(len(values)), values, color="#4c72b0")
    ax.set_xticks(range(len(values)), [str(r[0]) for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{experiment}: {metric}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
