"""The statistics of the paper table: intervals for one run's score, paired tests against the baseline.

* :func:`clopper_pearson`: the exact binomial 95% interval of an accuracy (k right out of n).
* :func:`bootstrap_interval`: the percentile bootstrap interval of any score computed from per-document
  values (resampling units: documents, or groups of documents that a metric scores together, such as
  MME's two questions per image).
* :func:`mcnemar_exact`: McNemar's exact test on per-document correctness of two runs on the same documents
  (two-sided binomial test on the discordant pairs).
* :func:`paired_bootstrap_p`: the paired bootstrap test of a difference of two scores computed on the same
  resampled units (for aggregate metrics such as F1 or MME's pair score).
* :func:`holm`: Holm's step-down adjustment of a family of p-values.

Every random draw comes from ``numpy.random.default_rng(seed)``: the same seed gives the same interval.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from scipy import stats

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval of a binomial proportion k/n, as fractions in [0, 1]."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    alpha = 1.0 - level
    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def _resample_indices(n_units: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n_units] unit indices drawn with replacement (one generator, replayable from the seed)."""
    return np.random.default_rng(seed).integers(0, n_units, size=(resamples, n_units))


# a statistic of resampled units given as how often each unit was drawn: W [R, U] counts -> [R] scores
Weighted = Callable[[np.ndarray], np.ndarray]
_CHUNK = 256  # resamples per counts matrix (bounds its memory: 256 x units)


def _weighted_values(draws: np.ndarray, statistics: Sequence[Weighted]) -> list[np.ndarray]:
    """Each statistic on every resample of ``draws`` [R, U], through the draw counts, chunk by chunk."""
    resamples, units = draws.shape
    out: list[list[np.ndarray]] = [[] for _ in statistics]
    for start in range(0, resamples, _CHUNK):
        chunk = draws[start : start + _CHUNK]  # [r, U]
        rows = np.repeat(np.arange(chunk.shape[0]), units)
        counts = np.bincount(rows * units + chunk.ravel(), minlength=chunk.shape[0] * units).reshape(-1, units)
        for values, statistic in zip(out, statistics):
            values.append(np.asarray(statistic(counts.astype(np.float64)), dtype=np.float64))
    return [np.concatenate(v) for v in out]


def bootstrap_interval(
    units: Sequence,
    statistic: Callable[[list], float],
    *,
    level: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    weighted: Weighted | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``units`` (each unit: whatever the statistic
    reads for one document or one group of documents; the statistic gets a list of units). ``weighted``:
    the same statistic computed from draw counts (vectorised; the same draws, so the same interval)."""
    if len(units) == 0:
        raise ValueError("no units to resample")
    draws = _resample_indices(len(units), resamples, seed)
    if weighted is not None:
        (values,) = _weighted_values(draws, [weighted])
    else:
        values = np.array([statistic([units[i] for i in row]) for row in draws], dtype=np.float64)
    alpha = 1.0 - level
    return float(np.quantile(values, alpha / 2)), float(np.quantile(values, 1 - alpha / 2))


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> tuple[float, int, int]:
    """McNemar's exact test: (two-sided p, b, c) with b = documents only A gets right, c = only B.

    p = P(X <= min(b, c)) * 2 under X ~ Binomial(b + c, 1/2), capped at 1 (1 when there is no
    discordant pair)."""
    if len(a_correct) != len(b_correct):
        raise ValueError(f"paired outcomes need the same documents: {len(a_correct)} vs {len(b_correct)}")
    a = np.asarray(a_correct, dtype=bool)
    b_arr = np.asarray(b_correct, dtype=bool)
    b = int((a & ~b_arr).sum())
    c = int((~a & b_arr).sum())
    return mcnemar_from_counts(b, c), b, c


def mcnemar_from_counts(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b and c."""
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2.0 * float(stats.binom.cdf(min(b, c), n, 0.5)))


def paired_bootstrap_p(
    units_a: Sequence,
    units_b: Sequence,
    statistic: Callable[[list], float],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    weighted: tuple[Weighted, Weighted] | None = None,
) -> float:
    """Two-sided paired bootstrap p-value of statistic(A) − statistic(B) ≠ 0 (``weighted``: the statistic of
    A and of B from draw counts, as in :func:`bootstrap_interval`).

    Both runs are resampled with the same unit indices; the p-value is twice the smaller share of
    resampled differences on either side of 0 (ties count half), with the +1 correction so it is never 0:
    p = min(1, 2 · (min(#{d < 0}, #{d > 0}) + #{d = 0}/2 + 1) / (resamples + 1))."""
    if len(units_a) != len(units_b):
        raise ValueError(f"paired units need the same documents: {len(units_a)} vs {len(units_b)}")
    if len(units_a) == 0:
        raise ValueError("no units to resample")
    draws = _resample_indices(len(units_a), resamples, seed)
    if weighted is not None:
        values_a, values_b = _weighted_values(draws, weighted)
        diffs = values_a - values_b
    else:
        diffs = np.array(
            [statistic([units_a[i] for i in row]) - statistic([units_b[i] for i in row]) for row in draws], dtype=np.float64
        )
    below, above, ties = int((diffs < 0).sum()), int((diffs > 0).sum()), int((diffs == 0).sum())
    return min(1.0, 2.0 * (min(below, above) + ties / 2 + 1) / (resamples + 1))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): family-wise error rate control."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
