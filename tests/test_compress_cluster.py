"""Batched k-means++ / Lloyd / average-linkage against scikit-learn, masks, degenerate cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from sparsezip_lmms.compress.cluster import (
    agglomerate_average,
    cluster_merge,
    kmeans_pp_init,
    lloyd,
    weighted_cluster_tokens,
)

sklearn_cluster = pytest.importorskip("sklearn.cluster")
from sklearn.metrics import adjusted_rand_score


def _data(b=3, m=120, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, m, d, generator=g, dtype=torch.float64), g


def _masked(m_sizes, m=120, seed=0):
    """Mask with a different number of members per image, at scattered positions."""
    g = torch.Generator().manual_seed(seed + 1)
    rows = []
    for size in m_sizes:
        row = torch.zeros(m, dtype=torch.bool)
        row[torch.randperm(m, generator=g)[:size]] = True
        rows.append(row)
    return torch.stack(rows)


@pytest.mark.parametrize("iters", [1, 4, 25])
def test_lloyd_matches_sklearn(iters):
    x, g = _data()
    mask = _masked([120, 77, 40])
    k = 7
    u = torch.rand(3, k, generator=g, dtype=torch.float64)
    c0, cv = kmeans_pp_init(x, mask, k, u)
    assert cv.all()
    centres, labels = lloyd(x, mask, c0, cv, iters)
    for b in range(3):
        pts = x[b][mask[b]].numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            km = sklearn_cluster.KMeans(
                n_clusters=k, init=c0[b].numpy(), n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd"
            ).fit(pts)
        assert np.array_equal(km.labels_, labels[b][mask[b]].numpy())
        np.testing.assert_allclose(centres[b].numpy(), km.cluster_centers_, rtol=0, atol=1e-10)


def test_kmeans_pp_picks_distinct_member_points_deterministically():
    x, g = _data()
    mask = _masked([120, 30, 5])
    u = torch.rand(3, 8, generator=g, dtype=torch.float64)
    c0, cv = kmeans_pp_init(x, mask, 8, u)
    c1, cv1 = kmeans_pp_init(x, mask, 8, u)
    assert torch.equal(c0, c1) and torch.equal(cv, cv1)
    assert cv.tolist() == [[True] * 8, [True] * 8, [True] * 5 + [False] * 3]  # 5 members -> 5 centres
    for b in range(3):
        members = x[b][mask[b]]
        chosen = c0[b][cv[b]]
        hits = (chosen.unsqueeze(1) == members.unsqueeze(0)).all(-1)  # [k, members]
        assert (hits.sum(1) == 1).all()  # every centre is exactly one member point
        assert hits.any(0).sum() == chosen.shape[0]  # all distinct
        assert (c0[b][~cv[b]] == 0).all()


def test_kmeans_pp_prefers_far_points():
    # two far-apart groups: the second seed lands in the other group for almost every draw
    x = torch.cat([torch.zeros(1, 50, 2), torch.full((1, 50, 2), 100.0)], 1).double()
    x = x + 0.01 * torch.randn(1, 100, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = torch.ones(1, 100, dtype=torch.bool)
    for seed in range(5):
        u = torch.rand(1, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        c, _ = kmeans_pp_init(x, mask, 2, u)
        assert (c[0, 0, 0] > 50) != (c[0, 1, 0] > 50)


def test_duplicate_points_and_empty_sets_give_no_nan():
    x = torch.ones(2, 10, 4, dtype=torch.float64)  # all identical
    mask = torch.tensor([[True] * 10, [False] * 10])
    u = torch.full((2, 3), 0.5, dtype=torch.float64)
    c0, cv = kmeans_pp_init(x, mask, 3, u)
    assert cv.tolist() == [[True, False, False], [False, False, False]]
    centres, labels = lloyd(x, mask, c0, cv, 5)
    assert torch.isfinite(centres).all()
    assert (labels[0] == 0).all()
    tokens, valid = weighted_cluster_tokens(x, labels, mask, torch.ones(2, 10, dtype=torch.float64), 3)
    assert torch.isfinite(tokens).all()
    assert valid.tolist() == [[True, False, False], [False, False, False]]


def test_empty_cluster_keeps_centre():
    x = torch.tensor([[[0.0], [0.1], [10.0]]], dtype=torch.float64)
    centres0 = torch.tensor([[[0.0], [10.0], [50.0]]], dtype=torch.float64)  # third centre gets nothing
    centres, labels = lloyd(x, torch.ones(1, 3, dtype=torch.bool), centres0, torch.ones(1, 3, dtype=torch.bool), 3)
    assert centres[0, 2, 0] == 50.0 and labels.tolist() == [[0, 0, 1]]


@pytest.mark.parametrize("k,n_clusters", [(20, 10), (16, 3), (9, 8), (12, 1)])
def test_agglomerative_matches_sklearn(k, n_clusters):
    g = torch.Generator().manual_seed(k * 31 + n_clusters)
    centres = torch.randn(4, k, 6, generator=g, dtype=torch.float64)
    group = agglomerate_average(centres, torch.ones(4, k, dtype=torch.bool), n_clusters)
    for b in range(4):
        if n_clusters == 1:
            assert (group[b] == 0).all()
            continue
        ref = sklearn_cluster.AgglomerativeClustering(
            n_clusters=n_clusters, metric="cosine", linkage="average"
        ).fit(centres[b].numpy())
        assert adjusted_rand_score(ref.labels_, group[b].numpy()) == 1.0
        assert sorted(set(group[b].tolist())) == list(range(n_clusters))


def test_agglomerative_with_invalid_centres():
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(2, 12, 5, generator=g, dtype=torch.float64)
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, 7:] = False  # image 1 has only 7 centres
    group = agglomerate_average(centres, valid, 4)
    ref = sklearn_cluster.AgglomerativeClustering(n_clusters=4, metric="cosine", linkage="average").fit(
        centres[1, :7].numpy()
    )
    assert adjusted_rand_score(ref.labels_, group[1, :7].numpy()) == 1.0
    # fewer valid centres than clusters: nothing merges
    few = agglomerate_average(centres, valid, 9)
    assert torch.equal(few[1, :7], torch.arange(7))


def test_cluster_merge_limits_and_determinism():
    x, _ = _data(b=2, m=60, d=6)
    hidden = torch.randn(2, 60, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    member = _masked([50, 4], m=60)
    weights = torch.rand(2, 60, generator=torch.Generator().manual_seed(4), dtype=torch.float64) + 0.1
    for agglomerative in (False, True):
        kw = {"init_factor": 2.0, "iters": 5, "agglomerative": agglomerative}
        tokens, valid = cluster_merge(hidden, x, member, weights, 6, seed=0, **kw)
        again, valid2 = cluster_merge(hidden, x, member, weights, 6, seed=0, **kw)
        assert torch.equal(tokens, again) and torch.equal(valid, valid2)  # deterministic
        assert valid[0].all() and valid[1].tolist() == [True] * 4 + [False] * 2
        # 4 members, 6 clusters: every member is its own token, in source order
        assert torch.allclose(tokens[1, :4], hidden[1][member[1]], rtol=1e-12, atol=1e-12)
        # one cluster: the weighted mean of all members
        one, _ = cluster_merge(hidden, x, member, weights, 1, seed=0, **kw)
        w = weights[0][member[0]].unsqueeze(-1)
        assert torch.allclose(one[0, 0], (w * hidden[0][member[0]]).sum(0) / w.sum(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_cluster_merge_in_half_precision_clusters_as_float32(half):
    """Half-precision keys and states are clustered and averaged in float32: the same clusters as the
    float32 inputs' (the keys rounded alike), the tokens returned in the input dtype."""
    x, _ = _data(b=2, m=60, d=6)
    hidden = torch.randn(2, 60, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    member = _masked([50, 30], m=60)
    kw = {"init_factor": 2.0, "iters": 5, "agglomerative": True, "seed": 0}
    traced_half, traced_wide = {}, {}
    tokens, valid = cluster_merge(hidden.to(half), x.to(half), member, None, 6, trace=traced_half, **kw)
    wide, wide_valid = cluster_merge(
        hidden.to(half).float(), x.to(half).float(), member, None, 6, trace=traced_wide, **kw
    )  # fmt: skip
    assert tokens.dtype == half and torch.equal(valid, wide_valid)
    assert torch.equal(traced_half["labels"], traced_wide["labels"])
    assert torch.equal(tokens, wide.to(half))


def test_weighted_cluster_tokens_exact():
    hidden = torch.tensor([[[1.0], [3.0], [10.0], [20.0], [99.0]]], dtype=torch.float64)
    labels = torch.tensor([[1, 1, 0, 0, 0]])
    member = torch.tensor([[True, True, True, True, False]])
    weights = torch.tensor([[1.0, 3.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    tokens, valid = weighted_cluster_tokens(hidden, labels, member, weights, 3)
    # ordered by first member position: cluster 1 (positions 0,1) before cluster 0 (2,3); cluster 2 empty
    assert tokens[0, :, 0].tolist() == [2.5, 15.0, 0.0]
    assert valid.tolist() == [[True, True, False]]


def test_agglomerate_midpoint_rule():
    from sparsezip_lmms.compress.cluster import agglomerate_midpoint

    c = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.0, -1.0]]], dtype=torch.float64)
    buf, alive = agglomerate_midpoint(c, torch.ones(1, 4, dtype=torch.bool), 3)
    assert alive.tolist() == [[False, True, False, True, True]]  # 0 and 2 merged, appended last
    assert torch.equal(buf[0, 4], (c[0, 0] + c[0, 2]) / 2)
    buf, alive = agglomerate_midpoint(c, torch.ones(1, 4, dtype=torch.bool), 2)
    assert alive.sum() == 2


