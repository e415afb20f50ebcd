"""The PNGs of the evaluate stage and the reports: one function per kind of figure.

matplotlib is imported inside each function with the Agg backend (as `plot_losses` does), so a
stage runs on a machine without a display and importing this module costs nothing.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Save through a temporary sibling and a rename: a reader never sees half a PNG."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def notice(text: str, title: str, path: Path) -> Path:
    """A figure that only says why there is nothing to draw (a report a stage did not make)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    ax.set_title(title)
    return save_figure(fig, path)


def not_run(section: str, out: Path, plot: Path) -> Path:
    """A report stage turned off (`<section>.enabled: false`): its JSON and figure say so, and DVC
    still finds the outputs it expects. Returns the JSON's path."""
    from lmforge.components.atomic import write_json

    note = f"{section}.enabled is false: the stage did not run"
    notice(note, section, Path(plot))
    return write_json(Path(out), {"enabled": False, "note": note})


def confusion_plot(counts: np.ndarray, labels: Sequence[str], title: str, path: Path) -> Path:
    """Gold labels down, predicted across, counts in the cells (scikit-learn's display)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    size = max(4.0, 1.2 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    ConfusionMatrixDisplay(confusion_matrix=counts, display_labels=list(labels)).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d", xticks_rotation=30 if len(labels) > 2 else "horizontal")
    ax.set_title(title)
    return save_figure(fig, path)


def score_scatter(gold: np.ndarray, predicted: np.ndarray, title: str, path: Path) -> Path:
    """STS-B: each pair's predicted similarity against its gold score; a perfect model lies on y = x."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(gold, predicted, s=14, alpha=0.6)
    lo = float(min(0.0, np.min(predicted, initial=0.0)))
    hi = float(max(5.0, np.max(predicted, initial=5.0)))
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1, label="y = x")
    ax.set(xlabel="gold score", ylabel="predicted score", title=title, xlim=(lo, hi), ylim=(lo, hi))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return save_figure(fig, path)


def entity_f1_bars(per_entity: Mapping[str, Mapping[str, float]], overall_f1: float, title: str, path: Path) -> Path:
    """CoNLL: F1 per entity type (support under each bar), the overall entity F1 as a line."""
    plt = _pyplot()
    kinds = sorted(per_entity)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(kinds) + 2), 4))
    bars = ax.bar([f"{k}\n(n={per_entity[k]['support']})" for k in kinds], [per_entity[k]["f1"] for k in kinds])
    ax.bar_label(bars, fmt="%.2f")
    ax.axhline(overall_f1, color="black", linestyle="--", linewidth=1, label=f"overall F1 {overall_f1:.2f}")
    ax.set(ylabel="F1", ylim=(0, 1.05), title=title)
    ax.legend(loc="upper right")
    return save_figure(fig, path)


def qa_bars(metrics: Mapping[str, float], title: str, path: Path) -> Path:
    """SQuAD: exact match and F1 (percent), over all questions and, for v2, HasAns / NoAns apart."""
    plt = _pyplot()
    groups = [("all", "exact_match", "f1", "total")]
    groups += [(g, f"{g}_exact", f"{g}_f1", f"{g}_total") for g in ("HasAns", "NoAns") if f"{g}_exact" in metrics]
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(groups), 4))
    for offset, (label, pick) in ((-0.2, ("exact match", 1)), (0.2, ("F1", 2))):
        bars = ax.bar(x + offset, [metrics[g[pick]] for g in groups], width=0.4, label=label)
        ax.bar_label(bars, fmt="%.1f")
    ax.set_xticks(x, [f"{g[0]}\n(n={metrics[g[3]]})" for g in groups])
    ax.set(ylabel="percent", ylim=(0, 105), title=title)
    ax.legend(loc="upper right")
    return save_figure(fig, path)


ANNOTATED_UP_TO = 12


def similarity_heatmaps(panels: Mapping[str, np.ndarray], tick_labels: Sequence[str], caption: str,
                        title: str, path: Path) -> Path:
    """Side-by-side cosine-similarity matrices on one colour scale, each cell annotated when there are
    at most ANNOTATED_UP_TO rows: beyond that the 9-point numbers overlap, and drawing them took
    most of the report stage (7 of 8.5 s for the demo's 36 sentences, profiled)."""
    plt = _pyplot()
    low = min(0.0, *(float(m.min()) for m in panels.values()))
    n = len(tick_labels)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), layout="constrained")
    image = None
    for ax, (name, matrix) in zip(np.atleast_1d(axes), panels.items()):
        image = ax.imshow(matrix, vmin=low, vmax=1.0, cmap="viridis")
        for i in range(n if n <= ANNOTATED_UP_TO else 0):
            for j in range(n):
                # dark text on the bright (high) end of viridis, light text elsewhere
                shade = (matrix[i, j] - low) / (1.0 - low) if low < 1.0 else 1.0
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=9,
                        color="black" if shade > 0.6 else "white")
        small = {} if n <= ANNOTATED_UP_TO else {"fontsize": 6}
        ax.set_xticks(range(n), tick_labels, rotation=90 if small else 0, **small)
        ax.set_yticks(range(n), tick_labels, **small)
        ax.set_title(name)
    fig.colorbar(image, ax=list(np.atleast_1d(axes)), shrink=0.8, label="cosine similarity")
    fig.suptitle(title)
    fig.text(0.01, -0.02, caption, ha="left", va="top", fontsize=9, family="monospace")  # below the panels
    return save_figure(fig, path)


def paired_bars(labels: Sequence[str], left: Sequence[float | None], right: Sequence[float | None],
                names: tuple[str, str], ylabel: str, title: str, path: Path,
                ranges: tuple[Sequence, Sequence] | None = None) -> Path:
    """Two bars per group (a missing value leaves its bar out and says so); `ranges`, per side, a
    (low, high) per group or None, drawn as a whisker: the spread over seeds."""
    plt = _pyplot()
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.5))
    for side, (offset, values, name) in enumerate(((-0.2, left, names[0]), (0.2, right, names[1]))):
        keep = [i for i, v in enumerate(values) if v is not None]
        ax.bar(x[keep] + offset, [values[i] for i in keep], width=0.4, label=name)
        spread = [i for i in keep if ranges and ranges[side][i] is not None]
        if spread:
            low, high = (np.array([ranges[side][i][k] for i in spread]) for k in (0, 1))
            mid = np.array([values[i] for i in spread])
            ax.errorbar(x[spread] + offset, mid, yerr=[mid - low, high - mid], fmt="none", ecolor="black",
                        capsize=3, linewidth=1)
        for i in keep:  # the value above its bar, or above its whisker
            top = max(values[i], ranges[side][i][1]) if i in spread else values[i]
            ax.annotate(f"{values[i]:.2f}", (x[i] + offset, top), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7)
        for i in set(range(len(labels))) - set(keep):
            ax.text(x[i] + offset, 0.01, "n/a", ha="center", va="bottom", fontsize=7, rotation=90, color="grey")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set(ylabel=ylabel, title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never over a bar
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)
