"""Analysis of ``--log_samples`` runs of one task: what the methods kept and how their answers compare.

    python -m sparsezip_lmms analyze results/ more_results/ --task pope_eff --out analysis/

A *view* is one selection a run makes per sample: a vision-side method has one (labelled with the
run, ``model:config``), an in-LLM method one per pruning layer (``model:config@L<layer>``). Over the
single-image samples: the Jaccard overlap of the kept patches between every two views (samples
matched by ``doc_id``), and each view's text sensitivity (the overlap between the selections for
different questions on the same image). Over every sample: the scores per sub-category and, for
every two runs, how often they give the same answer and how each scores where they agree and
where they do not. :func:`analyze` returns the numbers (:class:`Analysis`); :func:`write_report`
writes ``analysis.md``, the CSVs and the figures.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import astuple, dataclass, fields
from itertools import combinations
from pathlib import Path
from typing import Any

from ..leaderboard import MISSING, TASK_LABEL, task_family
from .samples import Run, Sample, load_runs

NO_SELECTIONS = "no selections logged (run with --log_samples; the model argument log_selection must not be false)"
SCORE_SCALE = {"pope": 100.0, "mme": 100.0, "docvqa": 1.0}  # per-sample score -> reported unit
SCORE_LABEL = {"pope": "accuracy %", "mme": "accuracy %", "docvqa": "ANLS"}
ALL = "all"


class AnalysisError(ValueError):
    """Nothing can be analysed (no runs, no samples, or no single task chosen)."""


# ----------------------------------------------------------------------------- views


@dataclass(frozen=True)
class View:
    """One selection per single-image sample of a run: its kept patches, image and question."""

    label: str  # run label, plus @L<layer> for an in-LLM method's pruning layer
    run: str  # run label
    patches: dict[int, frozenset[int]]  # doc_id -> patches kept
    images: dict[int, str]  # doc_id -> image fingerprint
    questions: dict[int, str | None]  # doc_id -> question text


def run_views(run: str, samples: Iterable[Sample]) -> list[View]:
    """The views of one run's single-image samples with a selection: one keyed by ``kept``, or, for
    images that carry ``layers``, one per layer (``run@L<layer>``), in layer order."""
    patches: dict[str, dict[int, frozenset[int]]] = defaultdict(dict)
    layers: dict[str, int] = {}
    images: dict[int, str] = {}
    questions: dict[int, str | None] = {}
    for sample in samples:
        if sample.images is None or len(sample.images) != 1:
            continue
        (image,) = sample.images
        images[sample.doc_id], questions[sample.doc_id] = image.image, sample.question
        if image.layers:
            for layer, kept in image.layers.items():
                layers[f"{run}@L{layer}"] = layer
                patches[f"{run}@L{layer}"][sample.doc_id] = kept
        else:
            layers[run] = -1
            patches[run][sample.doc_id] = image.kept
    order = sorted(patches, key=lambda label: layers[label])
    return [
        View(label, run, patches[label], {d: images[d] for d in patches[label]}, {d: questions[d] for d in patches[label]})
        for label in order
    ]


def jaccard(a: frozenset[int], b: frozenset[int]) -> float | None:
    """|a ∩ b| / |a ∪ b|; None when both are empty (undefined)."""
    union = len(a | b)
    return len(a & b) / union if union else None


def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return math.fsum(present) / len(present) if present else None


def hash_mismatches(runs: Mapping[str, Mapping[int, Sample]]) -> dict[frozenset[str], list[int]]:
    """{run pair: doc_ids whose ``doc_hash`` differs between the two runs} (pairs without any left out)."""
    out: dict[frozenset[str], list[int]] = {}
    for a, b in combinations(runs, 2):
        docs = sorted(
            d
            for d in runs[a].keys() & runs[b].keys()
            if runs[a][d].doc_hash is not None
            and runs[b][d].doc_hash is not None
            and runs[a][d].doc_hash != runs[b][d].doc_hash
        )
        if docs:
            out[frozenset((a, b))] = docs
    return out


# ----------------------------------------------------------------------------- 1. overlap


@dataclass(frozen=True)
class OverlapSample:
    """The Jaccard of two views on one sample."""

    doc_id: int
    view_a: str
    view_b: str
    jaccard: float | None  # None: both views kept no patch


@dataclass(frozen=True)
class Overlap:
    """Mean Jaccard between every two views; matrices indexed like ``views`` (symmetric)."""

    views: list[str]
    mean: list[list[float | None]]  # None: no sample with a defined Jaccard
    n: list[list[int]]  # samples behind each mean
    undefined: list[list[int]]  # samples where both views kept nothing
    samples: list[OverlapSample]  # every view pair (a before b) on every shared sample


def overlap(views: list[View], skip: Mapping[frozenset[str], Iterable[int]] | None = None) -> Overlap:
    """Jaccard of the kept patches for every two views, per shared ``doc_id`` and averaged.
    ``skip``: {run pair: doc_ids not to compare} (documents that differ between the runs)."""
    skip = skip or {}
    k = len(views)
    means: list[list[float | None]] = [[None] * k for _ in range(k)]
    n = [[0] * k for _ in range(k)]
    undefined = [[0] * k for _ in range(k)]
    samples: list[OverlapSample] = []
    for i, view in enumerate(views):
        n[i][i] = sum(1 for p in view.patches.values() if p)
        undefined[i][i] = len(view.patches) - n[i][i]
        means[i][i] = 1.0 if n[i][i] else None
    for (i, a), (j, b) in combinations(enumerate(views), 2):
        excluded = set(skip.get(frozenset((a.run, b.run)), ())) if a.run != b.run else set()
        docs = sorted(a.patches.keys() & b.patches.keys() - excluded)
        values = [jaccard(a.patches[d], b.patches[d]) for d in docs]
        samples += [OverlapSample(d, a.label, b.label, v) for d, v in zip(docs, values)]
        means[i][j] = means[j][i] = mean(values)
        n[i][j] = n[j][i] = sum(1 for v in values if v is not None)
        undefined[i][j] = undefined[j][i] = len(values) - n[i][j]
    return Overlap([v.label for v in views], means, n, undefined, samples)


# ----------------------------------------------------------------------------- 2. text sensitivity


@dataclass(frozen=True)
class ImageSensitivity:
    """A view's text sensitivity on one image."""

    view: str
    image: str  # image fingerprint
    value: float | None  # mean Jaccard over the image's question pairs; None: no defined pair
    pairs: int  # pairs of samples with different questions (defined Jaccard)


