"""The tables of an :class:`~.analyze.Analysis` as text: ``analysis.md`` (Markdown, with a "how to
read this" line per table) and one CSV per table."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
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


SETTINGS_HOW = (
    "Runs are compared only within one setting: the same checkpoint, dtype, batch size, --limit and task data "
    "(as the leaderboard compares a row with its baseline); runs of different settings are shown apart, one group "
    "each, with no overlap, agreement or scores side by side between groups."
)


def _per_setting(analysis: Analysis, body: Callable[[Analysis, str], list[str]]) -> list[str]:
    """``body(part, figure suffix)`` for each setting group, under its label where there are several."""
    parts = analysis.by_setting()
    if len(parts) == 1:
        return body(parts[0][2], parts[0][1])
    lines: list[str] = []
    for group, suffix, part in parts:
        lines += ([""] if lines else []) + [f"### {_fmt(group.label)}", ""] + body(part, suffix)
    return lines


def to_markdown(analysis: Analysis, figures: Iterable[str] = ()) -> str:
    """``analysis.md``: the runs, the notes, one table per analysis (per setting group where the runs
    have several settings); ``figures``: the PNG names written."""
    figures = set(figures)
    a = analysis
    label = TASK_LABEL.get(a.family, a.task)
    several = len(a.settings) > 1
    lines = [f"# Selection analysis: {a.task} ({len(a.runs)} run{'s' * (len(a.runs) != 1)})", ""]
    lines += _table(
        (["setting"] if several else []) + ["run", "checkpoint", "dtype", "batch size", "limit", "samples", "failed",
                                            "with selection", "not single-image"],
        [([r.setting] if several else []) + [r.label, r.checkpoint, r.dtype, r.batch_size, r.limit, r.samples, r.failed,
                                             r.with_selection, r.not_single_image] for r in a.runs],
    )  # fmt: skip
    if several:
        lines += ["", "## Settings", "", SETTINGS_HOW, ""]
        lines += [f"- {_fmt(g.label)}: {_fmt(', '.join(g.runs))}" for g in a.settings]
    if a.notes:
        lines += ["", "## Notes", ""] + [f"- {_fmt(n)}" for n in a.notes]

    lines += ["", "## 1. Overlap of the kept patches", ""]
    lines.append(
        "How to read this: mean Jaccard |A∩B| / |A∪B| of the patches two views kept, over the samples both have "
        "(n per cell in overlap_n.csv); 1.0 = the same patches, 0.0 = none in common. An in-LLM method has one "
        "view per pruning layer (`@L<layer>`)."
    )
    lines.append("")

    def overlap_body(part: Analysis, suffix: str) -> list[str]:
        if not part.views:
            return [NO_SELECTIONS]
        body = _table(["view"] + part.views, [[v] + row for v, row in zip(part.views, part.overlap.mean)])
        return body + (["", f"![overlap](overlap{suffix}.png)"] if f"overlap{suffix}.png" in figures else [])

    lines += _per_setting(a, overlap_body)

    lines += ["", "## 2. Text sensitivity", ""]
    lines.append(
        "How to read this: per image, the mean Jaccard between the selections for its different questions, "
        "averaged over the images; 1.0 = the method ignores the question, lower = the question changes what it keeps."
    )
    lines.append("")

    def sensitivity_body(part: Analysis, suffix: str) -> list[str]:
        if not part.text_sensitivity:
            return [NO_SELECTIONS]
        body = _table(
            ["view", "text sensitivity", "images", "pairs", "note"],
            [(r.view, r.value, r.images, r.pairs, r.note) for r in part.text_sensitivity],
        )
        name = f"text_sensitivity{suffix}.png"
        return body + (["", f"![text sensitivity]({name})"] if name in figures else [])

    lines += _per_setting(a, sensitivity_body)

    lines += ["", f"## 3. {label} scores per category", ""]
    how = {
        "pope": "POPE accuracy % per question category (adversarial, popular, random)",
        "mme": "MME accuracy % per subtask, acc+ = % of images with both questions right, "
        "score = acc + acc+ (MME's subtask score, out of 200; the `all` row's score is the sum over subtasks)",
        "docvqa": "mean ANLS (0-1) over the questions",
    }[a.family]
    lines += [f"How to read this: {how}; n = samples scored, failed requests counted as logged.", ""]

    def categories_body(part: Analysis, suffix: str) -> list[str]:
        body = _table(_category_header(a.family), [_category_row(r, a.family) for r in part.categories])
        return body + (["", f"![categories](categories{suffix}.png)"] if f"categories{suffix}.png" in figures else [])

    lines += _per_setting(a, categories_body)

    lines += ["", "## 4. Answer agreement", ""]
    unit = SCORE_LABEL[a.family]
    lines.append(
        "How to read this: two runs agree on a sample when their answers match (stripped, case-folded, a trailing "
        f"period dropped); the other columns are each run's {unit} on the samples they agree on and on the ones they do not."
    )
    lines.append("")

    def agreement_body(part: Analysis, suffix: str) -> list[str]:
        if not part.agreement:
            return ["one run only" + (" in this setting" if several else "") + ": nothing to compare"]
        return _table(
            ["run A", "run B", "agree", "disagree", "A on agree", "B on agree", "A on disagree", "B on disagree"],
            [astuple(r) for r in part.agreement],
        )

    lines += _per_setting(a, agreement_body)
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
    labels = {g.name: g.label for g in a.settings}
    # which setting each run belongs to: the other CSVs hold runs of every setting, compared only within one
    run_columns = ["run", "setting", "model", "config", "checkpoint", "dtype", "batch size", "limit", "samples", "failed"]
    run_rows = ([r.label, labels.get(r.setting, r.setting), r.model, r.config, r.checkpoint, r.dtype, r.batch_size,
                 r.limit, r.samples, r.failed] for r in a.runs)  # fmt: skip
    return [
        _write_csv(out / "runs.csv", run_columns, run_rows),
        _write_csv(out / "overlap.csv", ["view"] + a.views, ([v] + row for v, row in zip(a.views, a.overlap.mean))),
        _write_csv(out / "overlap_n.csv", ["view"] + a.views, ([v] + row for v, row in zip(a.views, a.overlap.n))),
        _write_records(out / "overlap_samples.csv", OverlapSample, a.overlap.samples),
        _write_records(out / "text_sensitivity.csv", TextSensitivity, a.text_sensitivity),
        _write_records(out / "text_sensitivity_images.csv", ImageSensitivity, a.image_sensitivity),
        _write_records(out / "categories.csv", CategoryScore, a.categories),
        _write_records(out / "agreement.csv", Agreement, a.agreement),
    ]
