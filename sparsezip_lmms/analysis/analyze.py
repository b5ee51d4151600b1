"""Analysis of ``--log_samples`` runs of one task: what the methods kept and how their answers compare.

    python -m sparsezip_lmms analyze results/ more_results/ --task pope_eff --out analysis/

A *view* is one selection a run makes per sample: a vision-side method has one (labelled with the
run, ``model:config``), an in-LLM method one per pruning layer (``model:config@L<layer>``). Over the
single-image samples: the Jaccard overlap of the kept patches between every two views (samples
matched by ``doc_id``), and each view's text sensitivity (the overlap between the selections for
different questions on the same image). Over every sample: the scores per sub-category and, for
every two runs, how often they give the same answer and how each scores where they agree and
where they do not. Runs are compared only within one setting (checkpoint, dtype, batch size,
``--limit`` and the task's data: :mod:`.settings`); runs of different settings are shown apart, one
labelled group each, with a note naming what differs. :func:`analyze` returns the numbers
(:class:`Analysis`); :func:`write_report` writes ``analysis.md``, the CSVs and the figures. The
computations are in :mod:`.metrics`, the Markdown and CSV in :mod:`.render`, the figures in
:mod:`.plots`; their names are importable from here as well.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path

from ..leaderboard import TASK_LABEL, task_family
from ..numbers import mean
from .metrics import (
    ALL,
    NO_SELECTIONS,
    SCORE_LABEL,
    SCORE_SCALE,
    Agreement,
    CategoryScore,
    ImageSensitivity,
    Overlap,
    OverlapSample,
    TextSensitivity,
    View,
    accuracy_plus,
    agreement,
    category_scores,
    hash_mismatches,
    jaccard,
    normalise_answer,
    overlap,
    run_views,
    text_sensitivity,
)
from .plots import category_plot, overlap_plot, text_sensitivity_plot
from .render import to_markdown, write_csvs
from .samples import Run, load_runs
from .settings import SettingGroup, apart_notes, group_runs, run_labels

__all__ = [
    "ALL",
    "NO_SELECTIONS",
    "SCORE_LABEL",
    "SCORE_SCALE",
    "Agreement",
    "Analysis",
    "AnalysisError",
    "CategoryScore",
    "ImageSensitivity",
    "Overlap",
    "OverlapSample",
    "RunSummary",
    "SettingGroup",
    "TextSensitivity",
    "View",
    "accuracy_plus",
    "agreement",
    "analyze",
    "category_plot",
    "category_scores",
    "choose_task",
    "figure_titles",
    "hash_mismatches",
    "jaccard",
    "main",
    "mean",
    "normalise_answer",
    "overlap",
    "overlap_plot",
    "run_labels",
    "run_views",
    "text_sensitivity",
    "text_sensitivity_plot",
    "to_markdown",
    "write_csvs",
    "write_report",
]


class AnalysisError(ValueError):
    """Nothing can be analysed (no runs, no samples, or no single task chosen)."""



# ----------------------------------------------------------------------------- the whole analysis


@dataclass(frozen=True)
class RunSummary:
    """One analysed run and what its samples files held."""

    label: str
    model: str
    config: str
    checkpoint: str
    dtype: str
    samples: int
    with_selection: int  # samples with a logged selection
    not_single_image: int  # of those, selections not of exactly one image (left out of overlap / sensitivity)
    malformed_lines: int
    malformed_selections: int
    sources: list[str]
    failed: int = 0  # requests the model answered with an error (empty answer), as the leaderboard counts them
    batch_size: str = "?"  # as the leaderboard shows it
    limit: str = "all"
    setting: str = "A"  # the name of its SettingGroup


@dataclass(frozen=True)
class Analysis:
    """Everything :func:`write_report` writes, as plain data."""

    task: str
    family: str  # "pope", "mme" or "docvqa"
    runs: list[RunSummary]
    views: list[str]  # view labels in the order of the overlap matrix
    overlap: Overlap
    text_sensitivity: list[TextSensitivity]
    image_sensitivity: list[ImageSensitivity]
    categories: list[CategoryScore]
    agreement: list[Agreement]
    notes: list[str]  # problems and warnings, one sentence each
    settings: list[SettingGroup] = field(default_factory=list)  # the runs grouped by setting, compared within a group

    def part(self, group: SettingGroup) -> Analysis:
        """The analysis of one setting group's runs only (its overlap matrix a sub-matrix); no notes."""
        runs = set(group.runs)
        index = [i for i, run in enumerate(self.overlap.runs) if run in runs]
        views = [self.overlap.views[i] for i in index]

        def sub(matrix: list[list]) -> list[list]:
            return [[matrix[i][j] for j in index] for i in index]

        kept = set(views)
        o = self.overlap
        matrix = Overlap(views, sub(o.mean), sub(o.n), sub(o.undefined), [s for s in o.samples if s.view_a in kept],
                         [o.runs[i] for i in index])  # fmt: skip
        return replace(
            self, runs=[r for r in self.runs if r.label in runs], views=views, overlap=matrix,
            text_sensitivity=[t for t in self.text_sensitivity if t.view in kept],
            image_sensitivity=[t for t in self.image_sensitivity if t.view in kept],
            categories=[c for c in self.categories if c.run in runs],
            agreement=[a for a in self.agreement if a.run_a in runs and a.run_b in runs], notes=[], settings=[group],
        )  # fmt: skip

    def by_setting(self) -> list[tuple[SettingGroup | None, str, Analysis]]:
        """(group, suffix for its figure files, its part) per setting; one run setting: ``[(None, "", self)]``,
        so that a single setting reads and is written as before there were groups."""
        if len(self.settings) <= 1:
            return [(None, "", self)]
        return [(group, f"_{group.name}", self.part(group)) for group in self.settings]


