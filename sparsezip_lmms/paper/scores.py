"""One column of one run: its score recomputed from the per-document values, its interval, and the paired
test against the baseline run on the same documents (:mod:`.stats`, :mod:`.benchmarks`)."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from .benchmarks import AGGREGATE, BINARY, MEAN, Column
from .stats import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    bootstrap_interval,
    clopper_pearson,
    is_number,
    mcnemar_exact,
    paired_bootstrap_p,
)

TOLERANCE = 1e-6  # relative: a recomputed score must equal the results file's number


class ScoreError(ValueError):
    """A score that cannot be computed honestly (named run, task and metric in the message)."""


@dataclass(frozen=True)
class ColumnScore:
    value: float | None  # shown scale
    low: float | None = None  # 95% interval, shown scale
    high: float | None = None
    n: int = 0  # documents scored
    method: str = ""  # how the interval was computed ("exact binomial", "bootstrap (2000, seed 0)", "")
    note: str | None = None  # why an interval is missing


@contextmanager
def _upstream_quiet():
    """lmms-eval's aggregations log each category's score: silent while the table recomputes them."""
    from loguru import logger

    logger.disable("lmms_eval")
    try:
        yield
    finally:
        logger.enable("lmms_eval")


def _samples_with(column: Column, samples: list[dict]) -> list[dict]:
    return [s for s in samples if column.metric in s]


def _units(column: Column, samples: list[dict]) -> list[list[Any]]:
    """Resampling units: the per-document values grouped by ``unit_of`` (default: one per document)."""
    values = [s[column.metric] for s in samples]
    if column.unit_of is None:
        return [[v] for v in values]
    groups: dict[Any, list[Any]] = {}
    for v in values:
        groups.setdefault(column.unit_of(v), []).append(v)
    return list(groups.values())


def _statistic(column: Column):
    """units -> score in the results file's unit."""
    if column.kind == BINARY:
        denominator = column.denominator

        def binary(units: list[list[Any]]) -> float:
            flags = [column.correct(v) for unit in units for v in unit]
            return sum(flags) / (denominator or len(flags))

        return binary
    if column.kind == MEAN:
        read = column.value or float

        def mean(units: list[list[Any]]) -> float:
            values = [read(v) for unit in units for v in unit]
            return sum(values) / len(values)

        return mean
    relabel = column.relabel

    def aggregate(units: list[list[Any]]) -> float:
        if relabel is None:
            return float(column.aggregate([v for unit in units for v in unit]))
        return float(column.aggregate([relabel(v, i) for i, unit in enumerate(units) for v in unit]))

    return aggregate


def _weighted(column: Column, units: list[list[Any]]):
    """The column's statistic from draw counts W [R, U] (``stats.Weighted``), or None (then the loop)."""
    sizes = np.array([len(u) for u in units], dtype=np.float64)  # [U]
    if column.kind == BINARY:
        right = np.array([sum(bool(column.correct(v)) for v in u) for u in units], dtype=np.float64)  # [U]
        denominator = column.denominator
        return lambda w: (w @ right) / (denominator if denominator else w @ sizes)
    if column.kind == MEAN:
        read = column.value or float
        totals = np.array([sum(read(v) for v in u) for u in units], dtype=np.float64)  # [U]
        return lambda w: (w @ totals) / (w @ sizes)
    return None if column.weighted is None else column.weighted(units)


