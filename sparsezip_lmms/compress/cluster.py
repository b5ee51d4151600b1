"""Batched clustering of the non-dominant tokens: k-means++ seeding, Lloyd, average-linkage reduction.

Every function works on a batch of point sets of different sizes: ``points`` [B, M, D] with a mask
[B, M] of the points that take part, and returns masks for centres/clusters that exist. Python loops
run only over algorithm steps (seeds, Lloyd iterations, merges), never over images or clusters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["agglomerate_average", "assign", "cluster_merge", "kmeans_pp_init", "lloyd", "weighted_cluster_tokens"]


def _sq_dist(points: Tensor, centres: Tensor) -> Tensor:
    """Squared Euclidean distances [B, M, K] between points [B, M, D] and centres [B, K, D]."""
    d = (points * points).sum(-1, keepdim=True) - 2 * points @ centres.transpose(1, 2)  # [B, M, K]
    return (d + (centres * centres).sum(-1).unsqueeze(1)).clamp_min(0)


def kmeans_pp_init(points: Tensor, mask: Tensor, k: int, uniforms: Tensor) -> tuple[Tensor, Tensor]:
    """k-means++ seeding (D² sampling) of ``k`` centres per image.

    points [B, M, D]; mask [B, M] bool; uniforms [B, k] in [0, 1) drive the draws (inverse CDF), so a
    seeded CPU generator gives the same centres on every device. Returns (centres [B, k, D],
    centre_valid [B, k]); a centre is invalid when no point with positive D² weight is left (fewer
    distinct points than k).
    """
    b, m, d = points.shape
    weight = mask.to(points.dtype)  # [B, M] first draw: uniform over the points
    dist = torch.full((b, m), float("inf"), dtype=points.dtype, device=points.device)  # [B, M] min D²
    centres, valid = [], []
    for j in range(k):  # sequential by definition of k-means++; batched over images
        cdf = weight.cumsum(1)  # [B, M]
        total = cdf[:, -1:]  # [B, 1]
        pick = torch.searchsorted(cdf, uniforms[:, j : j + 1].to(cdf.dtype) * total, right=True)  # [B, 1]
        pick = pick.clamp(max=m - 1)
        centre = points.gather(1, pick.unsqueeze(-1).expand(b, 1, d))  # [B, 1, D]
        ok = total.squeeze(1) > 0  # [B]
        centres.append(centre.squeeze(1) * ok.unsqueeze(-1))
        valid.append(ok)
        dist = torch.minimum(dist, (points - centre).square().sum(-1))  # [B, M]
        weight = torch.where(mask & ok.unsqueeze(1), dist, torch.zeros_like(dist))  # [B, M]
    return torch.stack(centres, 1), torch.stack(valid, 1)  # [B, k, D], [B, k]


def assign(points: Tensor, centres: Tensor, centre_valid: Tensor) -> Tensor:
    """Nearest valid centre (squared Euclidean; ties → lowest index) of every point, [B, M] long."""
    d = _sq_dist(points, centres).masked_fill(~centre_valid.unsqueeze(1), float("inf"))  # [B, M, K]
    return d.argmin(dim=2)


def lloyd(points: Tensor, mask: Tensor, centres: Tensor, centre_valid: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    """``iters`` Lloyd steps (assign, then move each centre to the mean of its points), then a final
    assignment. An emptied centre keeps its position (no NaN). Returns (centres [B, K, D], labels [B, M])."""
    k = centres.shape[1]
    ids = torch.arange(k, device=points.device)  # [K]
    for _ in range(iters):
        labels = assign(points, centres, centre_valid)  # [B, M]
        one_hot = ((labels.unsqueeze(-1) == ids) & mask.unsqueeze(-1)).to(points.dtype)  # [B, M, K]
        counts = one_hot.sum(1).unsqueeze(-1)  # [B, K, 1]
        means = one_hot.transpose(1, 2) @ points / counts.clamp_min(1)  # [B, K, D]
        centres = torch.where(counts > 0, means, centres)
    return centres, assign(points, centres, centre_valid)


def agglomerate_average(centres: Tensor, centre_valid: Tensor, n_clusters: int) -> Tensor:
    """Average-linkage agglomeration of the centres on cosine distance, stopped at ``n_clusters``.

    Same partition as ``sklearn.cluster.AgglomerativeClustering(n_clusters, metric="cosine",
    linkage="average")`` on each image's valid centres. centres [B, K, D]; centre_valid [B, K].
    Returns group [B, K] long: the final cluster (0..n_clusters−1, numbered by lowest member) of each
    valid centre (entries of invalid centres are meaningless: no point is assigned to them).
    """
    b, k, _ = centres.shape
    ids = torch.arange(k, device=centres.device)  # [K]
    unit = centres / centres.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [B, K, D]
    inf = float("inf")
    pair_ok = centre_valid.unsqueeze(1) & centre_valid.unsqueeze(2) & (ids != ids.unsqueeze(1))  # [B, K, K]
    dist = (1 - unit @ unit.transpose(1, 2)).masked_fill(~pair_ok, inf)  # [B, K, K]
    size = centre_valid.to(centres.dtype)  # [B, K] centres per cluster
    active = centre_valid.clone()  # [B, K] cluster rows still alive (a cluster is named by its lowest member)
    owner = ids.expand(b, k).clone()  # [B, K] cluster of each centre
    for _ in range(max(0, k - n_clusters)):  # one merge per step, batched over images
        go = active.sum(1) > n_clusters  # [B]
        flat = dist.flatten(1).argmin(1)  # [B]; row-major first minimum → i < j
        i, j = flat // k, flat % k  # [B], [B]
        row_i = (ids == i.unsqueeze(1)) & go.unsqueeze(1)  # [B, K]
        row_j = (ids == j.unsqueeze(1)) & go.unsqueeze(1)  # [B, K]
        n_i, n_j = size.gather(1, i[:, None]), size.gather(1, j[:, None])  # [B, 1]
        d_i = dist.gather(1, i[:, None, None].expand(b, 1, k)).squeeze(1)  # [B, K]
        d_j = dist.gather(1, j[:, None, None].expand(b, 1, k)).squeeze(1)  # [B, K]
        merged = (n_i * d_i + n_j * d_j) / (n_i + n_j)  # [B, K] Lance–Williams, average linkage
        merged = merged.masked_fill(row_i | row_j | ~active, inf)
        dist = torch.where(row_i.unsqueeze(2), merged.unsqueeze(1), dist)  # row i
        dist = torch.where(row_i.unsqueeze(1), merged.unsqueeze(2), dist)  # column i
        dist = dist.masked_fill(row_j.unsqueeze(2) | row_j.unsqueeze(1), inf)  # drop cluster j
        size = torch.where(row_i, size + n_j, size).masked_fill(row_j, 0)
        active = active & ~row_j
        owner = torch.where((owner == j.unsqueeze(1)) & go.unsqueeze(1), i.unsqueeze(1), owner)
    rank = active.long().cumsum(1) - 1  # [B, K] compact id of each surviving cluster
    return rank.gather(1, owner)


def weighted_cluster_tokens(
    hidden: Tensor, labels: Tensor, member: Tensor, weights: Tensor, n_clusters: int
) -> tuple[Tensor, Tensor]:
    """Weighted mean of the hidden states of each cluster, clusters ordered by their first member.

    hidden [B, M, C]; labels [B, M] in 0..n_clusters−1; member [B, M] bool; weights [B, M] > 0.
    Returns (tokens [B, n_clusters, C], valid [B, n_clusters]); empty clusters are invalid zeros.
    """
    m = hidden.shape[1]
    ids = torch.arange(n_clusters, device=hidden.device)  # [S]
    one_hot = (labels.unsqueeze(-1) == ids) & member.unsqueeze(-1)  # [B, M, S]
    w = one_hot.to(hidden.dtype) * weights.to(hidden.dtype).unsqueeze(-1)  # [B, M, S]
    total = w.sum(1)  # [B, S]
    total = total.clamp_min(torch.finfo(hidden.dtype).tiny)  # empty clusters: 0 / tiny = 0, no NaN
    tokens = w.transpose(1, 2) @ hidden / total.unsqueeze(-1)  # [B, S, C]
    valid = one_hot.any(1)  # [B, S]
    positions = torch.arange(m, device=hidden.device).view(1, m, 1)
    first = torch.where(one_hot, positions, m).amin(1)  # [B, S] lowest member position (m if empty)
    order = first.argsort(dim=1, stable=True)  # [B, S]
    valid = valid.gather(1, order)
    tokens = tokens.gather(1, order.unsqueeze(-1).expand_as(tokens)).masked_fill(~valid.unsqueeze(-1), 0)
    return tokens, valid


def cluster_merge(
    hidden: Tensor,
    keys: Tensor,
    member: Tensor,
    weights: Tensor,
    contextual: int,
    *,
    init_factor: float,
    iters: int,
    agglomerative: bool,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """Contextual tokens of the tokens in ``member`` by k-means (optionally + agglomeration).

    hidden [B, M, C]; keys [B, M, Ck]; member [B, M] bool; weights [B, M] > 0 (token importance).
    k-means++ draws ``contextual`` seeds (``ceil(init_factor · contextual)`` with ``agglomerative``,
    then reduced to ``contextual``), runs ``iters`` Lloyd steps on the L2-normalised keys, and returns
    the weighted mean hidden state of each cluster: (tokens [B, contextual, C], valid [B, contextual]).
    """
    b = hidden.shape[0]
    points = keys / keys.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [B, M, Ck]
    n_seeds = max(contextual, math.ceil(init_factor * contextual)) if agglomerative else contextual
    gen = torch.Generator().manual_seed(seed)
    # the same uniforms for every image: an image's clusters do not depend on its batch position
    uniforms = torch.rand(n_seeds, generator=gen, dtype=torch.float64).to(points.device).expand(b, n_seeds)
    centres, centre_valid = kmeans_pp_init(points, member, n_seeds, uniforms)  # [B, K, Ck], [B, K]
    centres, labels = lloyd(points, member, centres, centre_valid, iters)  # [B, K, Ck], [B, M]
    if n_seeds > contextual:
        group = agglomerate_average(centres, centre_valid, contextual)  # [B, K]
        labels = group.gather(1, labels)  # [B, M]
    return weighted_cluster_tokens(hidden, labels, member, weights, contextual)
