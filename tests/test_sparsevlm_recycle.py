"""SparseVLM v1.5 tensor pieces against the golden outputs of the official code (tests/data/sparsevlm)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparsezip_lmms.compress.sparsevlm_recycle import (
    density_peak_merge,
    keep_count,
    pairwise_distance,
    recycle_sizes,
    select_raters,
    topk_keep,
)

DATA = Path(__file__).parent / "data" / "sparsevlm"
SAMPLES = ("s0", "s1")
BUDGETS = (64, 128, 192)
LAYERS = (2, 6, 15)


@pytest.fixture(scope="module")
def cases() -> dict[str, torch.Tensor]:
    return load_file(str(DATA / "cases.safetensors"))


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((DATA / "meta.json").read_text())


@pytest.mark.parametrize("sample", SAMPLES)
def test_raters_match_official(cases, meta, sample):
    info = meta["samples"][sample]
    embeds = cases[f"{sample}/inputs_embeds"]  # [L, d]
    v0, t0 = info["v_token_start"], info["text_token_start"]
    raters = select_raters(embeds[v0:t0], embeds[t0:])
    assert raters.tolist() == info["rater_idx"]
    assert raters.tolist() == cases[f"{sample}/rater_idx"].tolist()


def test_raters_need_text():
    with pytest.raises(ValueError, match="text token"):
        select_raters(torch.randn(4, 8), torch.randn(0, 8))


@pytest.mark.parametrize("sample", SAMPLES)
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("layer", LAYERS)
def test_topk_and_recycle_inputs_match_official(cases, sample, budget, layer):
    prefix = f"{sample}/r{budget}/L{layer}/"
    scores = cases[prefix + "scores"]  # [n] official scores
    kept_ref = cases[prefix + "kept_rel"]
    kept, deleted = topk_keep(scores, kept_ref.numel())
    assert kept.equal(kept_ref)
    assert deleted.equal(cases[prefix + "deleted_rel"])
    n_in, clusters = recycle_sizes(deleted.numel())
    assert n_in == cases[prefix + "recycle_in_rel"].numel()
    assert clusters == cases[prefix + "recycle_centers"].numel()
    order = torch.topk(scores[deleted], n_in).indices
    assert deleted[order].equal(cases[prefix + "recycle_in_rel"])


@pytest.mark.parametrize("sample", SAMPLES)
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("layer", LAYERS)
def test_density_peak_merge_matches_official(cases, sample, budget, layer):
    prefix = f"{sample}/r{budget}/L{layer}/"
    x = cases[prefix + "recycle_x"]  # [n_in, d]
    clusters = cases[prefix + "recycle_centers"].numel()
    result = density_peak_merge(x, clusters, cases[prefix + "recycle_noise"])
    assert result.centers.equal(cases[prefix + "recycle_centers"])  # center order = output order
    assert result.assign.equal(cases[prefix + "recycle_assign"])
    knn_ref = cases[prefix + "recycle_knn_idx"]
    assert torch.sort(result.knn_idx, dim=1).values.equal(torch.sort(knn_ref, dim=1).values)
    torch.testing.assert_close(result.center_scores, cases[prefix + "recycle_center_scores"], rtol=1e-10, atol=0)
    torch.testing.assert_close(result.merged, cases[prefix + "recycle_merged"], rtol=1e-12, atol=1e-14)


def test_density_ties_depend_on_noise(cases):
    """Budget 64, layer 6: two clusters, mutually nearest pairs tie exactly; the draw decides."""
    x = cases["s0/r64/L6/recycle_x"]
    dist = pairwise_distance(x)
    assert torch.equal(dist, dist.T) and torch.all(dist.diagonal() == 0)
    outcomes = set()
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        res = density_peak_merge(x, 2, torch.rand(x.shape[0], generator=gen, dtype=torch.float64))
        outcomes.add(tuple(res.centers.tolist()))
    assert len(outcomes) > 1


def test_sizes_and_clamps():
    assert recycle_sizes(510) == (154, 16)
    assert recycle_sizes(52) == (16, 2)
    assert recycle_sizes(15) == (5, 1)
    assert recycle_sizes(1) == (1, 1)
    assert recycle_sizes(0) == (0, 0)
    assert recycle_sizes(10, ratio=1.0, divisor=1) == (10, 10)  # clamped to the available tokens
    assert keep_count(66, 576) == 66
    assert keep_count(300, 200) == 199
    assert keep_count(5, 1) == 0


def test_merge_is_mean_of_members():
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0], [10.0, 10.2]], dtype=torch.float64)
    res = density_peak_merge(x, 2, torch.tensor([0.5, 0.0, 0.5, 0.0], dtype=torch.float64))  # breaks the pair ties
    assert res.centers.tolist() == [0, 2]
    groups = {tuple(sorted(torch.nonzero(res.assign == c).flatten().tolist())) for c in range(2)}
    assert groups == {(0, 1), (2, 3)}
    for c in range(2):
        members = x[res.assign == c]
        torch.testing.assert_close(res.merged[c], members.sum(0) / (members.shape[0] + 1e-6))
