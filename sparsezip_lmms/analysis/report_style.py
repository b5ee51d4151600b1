"""How the report and the analysis figures look: the page's CSS, one colour (and hatch) per run, labels
shortened for display (paths to their last parts, long labels wrapped; the CSVs keep them whole), the
check that no title or label of a figure is clipped, and the HTML pieces that keep wide tables readable
(the compact leaderboard, the summary of many run pairs, a CSV embedded as a download link).

    texts_outside(fig)   # [] when every title, label, tick and legend text lies inside the figure
"""

from __future__ import annotations

import base64
import csv
import html
import io
import re
import textwrap
from typing import Any, Iterable

from ..leaderboard_text import _flag_label, short_path
from ..numbers import format_value as fmt

# The page: 1,400 px at most; tables wrap their text columns, numbers stay on one line; a wide table
# (the full leaderboard, a big matrix) scrolls inside its own box, behind a <details>.
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1400px;color:#1d2330;padding:0 16px;box-sizing:border-box}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:2px solid #dde3ee;padding-bottom:4px}h3{margin-top:1.4em}
table{border-collapse:collapse;font-size:13px;margin:8px 0 16px}th,td{border:1px solid #d5dae4;padding:3px 7px;text-align:right}
th{background:#eef2f8;position:sticky;top:0}td.text,th.text{text-align:left}tr:nth-child(even) td{background:#f8fafc}
td{white-space:nowrap}td.text{white-space:normal;overflow-wrap:anywhere;max-width:26em}td.text:first-child{min-width:14em}
table.dense{font-size:12px}table.dense td,table.dense th{padding:2px 4px}table.dense td.text:first-child{min-width:11em}
table.compact{width:100%}table.compact td.notes{white-space:normal;overflow-wrap:anywhere;max-width:30em;min-width:12em}
table.compact tr.group td{background:#e6ebf3;font-weight:600;text-align:left;white-space:normal}
table.empty caption{text-align:left;caption-side:top;color:#6a7385;font-size:13px}
.flag{border-bottom:1px dotted #a2400b;color:#a2400b;cursor:help;white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%}.note{color:#6a7385;font-size:13px}.warn{color:#a2400b}
details{margin:6px 0 14px}summary{cursor:pointer;color:#2c4a80;font-size:14px}
ol.flags{font-size:13px;color:#3d4555;padding-left:2.2em}ol.flags li{margin:2px 0;overflow-wrap:anywhere}
figure{margin:12px 0 28px}figcaption{font-size:13px;color:#3d4555;margin-top:4px}img{max-width:100%;height:auto}
.gallery figure{border:1px solid #dde3ee;padding:8px;border-radius:6px}
"""

# ----------------------------------------------------------------------------- colours and labels

# 20 colours: tab10's ten, then tab20's lighter tints of them; past 20 runs the colours repeat with a hatch
HATCHES = ("", "//", "..", "xx", "\\\\", "++", "--", "oo")
MARKERS = "os^Dv<>pPX"


def palette() -> list[tuple[float, float, float, float]]:
    import matplotlib

    tab20 = matplotlib.colormaps["tab20"]
    return [tab20(2 * i) for i in range(10)] + [tab20(2 * i + 1) for i in range(10)]


def run_style(index: int) -> dict[str, Any]:
    """Bar keyword arguments of the ``index``-th run: a colour of 20, then the colours again hatched."""
    colours = palette()
    hatch = HATCHES[(index // len(colours)) % len(HATCHES)]
    return {"color": colours[index % len(colours)], "hatch": hatch or None, "edgecolor": "#333333" if hatch else None}


_PATH = re.compile(r"(?<![\w.…])(?:/|\./|\.\./|~/)[^\s,;=:]+")


def display_label(text: str, width: int | None = None) -> str:
    """A label as shown: every path in it shortened to its last two parts, wrapped to ``width`` characters
    (breaking after ``,`` ``_`` ``:`` ``/`` where there is no space)."""
    text = _PATH.sub(lambda m: short_path(m.group(0)), str(text))
    return wrap(text, width) if width else text


def wrap(text: str, width: int) -> str:
    """``text`` in lines of at most ``width`` characters (existing line breaks kept); identifiers without
    spaces are broken after ``,`` ``_`` ``:`` ``/`` ``=``."""
    out = []
    for line in str(text).split("\n"):
        spaced = re.sub(r"([,_:/=])(?=\S)", "\\1\u200b", line)
        pieces = textwrap.wrap(spaced.replace("\u200b", "\u200b "), width, break_long_words=True) or [""]
        out += [p.replace("\u200b ", "").replace("\u200b", "") for p in pieces]
    return "\n".join(out)


# ----------------------------------------------------------------------------- the clipping check


def _tick_labels(axis) -> list:
    """The tick labels an axis draws: those of its ticks inside the view interval (matplotlib keeps
    labels of ticks outside it, never drawn)."""
    lo, hi = sorted(axis.get_view_interval())
    slack = 1e-9 * max(1.0, abs(hi - lo))
    labels = []
    for tick in axis.get_major_ticks(len(axis.get_majorticklocs())) + axis.get_minor_ticks(len(axis.get_minorticklocs())):
        if tick.get_visible() and lo - slack <= tick.get_loc() <= hi + slack:
            labels += [label for label in (tick.label1, tick.label2) if label.get_visible()]
    return labels


def _texts(fig) -> list:
    """The Text artists a reader sees: figure texts and titles, axes titles, axis labels, the tick labels
    in view, texts drawn in the axes, legend texts (colour bars are axes too)."""
    texts = list(fig.texts)
    for attr in ("_suptitle", "_supxlabel", "_supylabel"):
        if getattr(fig, attr, None) is not None:
            texts.append(getattr(fig, attr))
    legends = list(fig.legends)
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts += [ax.title, getattr(ax, "_left_title", None), getattr(ax, "_right_title", None), *ax.texts]
        if ax.axison:  # axis("off") draws no tick or axis label
            for axis in (ax.xaxis, ax.yaxis):
                if axis.get_visible():
                    texts += [axis.label, *_tick_labels(axis)]
        if ax.get_legend() is not None:
            legends.append(ax.get_legend())
    for legend in legends:
        texts += list(legend.get_texts()) + [legend.get_title()]
    return [t for t in texts if t is not None and t.get_visible() and t.get_text().strip()]


def texts_outside(fig, tolerance: float = 1.0) -> list[str]:
    """Every visible text of ``fig`` whose rendered extent is not inside the figure (a clipped title,
    axis label, tick label or value label), as ``'text' (x0, y0, x1, y1) outside W x H``; [] when none."""
    if not hasattr(fig.canvas, "get_renderer"):  # a figure closed by pyplot: draw it on an Agg canvas
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    problems = []
    for text in _texts(fig):
        box = text.get_window_extent(renderer)
        if box.x0 < -tolerance or box.y0 < -tolerance or box.x1 > width + tolerance or box.y1 > height + tolerance:
            problems.append(f"{text.get_text()!r} ({box.x0:.0f}, {box.y0:.0f}, {box.x1:.0f}, {box.y1:.0f}) outside {width:.0f} x {height:.0f}")
    return problems


def assert_texts_inside(fig) -> None:
    problems = texts_outside(fig)
    assert not problems, "clipped text: " + "; ".join(problems)


# ----------------------------------------------------------------------------- HTML pieces


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def breakable(value: Any) -> str:
    """``value`` escaped, with a line-break opportunity (<wbr>) after each ``,`` ``_`` ``:`` ``/`` ``=``: a
    long run label or path wraps at its separators in a narrow column, not in the middle of a word."""
    return re.sub(r"([,_:/=])(?=[^<\s])", "\\1<wbr>", esc(value))


def csv_link(name: str, header: list[str], rows: Iterable[Iterable[Any]], text: str | None = None) -> str:
    """A download link holding the CSV itself (a data: URI: the page stays one self-contained file)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    data = base64.b64encode(buffer.getvalue().encode("utf-8")).decode("ascii")
    return f'<a class="csv" download="{esc(name)}" href="data:text/csv;base64,{data}">{esc(text or name)}</a>'


def _score_cell(row: dict[str, Any], label: str, retention: str) -> str:
    kept = row.get(retention)
    return fmt(row.get(label)) + ("" if kept is None else f" ({kept:.1f}%)")


def compact_leaderboard(columns: list[str], rows: list[dict[str, Any]], mains: list[tuple[str, str]], css_id: str = "leaderboard") -> str:
    """The leaderboard's main columns, rows grouped under their checkpoint (shortened), dtype, batch
    size and limit; a row's notes as short flags carrying the whole note (title attribute, and numbered
    below the table). ``mains``: (main score column, its retention column) per task."""
    head = ["run", *[f"{label} (retention)" for label, _ in mains], "visual tokens", "TFLOPs", "avg retention", "TTFT speed-up", "notes"]
    notes: list[str] = []
    groups: dict[tuple[str, ...], list[str]] = {}
    for row in rows:
        flags = []
        for note in (n for n in str(row.get("notes") or "").split("; ") if n):
            notes.append(f"{row['model']}:{display_label(row['config'])}: {note}")
            flags.append(f'<span class="flag" title="{esc(note)}">[{len(notes)}] {esc(_flag_label(note))}</span>')
        average = row.get("avg retention %")
        cells = [f'<td class="text" title="{esc(row["model"])}:{esc(row["config"])}">{breakable(row["model"] + ":" + display_label(row["config"]))}</td>']
        cells += [f"<td>{esc(_score_cell(row, label, retention))}</td>" for label, retention in mains]
        cells += [f"<td>{esc(fmt(row.get('visual tokens')))}</td>", f"<td>{esc(fmt(row.get('prefill TFLOPs')))}</td>"]
        cells += [f"<td>{'—' if average is None else f'{average:.1f}%'}</td>", f"<td>{esc(fmt(row.get('TTFT speed-up')))}</td>"]
        cells.append(f'<td class="text notes">{", ".join(flags)}</td>')
        key = (str(row.get("checkpoint")), str(row.get("dtype")), str(row.get("batch size")), str(row.get("limit")))
        groups.setdefault(key, []).append("<tr>" + "".join(cells) + "</tr>")
    body = []
    for (checkpoint, dtype, batch, limit), lines in groups.items():
        body.append(f'<tr class="group"><td colspan="{len(head)}" title="{esc(checkpoint)}">{esc(short_path(checkpoint))} · dtype '
                    f"{esc(dtype)} · batch size {esc(batch)} · limit {esc(limit)}</td></tr>")  # fmt: skip
        body += lines
    ths = "".join((f'<th class="text">{esc(h)}</th>' if h in ("run", "notes") else f"<th>{esc(h)}</th>") for h in head)
    table = f'<table class="compact" id="{esc(css_id)}"><thead><tr>{ths}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    listed = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return table + (f'<ol class="flags">{listed}</ol>' if notes else "")


def pair_summary(runs: list[str], pairs: list[Any], family_unit: str, ident: str, top: int = 5) -> str:
    """Many runs' answer agreement in little room: a runs × runs matrix of % answers agreed (runs
    numbered) and the ``top`` most and least agreeing pairs (``metrics.Agreement`` records)."""
    index = {run: i for i, run in enumerate(runs, 1)}
    share: dict[tuple[str, str], float | None] = {}
    for p in pairs:
        n = p.n_agree + p.n_disagree
        share[(p.run_a, p.run_b)] = share[(p.run_b, p.run_a)] = 100.0 * p.n_agree / n if n else None
    head = "".join(f"<th>{i}</th>" for i in index.values())
    lines = []
    for run, i in index.items():
        cells = "".join("<td>—</td>" if run == other or share.get((run, other)) is None
                        else f"<td>{share[(run, other)]:.0f}</td>" for other in runs)  # fmt: skip
        lines.append(f'<tr><td class="text">{i}. {breakable(display_label(run))}</td>{cells}</tr>')
    matrix = (f'<div class="scroll"><table id="agreement-{esc(ident)}"><thead><tr><th class="text">run</th>{head}</tr></thead>'
              f"<tbody>{''.join(lines)}</tbody></table></div>")  # fmt: skip
    ranked = sorted((p for p in pairs if share.get((p.run_a, p.run_b)) is not None), key=lambda p: share[(p.run_a, p.run_b)])

    def rows(chosen: list[Any]) -> str:
        return "".join(
            f'<tr><td class="text">{index[p.run_a]}. {breakable(display_label(p.run_a))}</td><td class="text">{index[p.run_b]}. '
            f"{breakable(display_label(p.run_b))}</td><td>{share[(p.run_a, p.run_b)]:.0f}</td><td>{p.n_agree}</td><td>{p.n_disagree}</td>"
            f"<td>{esc(fmt(p.a_on_disagree))}</td><td>{esc(fmt(p.b_on_disagree))}</td></tr>"
            for p in chosen
        )

    heads = ["run A", "run B", "% agree", "agree", "disagree", f"A {family_unit} on disagree", f"B {family_unit} on disagree"]
    ths = "".join((f'<th class="text">{esc(h)}</th>' if i < 2 else f"<th>{esc(h)}</th>") for i, h in enumerate(heads))
    top_k = (f'<table id="agreement-top-{esc(ident)}"><thead><tr><th class="text" colspan="{len(heads)}">the {top} least '
             f"agreeing pairs</th></tr><tr>{ths}</tr></thead><tbody>{rows(ranked[:top])}</tbody>"
             f'<thead><tr><th class="text" colspan="{len(heads)}">the {top} most agreeing pairs</th></tr></thead>'
             f"<tbody>{rows(ranked[::-1][:top])}</tbody></table>")  # fmt: skip
    return matrix + top_k
