"""Batched clustering of the non-dominant tokens: k-means++ seeding, Lloyd, average-linkage reduction.

Every function works on a batch of point sets of different sizes: ``points`` [B, M, D] with a mask
[B, M] of the points that take part, and returns masks for centres/clusters that exist. Python loops
run only over algorithm steps (seeds, Lloyd iterations, merges), never over images or clusters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .dtypes import at_least_float32

__all__ = [
    "agglomerate_average",
    "agglomerate_midpoint",
    "assign",
    "cluster_merge",
    "cluster_token_labels",
    "kmeans_pp_init",
    "lloyd",
    "weighted_cluster_tokens",
]


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


def lloyd(
    points: Tensor,
    mask: Tensor,
    centres: Tensor,
    centre_valid: Tensor,
    iters: int,
    reseed: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``iters`` Lloyd steps (assign, then move each centre to the mean of its points), then a final
    assignment. Returns (centres [B, K, D], labels [B, M]).

    An emptied centre keeps its position (no NaN), or, with ``reseed`` [B, R] long (point positions in
    draw order, −1 = none left), moves onto the next drawn point: draws are consumed per image in the order
    (step, centre), as a sequential implementation re-seeding each empty centre in turn would.
    """
    b, k = centres.shape[:2]
    ids = torch.arange(k, device=points.device)  # [K]
    used = torch.zeros(b, 1, dtype=torch.long, device=points.device)  # [B, 1] reseed draws consumed
    for _ in range(iters):
        labels = assign(points, centres, centre_valid)  # [B, M]
        one_hot = ((labels.unsqueeze(-1) == ids) & mask.unsqueeze(-1)).to(points.dtype)  # [B, M, K]
        counts = one_hot.sum(1).unsqueeze(-1)  # [B, K, 1]
        means = one_hot.transpose(1, 2) @ points / counts.clamp_min(1)  # [B, K, D]
        if reseed is not None and reseed.shape[1] > 0:
            empty = (counts.squeeze(-1) == 0) & centre_valid  # [B, K]
            slot = (used + empty.long().cumsum(1) - 1).clamp(0, reseed.shape[1] - 1)  # [B, K] draw of each centre
            pos = reseed.gather(1, slot)  # [B, K] point position, -1 when no draw is left
            drawn = points.gather(1, pos.clamp_min(0).unsqueeze(-1).expand(-1, -1, points.shape[-1]))  # [B, K, D]
            empty = empty & (pos >= 0)
            means = torch.where(empty.unsqueeze(-1), drawn, means)
            counts = counts + empty.unsqueeze(-1).to(counts.dtype)  # a re-seeded centre moves
            used = used + empty.sum(1, keepdim=True)
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


def agglomerate_midpoint(centres: Tensor, centre_valid: Tensor, n_clusters: int) -> tuple[Tensor, Tensor]:
    """The seed's reduction of the centres to ``n_clusters``: repeatedly take the valid pair (i < j) with
    the largest cosine (first maximum in row-major order of the current list), drop both and append
    their midpoint (unweighted, not renormalised) at the end of the list.

    centres [B, K, D]; centre_valid [B, K]. Returns (centres [B, K + S, D], valid [B, K + S]), S = the
    merge steps: a buffer in list order (survivors in their order, then merged centres in merge order),
    of which the valid rows are the surviving centres.
    """
    b, k, d = centres.shape
    steps = max(0, k - n_clusters)
    buf = torch.cat([centres, centres.new_zeros(b, steps, d)], 1)  # [B, K+S, D]
    alive = torch.cat([centre_valid, centre_valid.new_zeros(b, steps)], 1)  # [B, K+S]
    width = k + steps
    ids = torch.arange(width, device=centres.device)  # [K+S]
    for step in range(steps):  # one merge per step, batched over images
        go = alive.sum(1) > n_clusters  # [B]
        unit = buf / (buf.norm(dim=-1, keepdim=True) + 1e-12)  # [B, W, D]
        sim = unit @ unit.transpose(1, 2)  # [B, W, W]
        sim = sim.masked_fill(torch.eye(width, dtype=torch.bool, device=buf.device), -1.0)
        pair_ok = alive.unsqueeze(1) & alive.unsqueeze(2)  # [B, W, W]
        flat = sim.masked_fill(~pair_ok, float("-inf")).flatten(1).argmax(1)  # [B]; symmetric → i < j
        i, j = flat // width, flat % width  # [B], [B]
        mid = (buf.gather(1, i.view(b, 1, 1).expand(b, 1, d)) + buf.gather(1, j.view(b, 1, 1).expand(b, 1, d))) / 2
        slot = k + step
        buf[:, slot] = torch.where(go.unsqueeze(-1), mid.squeeze(1), buf[:, slot])
        drop = ((ids == i.unsqueeze(1)) | (ids == j.unsqueeze(1))) & go.unsqueeze(1)  # [B, W]
        alive = (alive & ~drop) | ((ids == slot) & go.unsqueeze(1))
    return buf, alive