@dataclass(frozen=True)
class TextSensitivity:
    """How much a view's selection on an image stays the same across questions (1.0 = ignores them)."""

    view: str
    value: float | None  # mean over the images with at least one pair; None: no such image
    images: int  # images with at least one pair
    pairs: int
    note: str = ""


def text_sensitivity(view: View) -> tuple[TextSensitivity, list[ImageSensitivity]]:
    """(the view's value, one row per image with a pair): per image, the mean Jaccard over every two
    of its samples whose questions differ (same or unknown question: not a pair)."""
    by_image: dict[str, list[int]] = defaultdict(list)
    for doc_id in sorted(view.patches):
        by_image[view.images[doc_id]].append(doc_id)
    per_image = []
    for image, docs in by_image.items():
        values = [
            jaccard(view.patches[a], view.patches[b])
            for a, b in combinations(docs, 2)
            if view.questions[a] is not None and view.questions[b] is not None and view.questions[a] != view.questions[b]
        ]
        defined = [v for v in values if v is not None]
        if defined:
            per_image.append(ImageSensitivity(view.label, image, mean(defined), len(defined)))
    value = mean(row.value for row in per_image)
    note = "" if per_image else "no image with two different questions in this view"
    return TextSensitivity(view.label, value, len(per_image), sum(r.pairs for r in per_image), note), per_image


# ----------------------------------------------------------------------------- 3. categories


@dataclass(frozen=True)
class CategoryScore:
    """A run's score on one sub-category (``all``: every sample)."""

    run: str
    category: str
    n: int  # samples with a score
    score: float | None  # POPE / MME: accuracy %; DocVQA: mean ANLS
    accuracy_plus: float | None = None  # MME: % of images (question_id pairs) with both answers right
    mme_score: float | None = None  # MME: accuracy + accuracy_plus (out of 200); "all": the sum over subtasks


def accuracy_plus(samples: Iterable[Sample]) -> float | None:
    """MME's acc+: % of images (samples sharing category and ``pair_id``) whose answers are all right."""
    groups: dict[tuple[str, str], list[float | None]] = defaultdict(list)
    for s in samples:
        groups[(s.category, s.pair_id if s.pair_id is not None else f"doc {s.doc_id}")].append(s.score)
    return 100.0 * sum(1 for g in groups.values() if all(v == 1.0 for v in g)) / len(groups) if groups else None


def category_scores(run: str, samples: Iterable[Sample], family: str) -> list[CategoryScore]:
    """One row per sub-category (sorted) and an ``all`` row, from the per-sample scores as logged."""
    scored = [s for s in samples if s.score is not None]
    by_category: dict[str, list[Sample]] = defaultdict(list)
    for s in scored:
        by_category[s.category].append(s)
    scale = SCORE_SCALE[family]
    categories = sorted(c for c in by_category if c != ALL) if family != "docvqa" else []
    rows = []
    for category in categories:
        group = by_category[category]
        score = mean(scale * s.score for s in group)
        if family == "mme":
            plus = accuracy_plus(group)
            rows.append(CategoryScore(run, category, len(group), score, plus, score + plus))
        else:
            rows.append(CategoryScore(run, category, len(group), score))
    overall = mean(scale * s.score for s in scored)
    if family == "mme":
        total = math.fsum(r.mme_score for r in rows) if rows else None
        rows.append(CategoryScore(run, ALL, len(scored), overall, accuracy_plus(scored), total))
    else:
        rows.append(CategoryScore(run, ALL, len(scored), overall))
    return rows


