"""The figures of the selection analysis (PNG, matplotlib on the Agg backend): the overlap
heatmap, the text-sensitivity bars and the scores per category. ``analyze`` writes them next to
``analysis.md``; the HTML report embeds them."""

from __future__ import annotations

from pathlib import Path

from ..leaderboard import TASK_LABEL
from ..numbers import MISSING
from .metrics import ALL, SCORE_LABEL, CategoryScore, Overlap, TextSensitivity


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def overlap_plot(result: Overlap, path: Path, title: str = "overlap of the kept patches (mean Jaccard)") -> Path:
    """Heatmap of the mean Jaccard matrix, every cell annotated (— where undefined)."""
    import numpy as np

    plt = _pyplot()
    k = len(result.views)
    values = np.array([[np.nan if v is None else v for v in row] for row in result.mean], dtype=float).reshape(k, k)
    side = 2.5 + 0.9 * k
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            v = values[i, j]
            text = MISSING if np.isnan(v) else f"{v:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if np.isnan(v) or v > 0.6 else "white")
    ax.set_xticks(range(k), result.views, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(k), result.views, fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="Jaccard")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def text_sensitivity_plot(rows: list[TextSensitivity], path: Path, title: str = "text sensitivity (1.0 = ignores the question)") -> Path:
    """One horizontal bar per view, annotated with the images and pairs behind it."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.45 * len(rows)))
    positions = list(range(len(rows)))[::-1]
    colors = [plt.get_cmap("tab10")(i % 10) for i in range(len(rows))]
    ax.barh(positions, [r.value or 0.0 for r in rows], color=colors)
    for y, r in zip(positions, rows):
        text = "no pair" if r.value is None else f"{r.value:.3f} ({r.images} images, {r.pairs} pairs)"
        ax.text((r.value or 0.0) + 0.01, y, text, va="center", fontsize=8)
    ax.set_yticks(positions, [r.view for r in rows], fontsize=8)
    ax.set_xlim(0, 1.45)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlabel("mean Jaccard across the questions on one image")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def category_plot(rows: list[CategoryScore], family: str, path: Path, title: str | None = None) -> Path:
    """Grouped bars: one group per category (``all`` last), one bar per run."""
    plt = _pyplot()
    runs = list(dict.fromkeys(r.run for r in rows))
    categories = sorted({r.category for r in rows}, key=lambda c: (c == ALL, c))
    value = {(r.run, r.category): r.score for r in rows}
    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.9 * len(categories) * max(1, len(runs)) ** 0.5), 4.6))
    for i, run in enumerate(runs):
        xs = [c + (i - (len(runs) - 1) / 2) * width for c in range(len(categories))]
        ax.bar(xs, [value.get((run, c)) or 0.0 for c in categories], width, label=run, color=plt.get_cmap("tab10")(i % 10))
    ax.set_xticks(range(len(categories)), categories, rotation=30 if len(categories) > 4 else 0, ha="right" if len(categories) > 4 else "center")
    ax.set_ylabel(SCORE_LABEL[family])
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or f"{TASK_LABEL.get(family, family)} per category")
    fig.legend(loc="lower center", ncol=min(3, max(1, len(runs))), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(runs) - 1) // 3), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