def cluster_token_labels(labels: Tensor, member: Tensor, n_clusters: int, order: str = "position") -> Tensor:
    """The cluster each output token of :func:`weighted_cluster_tokens` is made of, [B, n_clusters] long.

    ``order`` "position": clusters by their lowest member position (empty clusters last), "cluster": by label.
    """
    b, m = labels.shape
    ids = torch.arange(n_clusters, device=labels.device)  # [S]
    if order != "position":
        return ids.expand(b, n_clusters)
    one_hot = (labels.unsqueeze(-1) == ids) & member.unsqueeze(-1)  # [B, M, S]
    positions = torch.arange(m, device=labels.device).view(1, m, 1)
    first = torch.where(one_hot, positions, m).amin(1)  # [B, S] lowest member position (m if empty)
    return first.argsort(dim=1, stable=True)  # [B, S]


def weighted_cluster_tokens(
    hidden: Tensor,
    labels: Tensor,
    member: Tensor,
    weights: Tensor | None,
    n_clusters: int,
    order: str = "position",
    empty_token: str = "drop",
) -> tuple[Tensor, Tensor]:
    """Weighted mean of the hidden states of each cluster 0..n_clusters−1 (points with a label ≥
    n_clusters belong to no token).

    hidden [B, M, C]; labels [B, M] long; member [B, M] bool; weights [B, M] > 0, or None for the plain mean.
    ``order``: "position" = clusters ordered by their first member, "cluster" = by label.
    ``empty_token``: "drop" = an empty cluster is an invalid zero row, "zero" = a valid zero token.
    Returns (tokens [B, n_clusters, C], valid [B, n_clusters]).
    """
    ids = torch.arange(n_clusters, device=hidden.device)  # [S]
    one_hot = (labels.unsqueeze(-1) == ids) & member.unsqueeze(-1)  # [B, M, S]
    work = at_least_float32(hidden.dtype)  # sums of many states: at least float32
    w = one_hot.to(work)  # [B, M, S]
    if weights is not None:
        w = w * weights.to(work).unsqueeze(-1)
    total = w.sum(1)  # [B, S]
    total = total.clamp_min(torch.finfo(work).tiny)  # empty clusters: 0 / tiny = 0, no NaN
    tokens = (w.transpose(1, 2) @ hidden.to(work) / total.unsqueeze(-1)).to(hidden.dtype)  # [B, S, C]
    valid = one_hot.any(1)  # [B, S]
    if order == "position":
        perm = cluster_token_labels(labels, member, n_clusters, order)  # [B, S]
        valid = valid.gather(1, perm)
        tokens = tokens.gather(1, perm.unsqueeze(-1).expand_as(tokens))
    tokens = tokens.masked_fill(~valid.unsqueeze(-1), 0)
    if empty_token == "zero":
        valid = torch.ones_like(valid)
    return tokens, valid


def _member_positions(member: Tensor, rank: Tensor) -> Tensor:
    """Positions [B, R] of the ``rank``-th member (ascending position) of each row of ``member`` [B, M];
    −1 where rank is negative or beyond the members."""
    m = member.shape[1]
    order = torch.sort((~member).to(torch.uint8), dim=1, stable=True).indices  # [B, M] members first, ascending
    count = member.sum(1, keepdim=True)  # [B, 1]
    ok = (rank >= 0) & (rank < count)
    pos = order.gather(1, rank.clamp(0, m - 1))  # [B, R]
    return pos.masked_fill(~ok, -1)