def score_column(
    column: Column, samples: list[dict], reported: Any, where: str, *, strict: bool = True,
    resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
) -> ColumnScore:  # fmt: skip
    """The column's score (shown scale) with its 95% interval, recomputed from ``samples`` and checked
    against ``reported`` (the results file's number). ``where`` names the run and task in errors.
    ``strict``: a recomputation that differs is an error (standard benchmarks); else the reported
    number is shown without an interval, with the reason."""
    if not is_number(reported):
        raise ScoreError(f"{where}: no number for {column.metric} in the results file")
    shown = float(reported) * column.scale
    present = _samples_with(column, samples)
    if column.kind == AGGREGATE and column.aggregate is None:
        return ColumnScore(shown, n=len(present), note=column.convention.split("; ")[-1])
    if not present:
        raise ScoreError(f"{where}: the samples log has no per-document {column.metric} (run lmms-eval with --log_samples)")
    units = _units(column, present)
    statistic = _statistic(column)
    try:
        with _upstream_quiet():
            recomputed = statistic(units)
    except (TypeError, ValueError, KeyError) as err:
        if strict:
            raise ScoreError(f"{where}: {column.metric} cannot be recomputed from the samples ({err})") from err
        return ColumnScore(shown, n=len(present), note=f"per-document {column.metric} values are not numbers")
    if not math.isclose(recomputed, float(reported), rel_tol=TOLERANCE, abs_tol=1e-9):
        if strict:
            raise ScoreError(
                f"{where}: {column.metric} recomputed from the samples is {recomputed!r}, the results file says "
                f"{reported!r}: the samples do not belong to these results"
            )
        return ColumnScore(shown, n=len(present), note=f"{column.metric} is not a mean of its per-document values")
    if column.kind == BINARY:
        k = sum(column.correct(v) for unit in units for v in unit)
        n = len(present)
        low, high = clopper_pearson(int(k), n)
        factor = column.scale * n / (column.denominator or n)
        return ColumnScore(shown, low * factor, high * factor, n, "exact binomial (Clopper-Pearson)")
    low, high = bootstrap_interval(units, statistic, resamples=resamples, seed=seed, weighted=_weighted(column, units))
    unit = "images" if column.unit_of is not None else "documents"
    return ColumnScore(shown, low * column.scale, high * column.scale, n=len(present),
                       method=f"percentile bootstrap over {unit} ({resamples} resamples, seed {seed})")  # fmt: skip


def _by_document(column: Column, samples: list[dict]) -> dict[int, dict]:
    return {int(s["doc_id"]): s for s in samples if column.metric in s}


def paired_test(
    column: Column, samples: list[dict], baseline: list[dict], where: str,
    *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
) -> tuple[float | None, str]:  # fmt: skip
    """(two-sided p of the difference to the baseline, test name) on the documents both scored; a
    ScoreError when the two runs did not score the same documents."""
    mine, theirs = _by_document(column, samples), _by_document(column, baseline)
    if set(mine) != set(theirs):
        raise ScoreError(
            f"{where}: {column.metric} scored on other documents than the baseline's "
            f"({len(set(mine) - set(theirs))} only here, {len(set(theirs) - set(mine))} only in the baseline)"
        )
    changed = [d for d in mine if mine[d].get("doc_hash") and theirs[d].get("doc_hash") and mine[d]["doc_hash"] != theirs[d]["doc_hash"]]
    if changed:
        raise ScoreError(f"{where}: documents {changed[:5]} differ from the baseline's (doc_hash)")
    if column.kind == AGGREGATE and column.aggregate is None:
        return None, ""
    docs = sorted(mine)
    if column.kind == BINARY:
        p, _, _ = mcnemar_exact(
            [column.correct(mine[d][column.metric]) for d in docs], [column.correct(theirs[d][column.metric]) for d in docs]
        )
        return p, "McNemar exact"
    if column.unit_of is None:
        units_a = [[mine[d][column.metric]] for d in docs]
        units_b = [[theirs[d][column.metric]] for d in docs]
    else:  # pair whole units (MME: an image's two questions) by the unit key
        ua = {k: u for u in _units(column, [mine[d] for d in docs]) for k in [column.unit_of(u[0])]}
        ub = {k: u for u in _units(column, [theirs[d] for d in docs]) for k in [column.unit_of(u[0])]}
        keys = sorted(ua, key=str)
        units_a, units_b = [ua[k] for k in keys], [ub[k] for k in keys]
    weighted_a, weighted_b = _weighted(column, units_a), _weighted(column, units_b)
    both = None if weighted_a is None or weighted_b is None else (weighted_a, weighted_b)
    p = paired_bootstrap_p(units_a, units_b, _statistic(column), resamples=resamples, seed=seed, weighted=both)
    return p, "paired bootstrap"


def agreement(samples: list[dict], baseline: list[dict]) -> float | None:
    """Share (%) of documents whose answer equals the baseline's answer (after the task's filters)."""
    mine = {int(s["doc_id"]): _answer(s) for s in samples}
    theirs = {int(s["doc_id"]): _answer(s) for s in baseline}
    shared = sorted(set(mine) & set(theirs))
    if not shared:
        return None
    return 100.0 * sum(mine[d] == theirs[d] for d in shared) / len(shared)


def _answer(sample: dict) -> str:
    answer = sample.get("filtered_resps", sample.get("resps"))
    while isinstance(answer, list) and answer:
        answer = answer[0]
    return str(answer if answer is not None else "").strip()