def choose_task(runs: list[Run], task: str | None, problems: Iterable[str] = ()) -> str:
    """The one task to analyse: ``task`` if some run has it, else the only task the runs hold
    (tasks with samples first); AnalysisError listing the tasks found otherwise."""
    counts: dict[str, int] = defaultdict(int)
    for run in runs:
        counts[run.task] += 1
    found = ", ".join(f"{t} ({counts[t]} run{'s' * (counts[t] != 1)})" for t in sorted(counts))
    if not counts:
        raise AnalysisError("no POPE / MME / DocVQA run found" + "".join(f"\n  {p}" for p in problems))
    if task is not None:
        if task not in counts:
            raise AnalysisError(f"no run of task {task!r}; tasks found: {found}")
        return task
    candidates = sorted({r.task for r in runs if r.samples}) or sorted(counts)
    if len(candidates) > 1:
        raise AnalysisError(f"the runs hold several tasks; pick one with --task: {found}")
    return candidates[0]


def _summary(label: str, run: Run, setting: str) -> RunSummary:
    selected = [s for s in run.samples.values() if s.images is not None]
    return RunSummary(
        label=label,
        model=run.model,
        config=run.config,
        checkpoint=run.checkpoint,
        dtype=run.dtype,
        samples=len(run.samples),
        with_selection=len(selected),
        not_single_image=sum(1 for s in selected if len(s.images) != 1),
        malformed_lines=run.malformed_lines,
        malformed_selections=run.malformed_selections,
        sources=run.sources,
        failed=sum(1 for s in run.samples.values() if s.error is not None),
        batch_size=run.batch_size,
        limit=run.limit,
        setting=setting,
    )


def _run_notes(summary: RunSummary, run: Run) -> list[str]:
    notes = [f"{summary.label}: {p}" for p in run.problems]
    malformed = []
    if summary.malformed_lines:
        malformed.append(f"{summary.malformed_lines} malformed samples lines skipped")
    if summary.malformed_selections:
        malformed.append(f"{summary.malformed_selections} malformed selections left out")
    if malformed:
        notes.append(f"{summary.label}: {', '.join(malformed)} (first: {run.first_malformed})")
    if summary.failed:
        first = next(s.error for s in run.samples.values() if s.error is not None)
        notes.append(
            f"{summary.label}: FAILED: {summary.failed} of {summary.samples} requests (first error: {first}); "
            "their empty answers are scored as logged"
        )
    answered = summary.samples - summary.failed  # a failed request logs no selection
    if summary.samples and summary.failed == summary.samples:
        notes.append(f"{summary.label}: no selections: every request failed")
    elif answered and not summary.with_selection:
        notes.append(f"{summary.label}: {NO_SELECTIONS}")
    elif answered > summary.with_selection:
        notes.append(f"{summary.label}: {answered - summary.with_selection} answered samples without a selection")
    if summary.not_single_image:
        notes.append(
            f"{summary.label}: {summary.not_single_image} requests without exactly one image left out of overlap and text sensitivity"
        )
    unscored = sum(1 for s in run.samples.values() if s.score is None)
    if unscored:
        notes.append(f"{summary.label}: {unscored} samples without a score left out of the scores")
    return notes