def cluster_merge(
    hidden: Tensor,
    keys: Tensor,
    member: Tensor,
    weights: Tensor | None,
    contextual: int,
    *,
    init_factor: float,
    iters: int,
    agglomerative: bool,
    seed: int,
    seeds: str = "budget",
    linkage: str = "average",
    order: str = "position",
    empty: str = "keep",
    empty_token: str = "drop",
    init: Tensor | None = None,
    reinit: Tensor | None = None,
    trace: dict | None = None,
) -> tuple[Tensor, Tensor]:
    """Contextual tokens of the tokens in ``member`` by k-means (optionally + agglomeration).

    hidden [B, M, C]; keys [B, M, Ck]; member [B, M] bool; weights [B, M] > 0 (token importance) or None
    (plain mean). k-means++ draws ``contextual`` seeds (``seeds="budget"``: ``ceil(init_factor ·
    contextual)`` with ``agglomerative``, then reduced to ``contextual``; ``seeds="factor"``: that many
    always, and without ``agglomerative`` the clusters numbered ≥ ``contextual`` are dropped), runs
    ``iters`` Lloyd steps on the L2-normalised keys (``empty``: "keep" or "reseed" an emptied centre), and
    returns the mean hidden state of each cluster: (tokens [B, contextual, C], valid [B, contextual]).
    ``linkage``: "average" (average-linkage on cosine, tokens follow their centre) or "midpoint" (the
    seed's rule, :func:`agglomerate_midpoint`, then a re-assignment to the surviving centres).

    ``init`` [B, K] / ``reinit`` [B, R] long replay recorded draws: indices into each image's member list
    (ascending position), in draw order (−1 = none). Without them the draws come from a CPU generator
    seeded by ``seed`` (the same uniforms for every image). ``trace``: filled with ``labels`` [B, M]
    (final cluster id of each member, −1 elsewhere), ``token_labels`` [B, contextual] (the cluster id of each
    output token, :func:`cluster_token_labels`) and ``init`` [B, K] (seed indices into the member list).
    """
    b = hidden.shape[0]
    keys = keys.to(at_least_float32(keys.dtype))  # distances in at least float32
    points = keys / keys.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [B, M, Ck]
    wide = max(contextual, math.ceil(init_factor * contextual))
    n_seeds = wide if (agglomerative or seeds == "factor") else contextual
    gen = torch.Generator().manual_seed(seed)
    count = member.sum(1, keepdim=True)  # [B, 1] points per image
    if init is not None:
        if init.dim() != 2 or init.shape[0] != b:
            raise ValueError(f"kmeans_init must be [B={b}, K] long, got {tuple(init.shape)}")
        n_seeds = init.shape[1]
        pos = _member_positions(member, init.to(member.device).long())  # [B, K]
        centre_valid = pos >= 0  # [B, K]
        centres = points.gather(1, pos.clamp_min(0).unsqueeze(-1).expand(-1, -1, points.shape[-1]))  # [B, K, Ck]
        centres = centres * centre_valid.unsqueeze(-1)
        gen_uniforms = None
    else:
        # the same uniforms for every image: an image's clusters do not depend on its batch position
        uniforms = torch.rand(n_seeds, generator=gen, dtype=torch.float64).to(points.device).expand(b, n_seeds)
        centres, centre_valid = kmeans_pp_init(points, member, n_seeds, uniforms)  # [B, K, Ck], [B, K]
        gen_uniforms = uniforms
    reseed = None
    if empty == "reseed":
        if reinit is not None:
            reseed = _member_positions(member, reinit.to(member.device).long())  # [B, R]
        else:
            draws = iters * n_seeds
            u = torch.rand(draws, generator=gen, dtype=torch.float64).to(points.device).expand(b, draws)
            reseed = _member_positions(member, (u * count).long())  # [B, R] uniform member ranks
    centres, labels = lloyd(points, member, centres, centre_valid, iters, reseed)  # [B, K, Ck], [B, M]
    if agglomerative and n_seeds > contextual:
        if linkage == "midpoint":
            buf, alive = agglomerate_midpoint(centres, centre_valid, contextual)  # [B, W, Ck], [B, W]
            slot = assign(points, buf, alive)  # [B, M] nearest surviving centre
            labels = (alive.long().cumsum(1) - 1).gather(1, slot)  # [B, M] its rank in list order
        else:
            group = agglomerate_average(centres, centre_valid, contextual)  # [B, K]
            labels = group.gather(1, labels)  # [B, M]
    if trace is not None:
        trace["labels"] = labels.masked_fill(~member, -1)
        trace["token_labels"] = cluster_token_labels(labels, member, contextual, order)
        trace["init"] = init if init is not None else None
        trace["uniforms"] = gen_uniforms
    return weighted_cluster_tokens(hidden, labels, member, weights, contextual, order, empty_token)
