"""The figures of the selection analysis (PNG, matplotlib on the Agg backend): the overlap
heatmap, the text-sensitivity bars and the scores per category. ``analyze`` writes them next to
``analysis.md``; the HTML report embeds them.

Every figure is sized from its content (views, runs, categories) so that it is at most ~1,300 px wide
at its 100 dpi (the report shows it unscaled: text stays 11 px or more), its labels are shortened and
wrapped (``report_style.display_label``), and the layout keeps every title and label inside the figure
(``report_style.texts_outside`` checks it). Bars take one colour per run (20, then hatched)."""

from __future__ import annotations

import math
from pathlib import Path

from ..leaderboard import TASK_LABEL
from ..numbers import MISSING
from .metrics import ALL, SCORE_LABEL, CategoryScore, Overlap, TextSensitivity
from .report_style import display_label, palette, run_style, wrap

DPI = 100
MAX_WIDTH = 13.0  # inches: 1,300 px at DPI
FONT = 9  # points: 12.5 px at DPI
CHAR = FONT / 72 * 0.6  # inches per character, about


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fit(fig, tries: int = 3) -> None:
    """Grow the figure by what its texts stick out (constrained layout then makes room), a few times."""
    from .report_style import _texts

    for _ in range(tries):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        boxes = [t.get_window_extent(renderer) for t in _texts(fig)]
        w, h = fig.bbox.width, fig.bbox.height
        grow_x = max([-99.0] + [-b.x0 for b in boxes] + [b.x1 - w for b in boxes])
        grow_y = max([-99.0] + [-b.y0 for b in boxes] + [b.y1 - h for b in boxes])
        if grow_x <= -2 and grow_y <= -2:  # every text at least 2 px inside
            return
        width, height = fig.get_size_inches()
        fig.set_size_inches(width + max(0.0, 2 * grow_x + 4) / fig.dpi, height + max(0.0, 2 * grow_y + 4) / fig.dpi)


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    fig.set_dpi(DPI)
    _fit(fig)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _title(text: str, width_in: float) -> str:
    """A title wrapped to the figure's width (at the title's 10.5 pt)."""
    return wrap(text, max(20, int(width_in / (10.5 / 72 * 0.6)) - 4))


def overlap_plot(result: Overlap, path: Path, title: str = "overlap of the kept patches (mean Jaccard)") -> Path:
    """Heatmap of the mean Jaccard matrix; every cell annotated (— where undefined) while the cells are
    big enough to read (the table beside it has every number)."""
    import numpy as np

    plt = _pyplot()
    k = len(result.views)
    values = np.array([[np.nan if v is None else v for v in row] for row in result.mean], dtype=float).reshape(k, k)
    labels = [display_label(v, 30) for v in result.views]
    longest = max((len(line) for label in labels for line in label.split("\n")), default=1)
    margin = 0.8 + longest * CHAR * (1.0 if k > 4 else 1.3)  # room for the row labels (and the column labels, rotated)
    cell = max(0.22, min(0.75, (MAX_WIDTH - margin - 1.3) / max(1, k)))
    width = min(MAX_WIDTH, max(5.0, margin + k * cell + 1.3))
    height = (0.5 if k > 4 else margin * 0.75) + k * cell + 0.8 + 0.2 * title.count("\n")
    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0)
    if cell >= 0.4:
        for i in range(k):
            for j in range(k):
                v = values[i, j]
                text = MISSING if np.isnan(v) else f"{v:.2f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if np.isnan(v) or v > 0.6 else "white")
    ticks = 8 if cell >= 0.3 else 7
    if k > 4:  # the columns numbered as the rows: long labels rotated under the matrix would run into each other
        labels = [f"{label}  {i}" for i, label in enumerate(labels, 1)]
        ax.set_xticks(range(k), [str(i) for i in range(1, k + 1)], fontsize=ticks)
    else:
        ax.set_xticks(range(k), labels, rotation=40, ha="right", rotation_mode="anchor", fontsize=ticks)
    ax.set_yticks(range(k), labels, fontsize=ticks)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="Jaccard")
    ax.set_title(_title(title, width), fontsize=10.5)
    return _save(fig, path)


def text_sensitivity_plot(rows: list[TextSensitivity], path: Path, title: str = "text sensitivity (1.0 = ignores the question)") -> Path:
    """One horizontal bar per view (one colour per run: the views of an in-LLM method share it),
    annotated with the images and pairs behind it."""
    plt = _pyplot()
    labels = [display_label(r.view, 36) for r in rows]
    lines = sum(max(1, label.count("\n") + 1) for label in labels)
    width = 10.0
    fig, ax = plt.subplots(figsize=(width, 1.6 + 0.2 * lines + 0.12 * len(rows) + 0.2 * title.count("\n")), layout="constrained")
    positions = list(range(len(rows)))[::-1]
    runs = list(dict.fromkeys(r.view.split("@")[0] for r in rows))
    styles = [run_style(runs.index(r.view.split("@")[0])) for r in rows]
    for y, r, style in zip(positions, rows, styles):
        ax.barh(y, r.value or 0.0, **style)
        text = "no pair" if r.value is None else f"{r.value:.3f} ({r.images} images, {r.pairs} pairs)"
        ax.text((r.value or 0.0) + 0.01, y, text, va="center", fontsize=8)
    ax.set_yticks(positions, labels, fontsize=8)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlim(0, 1.55)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlabel("mean Jaccard across the questions on one image")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(_title(title, width), fontsize=10.5)
    return _save(fig, path)


MAX_BARS_PER_ROW = 100  # bars (runs × categories, with a gap per category) in one panel row