def test_cluster_tokens_plain_mean_cluster_order_and_zero_tokens():
    from sparsezip_lmms.compress.cluster import weighted_cluster_tokens

    hidden = torch.arange(12, dtype=torch.float64).view(1, 4, 3)
    labels = torch.tensor([[2, 0, 2, 5]])  # label 5 >= 3 clusters: dropped
    member = torch.ones(1, 4, dtype=torch.bool)
    tokens, valid = weighted_cluster_tokens(hidden, labels, member, None, 3, order="cluster", empty_token="zero")
    assert valid.all()
    assert torch.equal(tokens[0, 0], hidden[0, 1]) and (tokens[0, 1] == 0).all()
    assert torch.equal(tokens[0, 2], (hidden[0, 0] + hidden[0, 2]) / 2)
    tokens, valid = weighted_cluster_tokens(hidden, labels, member, None, 3)
    assert valid.tolist() == [[True, True, False]] and torch.equal(tokens[0, 0], tokens[0, 0])


def test_cluster_merge_replays_recorded_seeds():
    from sparsezip_lmms.compress.cluster import cluster_merge

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 30, 4, generator=g, dtype=torch.float64)
    keys = torch.randn(2, 30, 3, generator=g, dtype=torch.float64)
    member = torch.ones(2, 30, dtype=torch.bool)
    member[:, :5] = False
    init = torch.tensor([[0, 7, 3, 12], [24, 1, 2, 3]])
    trace = {}
    kw = {"init_factor": 2.0, "iters": 0, "agglomerative": False, "seed": 0, "seeds": "factor", "order": "cluster"}
    cluster_merge(hidden, keys, member, None, 2, init=init, trace=trace, **kw)
    labels = trace["labels"]
    assert (labels[:, :5] == -1).all()
    for b in range(2):  # iters 0: every member goes to its nearest replayed seed
        unit = keys[b, 5:] / keys[b, 5:].norm(dim=-1, keepdim=True)
        seeds = unit[init[b]]
        assert torch.equal(labels[b, 5:], torch.cdist(unit, seeds).argmin(1))