# ----------------------------------------------------------------------------- 4. agreement


@dataclass(frozen=True)
class Agreement:
    """Two runs' answers compared sample by sample, and each run's score on either side of the split."""

    run_a: str
    run_b: str
    n_agree: int
    n_disagree: int
    a_on_agree: float | None  # run_a's score (as in CategoryScore.score) on the samples they agree on
    b_on_agree: float | None
    a_on_disagree: float | None
    b_on_disagree: float | None


def normalise_answer(text: str) -> str:
    """An answer for comparison: stripped, case-folded, a trailing period removed."""
    text = text.strip().casefold()
    return text[:-1].rstrip() if text.endswith(".") else text


def agreement(
    run_a: str,
    samples_a: Mapping[int, Sample],
    run_b: str,
    samples_b: Mapping[int, Sample],
    family: str,
    skip: Iterable[int] = (),
) -> Agreement:
    """How often two runs answer the same on their shared ``doc_id`` (minus ``skip``)."""
    docs = sorted(samples_a.keys() & samples_b.keys() - set(skip))
    agrees = {d: normalise_answer(samples_a[d].answer) == normalise_answer(samples_b[d].answer) for d in docs}
    same = [d for d in docs if agrees[d]]
    different = [d for d in docs if not agrees[d]]
    scale = SCORE_SCALE[family]

    def score(samples: Mapping[int, Sample], subset: list[int]) -> float | None:
        return mean(None if samples[d].score is None else scale * samples[d].score for d in subset)

    return Agreement(
        run_a,
        run_b,
        n_agree=len(same),
        n_disagree=len(different),
        a_on_agree=score(samples_a, same),
        b_on_agree=score(samples_b, same),
        a_on_disagree=score(samples_a, different),
        b_on_disagree=score(samples_b, different),
    )


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


def run_labels(runs: list[Run]) -> list[str]:
    """``model:config`` per run, with checkpoint and dtype appended where two runs would share one."""
    plain = [r.label for r in runs]
    return [r.label if plain.count(r.label) == 1 else f"{r.label} [{r.checkpoint} {r.dtype}]" for r in runs]


def _summary(label: str, run: Run) -> RunSummary:
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
    if summary.samples and not summary.with_selection:
        notes.append(f"{summary.label}: {NO_SELECTIONS}")
    elif summary.samples > summary.with_selection:
        notes.append(f"{summary.label}: {summary.samples - summary.with_selection} samples without a selection")
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
    notes = list(problems)
    summaries = []
    for label, run in zip(labels, runs):
        summaries.append(_summary(label, run))
        notes += _run_notes(summaries[-1], run)
    samples = {label: run.samples for label, run in zip(labels, runs) if run.samples}
    if not samples:
        raise AnalysisError(f"no samples for {task}" + "".join(f"\n  {n}" for n in notes))
    family = task_family(task) or ""

    mismatches = hash_mismatches(samples)
    for pair, docs in mismatches.items():
        a, b = sorted(pair)
        shown = ", ".join(map(str, docs[:5])) + (", ..." if len(docs) > 5 else "")
        notes.append(f"{a} vs {b}: doc_hash differs on {len(docs)} docs ({shown}); left out of their comparisons")

    views = [view for label, by_doc in samples.items() for view in run_views(label, by_doc.values())]
    matrix = overlap(views, mismatches)
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
    ]
    return Analysis(task, family, summaries, matrix.views, matrix, sensitivity, per_image, categories, agreements, notes)


# ----------------------------------------------------------------------------- Markdown


def _fmt(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


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
        ["run", "checkpoint", "dtype", "samples", "with selection", "not single-image"],
        [(r.label, r.checkpoint, r.dtype, r.samples, r.with_selection, r.not_single_image) for r in a.runs],
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


# ----------------------------------------------------------------------------- figures


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


def write_report(analysis: Analysis, out_dir: str | Path) -> list[Path]:
    """Write ``analysis.md``, the CSVs and the figures (a figure only when it has data) into
    ``out_dir``; the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = write_csvs(analysis, out)
    figures = []
    if analysis.views:
        figures.append(overlap_plot(analysis.overlap, out / "overlap.png"))
        figures.append(text_sensitivity_plot(analysis.text_sensitivity, out / "text_sensitivity.png"))
    if analysis.categories:
        figures.append(category_plot(analysis.categories, analysis.family, out / "categories.png"))
    markdown = out / "analysis.md"
    markdown.write_text(to_markdown(analysis, [f.name for f in figures]), encoding="utf-8")
    return [markdown, *written, *figures]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsezip_lmms analyze", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="results folders or *_results.json files of --log_samples runs")
    parser.add_argument("--task", default=None, help="the task to analyse when the runs hold several")
    parser.add_argument("--out", default="analysis", help="folder for analysis.md, the CSVs and the PNG figures")
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
