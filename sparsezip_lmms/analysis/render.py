"""The tables of an :class:`~.analyze.Analysis` as text: ``analysis.md`` (Markdown, with a "how to
read this" line per table) and one CSV per table."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import astuple, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..leaderboard import TASK_LABEL
from ..numbers import format_value
from .metrics import (
    NO_SELECTIONS,
    SCORE_LABEL,
    Agreement,
    CategoryScore,
    ImageSensitivity,
    OverlapSample,
    TextSensitivity,
)

if TYPE_CHECKING:
    from .analyze import Analysis


# ----------------------------------------------------------------------------- Markdown


def _fmt(value: Any) -> str:
    """A Markdown cell: floats to 4 significant digits whatever their size (MME's summed score too)."""
    return format_value(value, markdown=True, fixed_from=None)


def _table(header: list[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_fmt(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def _category_header(family: str) -> list[str]:
    header = ["run", "category", "n", SCORE_LABEL[family]]
    return header + (["acc+ %", "score (acc + acc+)"] if family == "mme" else [])


def _category_row(row: CategoryScore, family: str) -> list[Any]:
    values = [row.run, row.category, row.n, row.score]
    return values + ([row.accuracy_plus, row.mme_score] if family == "mme" else [])


def to_markdown(analysis: Analysis, figures: Iterable[str] = ()) -> str:
    """``analysis.md``: the runs, the notes, one table per analysis; ``figures``: the PNG names written."""
    figures = set(figures)
    a = analysis
    label = TASK_LABEL.get(a.family, a.task)
    lines = [f"# Selection analysis: {a.task} ({len(a.runs)} run{'s' * (len(a.runs) != 1)})", ""]
    lines += _table(
        ["run", "checkpoint", "dtype", "samples", "failed", "with selection", "not single-image"],
        [(r.label, r.checkpoint, r.dtype, r.samples, r.failed, r.with_selection, r.not_single_image) for r in a.runs],
    )
    if a.notes:
        lines += ["", "## Notes", ""] + [f"- {_fmt(n)}" for n in a.notes]

    lines += ["", "## 1. Overlap of the kept patches", ""]
    lines.append(
        "How to read this: mean Jaccard |A∩B| / |A∪B| of the patches two views kept, over the samples both have "
        "(n per cell in overlap_n.csv); 1.0 = the same patches, 0.0 = none in common. An in-LLM method has one "
        "view per pruning layer (`@L<layer>`)."
    )
    lines.append("")
    if a.views:
        lines += _table(["view"] + a.views, [[v] + row for v, row in zip(a.views, a.overlap.mean)])
        if "overlap.png" in figures:
            lines += ["", "![overlap](overlap.png)"]
    else:
        lines.append(NO_SELECTIONS)

    lines += ["", "## 2. Text sensitivity", ""]
    lines.append(
        "How to read this: per image, the mean Jaccard between the selections for its different questions, "
        "averaged over the images; 1.0 = the method ignores the question, lower = the question changes what it keeps."
    )
    lines.append("")
    if a.text_sensitivity:
        lines += _table(
            ["view", "text sensitivity", "images", "pairs", "note"],
            [(r.view, r.value, r.images, r.pairs, r.note) for r in a.text_sensitivity],
        )
        if "text_sensitivity.png" in figures:
            lines += ["", "![text sensitivity](text_sensitivity.png)"]
    else:
        lines.append(NO_SELECTIONS)

    lines += ["", f"## 3. {label} scores per category", ""]
    how = {
        "pope": "POPE accuracy % per question category (adversarial, popular, random)",
        "mme": "MME accuracy % per subtask, acc+ = % of images with both questions right, "
        "score = acc + acc+ (MME's subtask score, out of 200; the `all` row's score is the sum over subtasks)",
        "docvqa": "mean ANLS (0-1) over the questions",
    }[a.family]
    lines += [f"How to read this: {how}; n = samples scored, failed requests counted as logged.", ""]
    lines += _table(_category_header(a.family), [_category_row(r, a.family) for r in a.categories])
    if "categories.png" in figures:
        lines += ["", "![categories](categories.png)"]

    lines += ["", "## 4. Answer agreement", ""]
    unit = SCORE_LABEL[a.family]
    lines.append(
        "How to read this: two runs agree on a sample when their answers match (stripped, case-folded, a trailing "
        f"period dropped); the other columns are each run's {unit} on the samples they agree on and on the ones they do not."
    )
    lines.append("")
    if a.agreement:
        lines += _table(
            ["run A", "run B", "agree", "disagree", "A on agree", "B on agree", "A on disagree", "B on disagree"],
            [astuple(r) for r in a.agreement],
        )
    else:
        lines.append("one run only: nothing to compare")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- CSV


def _cell(value: Any) -> Any:
    return "" if value is None else value


def _write_csv(path: Path, header: list[str], rows: Iterable[Iterable[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([_cell(v) for v in row] for row in rows)
    return path


def _write_records(path: Path, cls: type, rows: Iterable[Any]) -> Path:
    return _write_csv(path, [f.name for f in fields(cls)], (astuple(r) for r in rows))


def write_csvs(analysis: Analysis, out: Path) -> list[Path]:
    """Every table of ``analysis`` as a CSV in ``out`` (empty value = None); the paths written."""
    a = analysis
    return [
        _write_csv(out / "overlap.csv", ["view"] + a.views, ([v] + row for v, row in zip(a.views, a.overlap.mean))),
        _write_csv(out / "overlap_n.csv", ["view"] + a.views, ([v] + row for v, row in zip(a.views, a.overlap.n))),
        _write_records(out / "overlap_samples.csv", OverlapSample, a.overlap.samples),
        _write_records(out / "text_sensitivity.csv", TextSensitivity, a.text_sensitivity),
        _write_records(out / "text_sensitivity_images.csv", ImageSensitivity, a.image_sensitivity),
        _write_records(out / "categories.csv", CategoryScore, a.categories),
        _write_records(out / "agreement.csv", Agreement, a.agreement),
    ]
