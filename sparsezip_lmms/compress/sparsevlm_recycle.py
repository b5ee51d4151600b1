"""Pure tensor pieces of SparseVLM v1.5: rater selection, top-k, and token recycling.

Everything here works on one sample at a time (no batch axis) and has no knowledge of the LLM;
the pruning decoder (``sparsezip_lmms.pruning``) calls these functions stage by stage.

Conventions follow the official v1.5 code (see ``docs/ALGORITHMS.md (SparseVLM section)``):

* raters: ``m = softmax(Hv @ Ht^T, over text).mean(over visual)``; a text token rates when
  ``m > mean(m)`` (strict), computed on the raw input embeddings (no norm, no 1/sqrt(d));
* kept tokens: the ``k = min(schedule, n - 1)`` best scored, returned in sequence order;
* recycling: the ``int(ratio * n_deleted) + 1`` best scored deleted tokens (descending score) are
  grouped by density-peak clustering into ``int(n_in / divisor) + 1`` tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "DENSITY_NOISE_SCALE",
    "MERGE_EPS",
    "DensityPeakResult",
    "density_peak_merge",
    "keep_count",
    "pairwise_distance",
    "recycle_sizes",
    "select_raters",
    "topk_keep",
]

DENSITY_NOISE_SCALE = 1e-6  # scale of the uniform draw added to the densities (tie-break)
MERGE_EPS = 1e-6  # merged token = sum / (count + MERGE_EPS)


def select_raters(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Indices (relative to the first text token) of the text tokens that rate the visual tokens.

    visual: [n_v, d] raw embeddings of the image span; text: [n_t, d] every token after the image.
    Returns a LongTensor [n_raters] (ascending). May be empty when all relevances are equal
    (e.g. a single text token); the caller decides what to do then.
    """
    if text.shape[0] == 0:
        raise ValueError("SparseVLM needs at least one text token after the image to select raters")
    logits = visual @ text.transpose(0, 1)  # [n_v, n_t]
    relevance = logits.softmax(dim=-1).mean(dim=0)  # [n_t]
    return torch.nonzero(relevance > relevance.mean(), as_tuple=False).flatten()


def keep_count(schedule_k: int, n_visual: int) -> int:
    """k = min(schedule, n_visual - 1): at least one visual token is always deleted (never < 0)."""
    return max(0, min(int(schedule_k), int(n_visual) - 1))


def topk_keep(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split span positions into (kept, deleted), both ascending. scores: [n]; kept: [k]; deleted: [n - k]."""
    n = scores.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}], got {k}")
    kept = torch.sort(torch.topk(scores, k).indices).values  # [k]
    keep = torch.zeros(n, dtype=torch.int8, device=scores.device)  # [n]
    keep[kept] = 1
    deleted = torch.argsort(keep, stable=True)[: n - k]  # [n - k] the zeros, ascending (no host sync)
    return kept, deleted


def recycle_sizes(n_deleted: int, ratio: float = 0.3, divisor: int = 10) -> tuple[int, int]:
    """(tokens fed to the clustering, clusters) for ``n_deleted`` deleted tokens.

    Official: ``n_in = int(n_deleted * ratio) + 1`` and ``cluster_num = int(n_in / divisor) + 1``. Both
    are clamped so that they never exceed the available tokens (which never happens with the official
    ratio 0.3 and divisor 10).
    """
    if n_deleted <= 0:
        return 0, 0
    n_in = min(int(n_deleted * ratio) + 1, n_deleted)
    clusters = min(n_in // divisor + 1, n_in)
    return n_in, clusters


def pairwise_distance(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between rows of x [N, C] divided by sqrt(C): [N, N].

    Exactly symmetric with a zero diagonal, so that mutually nearest tokens get exactly equal densities
    (ties are then broken only by the random draw, as in the official code).
    """
    c = x.shape[1]
    dist = torch.cdist(x[None], x[None], compute_mode="donot_use_mm_for_euclid_dist")[0]  # [N, N]
    dist = torch.minimum(dist, dist.transpose(0, 1))
    dist.fill_diagonal_(0.0)
    return dist / (c**0.5)


class DensityPeakResult(NamedTuple):
    merged: torch.Tensor  # [cluster_num, C] the recycled tokens, in center order
    centers: torch.Tensor  # [cluster_num] center rows, in descending center-score order
    center_scores: torch.Tensor  # [cluster_num] delta * density of the centers
    assign: torch.Tensor  # [N] cluster (0..cluster_num-1) of every input token
    knn_idx: torch.Tensor  # [N, cluster_num] nearest neighbours (the token itself included)
    density: torch.Tensor  # [N] local density, noise included


def density_peak_merge(x: torch.Tensor, cluster_num: int, noise: torch.Tensor) -> DensityPeakResult:
    """Density-peak clustering of x [N, C] into ``cluster_num`` averaged tokens.

    noise: [N] uniform(0, 1) draws; ``DENSITY_NOISE_SCALE * noise`` is added to the densities.
    Rules: kNN with k = cluster_num (self included); density = exp(-mean squared kNN distance);
    delta = distance to the nearest denser token (the global maximum distance for the densest);
    centers = top cluster_num of delta * density; every token joins its nearest center (centers
    join themselves); merged = sum / (count + 1e-6).
    """
    n, c = x.shape
    if not 1 <= cluster_num <= n:
        raise ValueError(f"cluster_num must be in [1, {n}], got {cluster_num}")
    if noise.shape != (n,):
        raise ValueError(f"noise must have shape ({n},), got {tuple(noise.shape)}")
    dist = pairwise_distance(x)  # [N, N]

    knn_dist, knn_idx = torch.topk(dist, k=cluster_num, dim=-1, largest=False)  # [N, k]
    density = torch.exp(-(knn_dist**2).mean(dim=-1))  # [N]
    density = density + noise.to(density) * DENSITY_NOISE_SCALE

    denser = density[None, :] > density[:, None]  # [N, N]: column j denser than row i
    delta = torch.where(denser, dist, dist.max()).min(dim=-1).values  # [N]
    center_scores, centers = torch.topk(delta * density, k=cluster_num)  # [k], descending

    assign = dist[centers].argmin(dim=0)  # [N] nearest center (first one on ties)
    assign[centers] = torch.arange(cluster_num, device=x.device)

    counts = torch.zeros(cluster_num, dtype=x.dtype, device=x.device)
    counts.index_add_(0, assign, torch.ones(n, dtype=x.dtype, device=x.device))  # [k]
    weight = 1.0 / (counts + MERGE_EPS)  # [k]
    merged = torch.zeros(cluster_num, c, dtype=x.dtype, device=x.device)
    merged.index_add_(0, assign, x * weight[assign][:, None])  # [k, C]
    return DensityPeakResult(merged, centers, center_scores, assign, knn_idx, density)
