"""The leaderboard as the terminal shows it: at most ``width`` characters per line, every flag explained.

The full table (every column, names and paths whole) is leaderboard.md / leaderboard.csv; here:

* rows are grouped by checkpoint and dtype, each group under one header line (the checkpoint shortened to
  its last two path parts), so no row repeats a path;
* one column per task holds its main score and its retention (``0.78 (97.5%)``), then the visual tokens,
  prefill TFLOPs, average retention and TTFT speed-up;
* a row's notes (FAILED, OVER BUDGET with its reason, not compared, missing tasks) become numbered flags
  (``[1]``), written out in full below the table;
* a label too long for the line is cut in its middle with ``…`` (the CSV has it whole).
"""

from __future__ import annotations

import textwrap
from pathlib import PurePath
from typing import Any

from .numbers import format_value

__all__ = ["short_path", "terminal_table"]

ELLIPSIS = "…"


def short_path(path: str, parts: int = 2) -> str:
    """The last ``parts`` components of a path (``…/demo_output/tiny-llava``); a hub id as it is."""
    pieces = PurePath(path).parts
    if len(pieces) <= parts or not path.startswith(("/", ".", "~")):
        return path
    return ELLIPSIS + "/" + "/".join(pieces[-parts:])


def _cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut in the middle."""
    if len(text) <= width:
        return text
    keep = max(1, width - 1)
    return text[: (keep + 1) // 2] + ELLIPSIS + text[len(text) - keep // 2 :]


def _flag_label(note: str) -> str:
    """A short name for a note, shown in the row (the note itself is written out below)."""
    for prefix in ("FAILED", "OVER BUDGET", "not compared", "missing", "no llava_hf_timed", "task data", "mixed"):
        if note.startswith(prefix) or note.split(":")[0].endswith(prefix):
            return prefix
    if " not compared " in note:
        return "not compared"
    return note.split(":")[0][:12]


def _score(row: dict[str, Any], label: str, retention: str) -> str:
    value, kept = row.get(label), row.get(retention)
    text = format_value(value)
    return text if kept is None else f"{text} ({kept:.1f}%)"


def terminal_table(
    columns: list[str], rows: list[dict[str, Any]], main_labels: list[tuple[str, str]], width: int = 160, title: str | None = None
) -> str:
    """The compact table. ``main_labels``: (score column, its retention column) per task, in order."""
    head = ["run", *[label for label, _ in main_labels], "vis tok", "TFLOPs", "avg ret", "TTFT x", "flags"]
    notes: list[str] = []
    groups: dict[tuple[str, str, str, str], list[list[str]]] = {}
    for row in rows:
        flags = []
        for note in (n for n in str(row.get("notes") or "").split("; ") if n):
            notes.append(f"{row['model']}:{row['config']}: {note}")
            flags.append(f"[{len(notes)}] {_flag_label(note)}")
        cells = [f"{row['model']}:{row['config']}"]
        cells += [_score(row, label, retention) for label, retention in main_labels]
        cells += [format_value(row.get("visual tokens")), format_value(row.get("prefill TFLOPs"))]
        average = row.get("avg retention %")
        cells += ["—" if average is None else f"{average:.1f}%", format_value(row.get("TTFT speed-up")), ", ".join(flags)]
        key = (str(row.get("checkpoint")), str(row.get("dtype")), str(row.get("batch size")), str(row.get("limit")))
        groups.setdefault(key, []).append(cells)
    all_cells = [c for group in groups.values() for c in group]
    widths = [max([len(h)] + [len(c[i]) for c in all_cells]) for i, h in enumerate(head)]
    # the run label and the flags give way when the line is too long
    for column in (0, len(head) - 1):
        excess = sum(widths) + 3 * (len(widths) - 1) - width
        if excess > 0:
            widths[column] = max(len(head[column]), widths[column] - excess)

    def line(cells: list[str]) -> str:
        return " | ".join(_cut(c, w).ljust(w) for c, w in zip(cells, widths)).rstrip()

    out = [title, ""] if title else []
    for (checkpoint, dtype, batch, limit), group in groups.items():
        out.append(_cut(f"{short_path(checkpoint)}  dtype {dtype}  batch size {batch}  limit {limit}", width))
        out.append(line(head))
        out.append("-+-".join("-" * w for w in widths))
        out += [line(cells) for cells in group]
        out.append("")
    if notes:
        out.append("flags:")
        for i, note in enumerate(notes, 1):
            out += textwrap.wrap(f"[{i}] {note}", width, subsequent_indent="    ", break_on_hyphens=False)
    return "\n".join(out)