def category_plot(rows: list[CategoryScore], family: str, path: Path, title: str | None = None) -> Path:
    """Grouped bars: one group per category (``all`` last), one bar per run in its own colour (hatched
    past 20 runs); many categories × runs are split over several panel rows, one legend lists every run."""
    plt = _pyplot()
    runs = list(dict.fromkeys(r.run for r in rows))
    categories = sorted({r.category for r in rows}, key=lambda c: (c == ALL, c))
    value = {(r.run, r.category): r.score for r in rows}
    per_row = max(1, min(len(categories), MAX_BARS_PER_ROW // (len(runs) + 1)))
    n_rows = math.ceil(len(categories) / per_row)
    per_row = math.ceil(len(categories) / n_rows)  # balanced rows
    width = min(MAX_WIDTH, max(6.5, 1.6 + per_row * (len(runs) + 1) * 0.13))
    slot = (width - 1.6) / per_row  # inches per category
    names = {c: wrap(c, max(8, int(slot / CHAR) - 1)) for c in categories}
    label_lines = max(names[c].count("\n") + 1 for c in categories)
    legend_labels = [display_label(run, 60) for run in runs]
    ncol = _legend_columns(legend_labels, width)
    legend_lines = sum(max(label.count("\n") + 1 for label in legend_labels[i : i + ncol]) for i in range(0, len(runs), ncol))
    row_height = 2.4 + 0.17 * label_lines
    height = 0.6 + n_rows * row_height + 0.2 * legend_lines + 0.3
    fig, axes = plt.subplots(n_rows, 1, figsize=(width, height), squeeze=False, layout="constrained")
    bar = 0.8 / max(1, len(runs))
    top = max([v for v in value.values() if v is not None] + [1.0])
    handles = []
    for r, ax in enumerate(axes[:, 0]):
        chunk = categories[r * per_row : (r + 1) * per_row]
        for i, run in enumerate(runs):
            xs = [c + (i - (len(runs) - 1) / 2) * bar for c in range(len(chunk))]
            bars = ax.bar(xs, [value.get((run, c)) or 0.0 for c in chunk], bar, label=legend_labels[i], **run_style(i))
            if r == 0:
                handles.append(bars)
        ax.set_xticks(range(len(chunk)), [names[c] for c in chunk], fontsize=FONT)
        ax.set_xlim(-0.5, per_row - 0.5)
        ax.set_ylim(0, top * 1.05)
        ax.set_ylabel(SCORE_LABEL[family], fontsize=FONT)
        ax.grid(axis="y", alpha=0.3)
    text = title or f"{TASK_LABEL.get(family, family)} per category"
    fig.suptitle(_title(text, width), fontsize=10.5)
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=8, frameon=False)
    return _save(fig, path)




def _legend_columns(labels: list[str], width: float) -> int:
    longest = max((len(line) for label in labels for line in label.split("\n")), default=1)
    return max(1, min(len(labels), int((width - 0.4) / (0.55 + longest * CHAR * 0.95))))


def pareto_plot(rows: list[dict], path: Path, title: str = "accuracy vs time to first token") -> Path:
    """The leaderboard's Pareto plot as the report shows it: one panel per task (main score against mean
    TTFT, the frontier dashed), one colour and marker per run, a legend naming every run below the panels
    (labels shortened and wrapped; the checkpoint's folder added where there are several)."""
    from ..leaderboard import TASK_METRICS, pareto_frontier
    from .report_style import MARKERS

    plt = _pyplot()
    families = [f for f in TASK_METRICS if any(r.get(f"{TASK_LABEL[f]} TTFT s") is not None for r in rows)]
    several = len({(r.get("checkpoint"), r.get("dtype")) for r in rows}) > 1

    def name(r: dict) -> str:
        where = f" @ {Path(str(r['checkpoint'])).name}" if several else ""
        failed = " (FAILED requests)" if r.get("failed requests") else ""
        return display_label(f"{r['model']}:{r['config']}{where}{failed}", 44)

    names = list(dict.fromkeys(name(r) for r in rows))
    colours = palette()
    style = {n: (colours[i % len(colours)], MARKERS[(i + i // len(colours)) % len(MARKERS)]) for i, n in enumerate(names)}
    panels = max(1, len(families))
    width = min(MAX_WIDTH, 4.3 * panels + 0.6)
    ncol = _legend_columns(names, width)
    legend_lines = sum(max(n.count("\n") + 1 for n in names[i : i + ncol]) for i in range(0, len(names), ncol))
    fig, axes = plt.subplots(1, panels, figsize=(width, 4.4 + 0.19 * legend_lines), squeeze=False, layout="constrained")
    for ax, family in zip(axes[0], families or [None]):
        if family is None:
            ax.text(0.5, 0.5, "no timed results", ha="center", va="center")
            continue
        label = next(lbl for lbl, _, main in TASK_METRICS[family] if main)
        points = [(r[f"{TASK_LABEL[family]} TTFT s"], r[label], name(r)) for r in rows
                  if r.get(f"{TASK_LABEL[family]} TTFT s") is not None and r.get(label) is not None]  # fmt: skip
        for x, y, n in points:
            ax.scatter(x, y, s=42, color=style[n][0], marker=style[n][1], edgecolors="#333333", linewidths=0.4)
        frontier = pareto_frontier(points)
        if len(frontier) > 1:
            ax.plot(*zip(*frontier), linestyle="--", linewidth=1, color="grey")
        ax.set_xlabel("time to first token (s, mean)", fontsize=FONT)
        ax.set_ylabel(label, fontsize=FONT)
        ax.set_title(TASK_LABEL[family], fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(_title(title, width), fontsize=10.5)
    handles = [plt.Line2D([], [], linestyle="", marker=style[n][1], color=style[n][0], markeredgecolor="#333333",
                          markeredgewidth=0.4, label=n) for n in names]  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=8, frameon=False)
    return _save(fig, path)
