"""What the runs of one task kept and answered, in numbers: the views of each run, the overlap of
their kept patches, their text sensitivity, the scores per sub-category and the answer agreement.

A *view* is one selection a run makes per sample: a vision-side method has one (labelled with the
run, ``model:config``), an in-LLM method one per pruning layer (``model:config@L<layer>``). Overlap
and text sensitivity are over the single-image samples (samples matched by ``doc_id``); scores and
agreement over every sample. Each computation returns plain dataclasses, which ``render`` turns into
Markdown and CSV and ``plots`` into figures.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import combinations

from ..numbers import mean
from .samples import Sample

NO_SELECTIONS = "no selections logged (run with --log_samples; the model argument log_selection must not be false)"
SCORE_SCALE = {"pope": 100.0, "mme": 100.0, "docvqa": 1.0}  # per-sample score -> reported unit
SCORE_LABEL = {"pope": "accuracy %", "mme": "accuracy %", "docvqa": "ANLS"}
ALL = "all"


# ----------------------------------------------------------------------------- views


@dataclass(frozen=True)
class View:
    """One selection per single-image sample of a run: its kept patches, image and question."""

    label: str  # run label, plus @L<layer> for an in-LLM method's pruning layer
    run: str  # run label
    patches: dict[int, frozenset[int]]  # doc_id -> patches kept
    images: dict[int, str]  # doc_id -> image fingerprint
    questions: dict[int, str | None]  # doc_id -> question text
    kind: str = "llava"  # ImageSelection.view: views of different kinds index different images' grids
    setting: str = ""  # the run's setting group (settings.SettingGroup.name): other groups' views are not compared


def run_views(run: str, samples: Iterable[Sample], setting: str = "") -> list[View]:
    """The views of one run's single-image samples with a selection: one keyed by ``kept``, or, for
    images that carry ``layers``, one per layer (``run@L<layer>``), in layer order. ``setting``: the
    run's setting group, given to every view."""
    patches: dict[str, dict[int, frozenset[int]]] = defaultdict(dict)
    layers: dict[str, int] = {}
    images: dict[int, str] = {}
    questions: dict[int, str | None] = {}
    kind = "llava"
    for sample in samples:
        if sample.images is None or len(sample.images) != 1:
            continue
        (image,) = sample.images
        images[sample.doc_id], questions[sample.doc_id], kind = image.image, sample.question, image.view
        if image.layers:
            for layer, kept in image.layers.items():
                layers[f"{run}@L{layer}"] = layer
                patches[f"{run}@L{layer}"][sample.doc_id] = kept
        else:
            layers[run] = -1
            patches[run][sample.doc_id] = image.kept
    order = sorted(patches, key=lambda label: layers[label])
    return [
        View(label, run, patches[label], {d: images[d] for d in patches[label]}, {d: questions[d] for d in patches[label]}, kind, setting)
        for label in order
    ]


def jaccard(a: frozenset[int], b: frozenset[int]) -> float | None:
    """|a ∩ b| / |a ∪ b|; None when both are empty (undefined)."""
    union = len(a | b)
    return len(a & b) / union if union else None


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
    runs: list[str] = field(default_factory=list)  # the run of each view (View.run), indexed like ``views``


def overlap(views: list[View], skip: Mapping[frozenset[str], Iterable[int]] | None = None) -> Overlap:
    """Jaccard of the kept patches for every two views, per shared ``doc_id`` and averaged.
    ``skip``: {run pair: doc_ids not to compare} (documents that differ between the runs). Views of
    different kinds (LLaVA-1.5 vs LLaVA-NeXT) or of runs of different settings are never compared:
    their cells stay empty."""
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
        if a.kind != b.kind:  # LLaVA-1.5 patches and NeXT base-view patches are positions in different images
            continue
        if a.setting != b.setting:  # other documents or other conditions: the overlap would measure the setting
            continue
        excluded = set(skip.get(frozenset((a.run, b.run)), ())) if a.run != b.run else set()
        docs = sorted(a.patches.keys() & b.patches.keys() - excluded)
        values = [jaccard(a.patches[d], b.patches[d]) for d in docs]
        samples += [OverlapSample(d, a.label, b.label, v) for d, v in zip(docs, values)]
        means[i][j] = means[j][i] = mean(values)
        n[i][j] = n[j][i] = sum(1 for v in values if v is not None)
        undefined[i][j] = undefined[j][i] = len(values) - n[i][j]
    return Overlap([v.label for v in views], means, n, undefined, samples, [v.run for v in views])


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