def analyze(paths: Iterable[str | Path], task: str | None = None) -> Analysis:
    """Read the runs under ``paths`` (results folders or ``*_results.json``) and analyse one task.
    AnalysisError when there is nothing to analyse or the runs hold several tasks and ``task`` is None."""
    all_runs, problems = load_runs(paths)
    task = choose_task(all_runs, task, problems)
    runs = sorted((r for r in all_runs if r.task == task), key=lambda r: r.label)
    labels = run_labels(runs)
    groups = group_runs(labels, runs)
    group_of = {label: group.name for group in groups for label in group.runs}
    notes = list(problems)
    summaries = []
    for label, run in zip(labels, runs):
        summaries.append(_summary(label, run, group_of[label]))
        notes += _run_notes(summaries[-1], run)
    samples = {label: run.samples for label, run in zip(labels, runs) if run.samples}
    if not samples:
        raise AnalysisError(f"no samples for {task}" + "".join(f"\n  {n}" for n in notes))
    family = task_family(task) or ""
    notes += apart_notes(groups)

    mismatches: dict[frozenset[str], list[int]] = {}
    for group in groups:  # documents of runs never compared need not match
        mismatches.update(hash_mismatches({label: samples[label] for label in group.runs if label in samples}))
    for pair, docs in mismatches.items():
        a, b = sorted(pair)
        shown = ", ".join(map(str, docs[:5])) + (", ..." if len(docs) > 5 else "")
        notes.append(f"{a} vs {b}: doc_hash differs on {len(docs)} docs ({shown}); left out of their comparisons")

    views = [view for label, by_doc in samples.items() for view in run_views(label, by_doc.values(), group_of[label])]
    matrix = overlap(views, mismatches)
    kinds = {kind: sorted({v.run for v in views if v.kind == kind}) for kind in {v.kind for v in views}}
    if len(kinds) > 1:
        names = {"llava": "LLaVA-1.5", "llava_next": "LLaVA-NeXT (base view)", "qwen2_5_vl": "Qwen2.5-VL (each image its own grid)"}
        parts = "; ".join(f"{names.get(k, k)}: {', '.join(runs)}" for k, runs in sorted(kinds.items()))
        notes.append(
            f"kept patches are not compared across model families, whose grid positions index different views "
            f"of the image ({parts}); their overlap cells are empty"
        )
    undefined = sum(matrix.undefined[i][j] for i, j in combinations(range(len(views)), 2))
    if undefined:
        notes.append(f"{undefined} sample pairs where both views kept no patch (Jaccard undefined, left out of the means)")
    sensitivity, per_image = [], []
    for view in views:
        row, images = text_sensitivity(view)
        sensitivity.append(row)
        per_image += images
    categories = [row for label, by_doc in samples.items() for row in category_scores(label, by_doc.values(), family)]
    agreements = [
        agreement(a, samples[a], b, samples[b], family, mismatches.get(frozenset((a, b)), ()))
        for a, b in combinations(samples, 2)
        if group_of[a] == group_of[b]
    ]
    return Analysis(task, family, summaries, matrix.views, matrix, sensitivity, per_image, categories, agreements, notes, groups)


# ----------------------------------------------------------------------------- report and command line


def figure_titles(family: str, group: SettingGroup | None) -> dict[str, dict[str, str]]:
    """Keyword arguments (``title``) for the overlap, text-sensitivity and category figures of one
    setting group: the plots' own titles with the group's label, none (their defaults) for a single setting."""
    if group is None:
        return {"overlap": {}, "text": {}, "categories": {}}
    return {
        "overlap": {"title": f"overlap of the kept patches (mean Jaccard)\n{group.label}"},
        "text": {"title": f"text sensitivity (1.0 = ignores the question)\n{group.label}"},
        "categories": {"title": f"{TASK_LABEL.get(family, family)} per category\n{group.label}"},
    }


def write_report(analysis: Analysis, out_dir: str | Path) -> list[Path]:
    """Write ``analysis.md``, the CSVs and the figures (a figure only when it has data) into
    ``out_dir``; the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = write_csvs(analysis, out)
    figures = []
    for group, suffix, part in analysis.by_setting():  # one set of figures per setting: never side by side
        titles = figure_titles(part.family, group)
        if part.views:
            figures.append(overlap_plot(part.overlap, out / f"overlap{suffix}.png", **titles["overlap"]))
            figures.append(text_sensitivity_plot(part.text_sensitivity, out / f"text_sensitivity{suffix}.png", **titles["text"]))
        if part.categories:
            figures.append(category_plot(part.categories, part.family, out / f"categories{suffix}.png", **titles["categories"]))
    markdown = out / "analysis.md"
    markdown.write_text(to_markdown(analysis, [f.name for f in figures]), encoding="utf-8")
    return [markdown, *written, *figures]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsezip_lmms analyze", description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("paths", nargs="+", help="results folders or *_results.json files of --log_samples runs")
    parser.add_argument("--task", default=None, help="the task to analyse, needed when the runs hold several (default: their only task)")
    parser.add_argument("--out", default="analysis", help="folder for analysis.md, the CSVs and the PNG figures (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        analysis = analyze(args.paths, args.task)
    except AnalysisError as err:
        print(f"error: analyze: {err}", file=sys.stderr)
        return 2
    for note in analysis.notes:
        print(f"warning: {note}", file=sys.stderr)
    written = write_report(analysis, args.out)
    print(written[0].read_text(encoding="utf-8"))
    print("written: " + ", ".join(str(p) for p in written))
    return 0
