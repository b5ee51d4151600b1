"""SparseZip: hybrid scores, dynamic-K, text term, merging switches, dtypes, invariants, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from sparsezip_lmms.compress import dynamic_k, fit_dynamic_k, hybrid_scores, hybrid_terms, sparsezip
from sparsezip_lmms.compress.visionzip import visionzip_merge
from sparsezip_lmms.config import SparseZipConfig, VisionZipConfig, load_config

from _compress_helpers import cases, golden_inputs, rel_err, synthetic_inputs


def cfg(name="sparsezip_64", **overrides):
    return load_config(name, overrides)


def _check_layout(out, hidden, n_ctx_max):
    """CLS first, kept tokens ascending and copied, contextual after, padding zero."""
    for b in range(hidden.shape[0]):
        n = int(out.counts[b])
        idx = out.index[b, :n]
        kept = idx[idx >= 0]
        assert kept[0] == 0
        assert (kept[1:] > kept[:-1]).all()
        assert (idx[: kept.numel()] >= 0).all() and (idx[kept.numel() :] == -1).all()  # kept, then merged
        assert torch.equal(out.tokens[b, : kept.numel()], hidden[b, kept])
        assert n - kept.numel() <= n_ctx_max
        assert not out.valid[b, n:].any()
        assert (out.tokens[b, n:] == 0).all() and (out.index[b, n:] == -1).all()


# --------------------------------------------------------------------------- scores


def _naive_terms(cls_attn, keys, tau_feat, tau_sim):
    """Per-patch loops, straight from the definitions."""
    b, _, length = cls_attn.shape
    n = length - 1
    attn = torch.zeros(b, n, dtype=torch.float64)
    ent = torch.zeros(b, n, dtype=torch.float64)
    mut = torch.zeros(b, n, dtype=torch.float64)
    for i in range(b):
        unit = keys[i, 1:] / keys[i, 1:].norm(dim=-1, keepdim=True)
        for p in range(n):
            attn[i, p] = cls_attn[i, :, p + 1].mean()
            prob = torch.softmax(unit[p] / tau_feat, 0)
            ent[i, p] = -(prob * prob.log()).sum() / math.log(keys.shape[-1])
            others = torch.cat([unit[:p], unit[p + 1 :]])
            q = torch.softmax(others @ unit[p] / tau_sim, 0)
            mut[i, p] = 1 - (-(q * q.log()).sum() / math.log(n - 1))
    return attn, ent, mut


def test_hybrid_terms_match_definitions():
    _, cls_attn, keys = synthetic_inputs(b=2, n=20, ck=6)
    got = hybrid_terms(cls_attn, keys, 0.15, 0.08)
    ref = _naive_terms(cls_attn, keys, 0.15, 0.08)
    for g, r in zip(got, ref):
        assert torch.allclose(g, r, rtol=1e-10, atol=1e-12)
    _, ent, mut = got
    assert ((ent >= 0) & (ent <= 1)).all() and ((mut >= 0) & (mut <= 1)).all()


def test_hybrid_scores_weights_and_attention_only():
    _, cls_attn, keys = synthetic_inputs(b=2, n=30)
    attn, ent, mut = hybrid_terms(cls_attn, keys, 0.2, 0.1)

    def mm(x):
        return (x - x.amin(1, keepdim=True)) / (x.amax(1, keepdim=True) - x.amin(1, keepdim=True))

    s = hybrid_scores(cls_attn, keys, (1.0, 0.5, 0.25), 0.2, 0.1)
    assert torch.allclose(s, mm(attn) + 0.5 * mm(ent) + 0.25 * mm(mut), atol=1e-12)
    only = hybrid_scores(cls_attn, keys, (2.0, 0.5, 0.25), 0.2, 0.1, attention_only=True)
    assert torch.allclose(only, 2.0 * mm(attn), atol=1e-12)


def test_constant_inputs_give_finite_scores():
    cls_attn = torch.full((1, 2, 10), 0.1)
    keys = torch.ones(1, 10, 4)
    s = hybrid_scores(cls_attn, keys)
    assert torch.isfinite(s).all() and (s == 0).all()


# --------------------------------------------------------------------------- dynamic K


def test_dynamic_k_formula_and_clamp():
    scores = torch.tensor([[0.0, 1.0], [0.0, 0.2], [0.0, 4.0]], dtype=torch.float64)  # Var = .25, .01, 4
    k = dynamic_k(scores, c=10.0, eps=1e-3, scale=1.0, k_min=1, k_max=100)
    expected = [round(10 + math.log(v + 1e-3)) for v in (0.25, 0.01, 4.0)]
    assert k.tolist() == expected and k.dtype == torch.long
    k = dynamic_k(scores, c=40.0, eps=1e-3, scale=10.0, k_min=20, k_max=45)
    assert k.tolist() == [26, 20, 45]


def test_fit_dynamic_k_maps_quantiles():
    log_var = torch.linspace(-4.0, -2.0, 101)
    c, scale = fit_dynamic_k(log_var, 32, 54, quantiles=(0.0, 1.0))
    assert math.isclose(c + scale * -4.0, 32, abs_tol=1e-9) and math.isclose(c + scale * -2.0, 54, abs_tol=1e-9)
    with pytest.raises(ValueError, match="log_var"):
        fit_dynamic_k(torch.zeros(5), 32, 54)


@pytest.mark.parametrize("name", ["sparsezip_64", "sparsezip_128", "sparsezip_192", "sparsezip_dynamic"])
def test_default_configs_vary_k_within_bounds(name):
    config = cfg(name)
    hidden, cls_attn, keys = golden_inputs()
    out = sparsezip(hidden, cls_attn, keys, config)
    k = out.kept.sum(1)  # dominant tokens incl. CLS
    assert ((k >= config.k_min) & (k <= config.k_max)).all()
    assert len(set(k.tolist())) > 1  # differs across the three images
    _check_layout(out, hidden, config.merging.contextual_num)


def test_unscaled_formula_degenerates_to_k_min():
    # the original K = round(log(Var + eps) + 10) lands far below k_min for these scores
    out = sparsezip(*golden_inputs(), cfg(**{"dynk.c": 10.0, "dynk.scale": 1.0}))
    assert out.kept.sum(1).tolist() == [32, 32, 32]


def test_k_does_not_depend_on_text():
    hidden, cls_attn, keys = golden_inputs()
    text = torch.randn(3, 576, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = sparsezip(hidden, cls_attn, keys, cfg(cross_beta=0.0))
    b = sparsezip(hidden, cls_attn, keys, cfg(cross_beta=2.0), text)
    assert torch.equal(a.kept.sum(1), b.kept.sum(1))
    assert not torch.equal(a.index, b.index)  # but which patches does


# --------------------------------------------------------------------------- switches


def test_reduces_to_visionzip_parity():
    """attention-only scores, fixed K, VisionZip merge, no text: exactly the official VisionZip."""
    config = cfg(skip_hybrid_attn=True, skip_dynamic_k=True, dominant=54, merge="visionzip", cross_beta=0.0)
    out = sparsezip(*golden_inputs(), config)
    gold = cases()
    assert torch.equal(out.index[:, :54], gold["dominant_idx_D54_C10"])
    assert rel_err(out.tokens, gold["features_D54_C10"]) <= 1e-5


def test_skip_dynamic_k_and_skip_ctx_merge():
    hidden, cls_attn, keys = golden_inputs()
    out = sparsezip(hidden, cls_attn, keys, cfg(skip_dynamic_k=True, dominant=40, merge="none"))
    assert out.tokens.shape == (3, 40, 64) and out.valid.all() and (out.index >= 0).all()
    out = sparsezip(hidden, cls_attn, keys, cfg(**{"merging.contextual_num": 0}))
    assert (out.index[out.valid] >= 0).all()


def test_hybrid_off_changes_which_not_how_many():
    hidden, cls_attn, keys = golden_inputs()
    full = sparsezip(hidden, cls_attn, keys, cfg())
    off = sparsezip(hidden, cls_attn, keys, cfg("ablations/hybrid_off"))
    assert torch.equal(full.kept.sum(1), off.kept.sum(1))
    assert not torch.equal(full.index, off.index)
    k = off.kept.sum(1)
    for b in range(3):  # top-(K-1) by CLS attention
        top = cls_attn[b, :, 1:].mean(0).topk(int(k[b]) - 1).indices.sort().values + 1
        assert torch.equal(off.index[b, 1 : int(k[b])], top)


def test_skip_hybrid_attn_keeps_top_attention():
    hidden, cls_attn, keys = synthetic_inputs(b=2, n=49)
    config = cfg(skip_hybrid_attn=True, skip_dynamic_k=True, dominant=9, merge="none")
    out = sparsezip(hidden, cls_attn, keys, config)
    top = cls_attn[:, :, 1:].mean(1).topk(8, dim=1).indices.sort(1).values + 1
    assert torch.equal(out.index[:, 1:], top)


def test_text_term_steers_selection():
    hidden, cls_attn, keys = synthetic_inputs(b=2, n=49)
    text = torch.randn(2, 49, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    config = cfg(skip_dynamic_k=True, dominant=9, merge="none", cross_beta=1000.0)
    out = sparsezip(hidden, cls_attn, keys, config, text)
    assert torch.equal(out.index[:, 1:], text.topk(8, dim=1).indices.sort(1).values + 1)
    # beta 0 or no text: identical results
    base = sparsezip(hidden, cls_attn, keys, cfg(skip_dynamic_k=True, dominant=9, merge="none"))
    off = sparsezip(hidden, cls_attn, keys, cfg(skip_dynamic_k=True, dominant=9, merge="none", cross_beta=0.0), text)
    assert torch.equal(base.index, off.index)


def test_merge_visionzip_uses_visionzip_merge():
    hidden, cls_attn, keys = golden_inputs()
    out = sparsezip(hidden, cls_attn, keys, cfg(merge="visionzip"))
    keep = torch.zeros(3, 577, dtype=torch.bool)
    for b in range(3):
        n = int(out.kept[b].sum())
        keep[b, out.index[b, :n]] = True
        assert int(out.counts[b]) == n + 10
    ctx, valid, _ = visionzip_merge(hidden, keys, ~keep, 10)
    assert valid.all()
    for b in range(3):
        n = int(out.kept[b].sum())
        assert torch.allclose(out.tokens[b, n : n + 10], ctx[b], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("agglomerative", [False, True])
def test_kmeans_merge_tokens(agglomerative):
    hidden, cls_attn, keys = golden_inputs()
    config = cfg(**{"merging.agglomerative": agglomerative, "merging.contextual_num": 12})
    out = sparsezip(hidden, cls_attn, keys, config)
    _check_layout(out, hidden, 12)
    merged = out.valid & (out.index == -1)
    assert (merged.sum(1) >= 1).all() and (merged.sum(1) <= 12).all()
    # a merged token is a convex combination of non-dominant patches: inside their bounding box
    for b in range(3):
        rest = torch.ones(577, dtype=torch.bool)
        rest[out.index[b][out.kept[b]]] = False
        lo, hi = hidden[b][rest].amin(0), hidden[b][rest].amax(0)
        m = out.tokens[b][merged[b]]
        assert ((m >= lo - 1e-12) & (m <= hi + 1e-12)).all()


def test_deterministic_and_batch_invariant():
    hidden, cls_attn, keys = golden_inputs()
    text = torch.randn(3, 576, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    config = cfg(**{"merging.agglomerative": True})
    a = sparsezip(hidden, cls_attn, keys, config, text)
    b = sparsezip(hidden, cls_attn, keys, config, text)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.index, b.index)
    for i in range(3):
        one = sparsezip(hidden[i : i + 1], cls_attn[i : i + 1], keys[i : i + 1], config, text[i : i + 1])
        n = int(one.counts[0])
        assert int(a.counts[i]) == n
        assert torch.equal(one.index[0, :n], a.index[i, :n])
        assert torch.allclose(one.tokens[0, :n], a.tokens[i, :n], rtol=1e-10, atol=1e-12)


def test_budget_covering_everything_keeps_everything():
    hidden, cls_attn, keys = synthetic_inputs(b=2, n=16)
    for config in (cfg(skip_dynamic_k=True, dominant=17), cfg(k_min=17, k_max=54), cfg(k_min=40, k_max=54)):
        out = sparsezip(hidden, cls_attn, keys, config)
        assert torch.equal(out.tokens, hidden) and torch.equal(out.index, torch.arange(17).expand(2, 17))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("merge", ["kmeans", "visionzip"])
def test_dtypes(dtype, merge):
    hidden, cls_attn, keys = golden_inputs(dtype)
    text = torch.randn(3, 576, generator=torch.Generator().manual_seed(0)).to(dtype)
    out = sparsezip(hidden, cls_attn, keys, cfg(merge=merge, **{"merging.agglomerative": True}), text)
    assert out.tokens.dtype == dtype
    assert torch.isfinite(out.tokens).all()
    ref = sparsezip(*golden_inputs(), cfg(merge=merge, **{"merging.agglomerative": True}), text.double())
    assert torch.equal(out.kept.sum(1), ref.kept.sum(1))  # K from float32 scores in every dtype


def test_bad_inputs():
    hidden, cls_attn, keys = synthetic_inputs(b=2, n=16)
    with pytest.raises(ValueError, match="config"):
        sparsezip(hidden, cls_attn, keys, VisionZipConfig())
    with pytest.raises(ValueError, match="config"):
        sparsezip(hidden, cls_attn, keys, {"method": "sparsezip"})
    with pytest.raises(ValueError, match="dominant"):
        sparsezip(hidden, cls_attn, keys, SparseZipConfig(skip_dynamic_k=True, dominant=18))
    with pytest.raises(ValueError, match="text_relevance"):
        sparsezip(hidden, cls_attn, keys, SparseZipConfig(), torch.zeros(2, 17, dtype=torch.float64))
    bad = torch.zeros(2, 16, dtype=torch.float64)
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="text_relevance"):
        sparsezip(hidden, cls_attn, keys, SparseZipConfig(), bad)
    bad_keys = keys.clone()
    bad_keys[0, 2, 1] = float("-inf")
    with pytest.raises(ValueError, match="keys"):
        sparsezip(hidden, cls_attn, bad_keys, SparseZipConfig())
    with pytest.raises(ValueError, match="cls_attn"):
        sparsezip(hidden, cls_attn[:, :, :5], keys, SparseZipConfig())


# --------------------------------------------------------------------------- seed switches and defaults

_SEED_SET = __import__("pathlib").Path(__file__).parent / "data" / "sparsezip_seed" / "cases.safetensors"


def _seed_inputs():
    from safetensors.torch import load_file

    t = load_file(str(_SEED_SET))
    return t["hidden"], t["cls_attn"], t["keys"], t["text_rel"][:, 1:]


@pytest.mark.parametrize("beta", [0.1, 0.3, 1.0])
def test_text_term_weight_is_cross_beta(beta):
    """Default text_weight 'relative': std(text term) / std(visual score) = cross_beta (±20 %), per image
    over its patches, averaged over images, on the seed set's inputs and text relevance. The old
    'absolute' term (cross_beta · zscore next to min-max terms) weighs ~6× more than configured."""
    from sparsezip_lmms.compress import sparsezip_trace

    hidden, cls_attn, keys, rel = _seed_inputs()
    visual = sparsezip_trace(hidden, cls_attn, keys, cfg(cross_beta=0.0)).scores  # [B, N]
    ratio = {}
    for weight in ("relative", "absolute"):
        fused = sparsezip_trace(hidden, cls_attn, keys, cfg(cross_beta=beta, text_weight=weight), rel).scores
        ratio[weight] = float(((fused - visual).std(1) / visual.std(1)).mean())
    assert abs(ratio["relative"] / beta - 1) <= 0.2
    assert ratio["absolute"] / beta > 3


def test_default_dynamic_k_spreads_on_the_seed_set():
    from sparsezip_lmms.compress import sparsezip_trace

    hidden, cls_attn, keys, rel = _seed_inputs()
    k = sparsezip_trace(hidden, cls_attn, keys, cfg(), rel).k + 1  # CLS counted
    assert len(set(k.tolist())) > 1 and (k > 32).all() and (k < 54).all()


def test_skip_ctx_merge_is_the_visionzip_merge_and_merge_none_has_no_contextual_tokens():
    hidden, cls_attn, keys = golden_inputs()
    skip = sparsezip(hidden, cls_attn, keys, cfg(skip_ctx_merge=True))
    vz = sparsezip(hidden, cls_attn, keys, cfg(merge="visionzip"))
    assert torch.equal(skip.tokens, vz.tokens) and torch.equal(skip.index, vz.index)
    none = sparsezip(hidden, cls_attn, keys, cfg("ablations/merge_off"))
    assert (none.index[none.valid] >= 0).all()
    assert torch.equal(none.counts, vz.counts - 10)


def test_k_counts_cls_false_adds_cls_on_top():
    hidden, cls_attn, keys = golden_inputs()
    with_cls = sparsezip(hidden, cls_attn, keys, cfg(skip_dynamic_k=True, dominant=20, merge="none"))
    without = sparsezip(hidden, cls_attn, keys, cfg(skip_dynamic_k=True, dominant=20, merge="none", k_counts_cls=False))
    assert with_cls.counts.tolist() == [20] * 3 and without.counts.tolist() == [21] * 3
    with pytest.raises(ValueError, match="dominant"):
        sparsezip(hidden, cls_attn, keys, cfg(skip_dynamic_k=True, dominant=577, k_counts_cls=False))


def test_dynamic_k_reads_the_ranking_score_and_widens_to_dominant():
    from sparsezip_lmms.compress import sparsezip_trace

    hidden, cls_attn, keys, rel = _seed_inputs()
    base = {"dynk.scale": 30.0, "dynk.c": 200.0, "k_min": 1, "k_max": 500, "cross_beta": 1.0}
    visual = sparsezip_trace(hidden, cls_attn, keys, cfg(**base), rel)
    ranking = sparsezip_trace(hidden, cls_attn, keys, cfg(**base, **{"dynk.source": "ranking"}), rel)
    for out, source in ((visual, sparsezip_trace(hidden, cls_attn, keys, cfg(cross_beta=0.0)).scores), (ranking, ranking.scores)):
        expect = torch.round(200.0 + 30.0 * torch.log(source.var(1, unbiased=False) + 1e-3)).long() - 1
        assert torch.equal(out.k, expect)
    assert not torch.equal(visual.k, ranking.k)
    narrow = {"dynk.c": 1000.0, "k_min": 10, "k_max": 20, "dominant": 30}
    assert sparsezip_trace(hidden, cls_attn, keys, cfg(**narrow), rel).k.tolist() == [19] * 3
    wide = sparsezip_trace(hidden, cls_attn, keys, cfg(**narrow, **{"dynk.widen_to_dominant": True}), rel).k
    assert wide.tolist() == [29] * 3


# --------------------------------------------------------------------------- one budget per group (NeXT per_image)


def test_grouped_log_variance_pools_the_rows_of_a_group():
    from sparsezip_lmms.compress.sparsezip import grouped_log_variance, log_variance

    scores = torch.rand(5, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    alone = grouped_log_variance(scores, torch.arange(5), 1e-3)
    assert torch.allclose(alone, log_variance(scores, 1e-3), rtol=0, atol=1e-12)
    groups = torch.tensor([0, 0, 0, 3, 3])
    pooled = grouped_log_variance(scores, groups, 1e-3)
    for rows in ([0, 1, 2], [3, 4]):
        want = torch.log(scores[rows].flatten().var(unbiased=False) + 1e-3)
        assert torch.allclose(pooled[rows], want.expand(len(rows)), rtol=0, atol=1e-12)


def test_spread_group_budget_ranks_a_group_jointly():
    from sparsezip_lmms.compress.sparsezip import spread_group_budget

    scores = torch.rand(5, 30, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    scores[1] += 1  # row 1 outscores row 0: it should take most of group 0's budget
    groups = torch.tensor([0, 0, 2, 2, 2])
    budget = torch.tensor([6, 6, 4, 4, 4])
    keep = spread_group_budget(scores, groups, budget)
    for rows, total in (([0, 1], 12), ([2, 3, 4], 12)):
        flat = scores[rows].flatten()
        want = torch.zeros_like(flat, dtype=torch.bool).scatter_(0, flat.topk(total).indices, True)
        assert torch.equal(keep[rows].flatten(), want)
    assert int(keep[1].sum()) == 12 and int(keep[0].sum()) == 0  # a test that can fail: the shares differ


def test_groups_of_one_are_the_ungrouped_method():
    hidden, cls_attn, keys = golden_inputs()
    text = torch.randn(3, 576, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for config in (cfg(), cfg(skip_dynamic_k=True), cfg(merge="visionzip")):
        a = sparsezip(hidden, cls_attn, keys, config, text)
        b = sparsezip(hidden, cls_attn, keys, config, text, groups=torch.arange(3))
        assert torch.equal(a.index, b.index) and torch.equal(a.tokens, b.tokens)


@pytest.mark.parametrize("dynamic", [True, False])
def test_a_group_shares_one_budget_over_its_rows(dynamic):
    from sparsezip_lmms.compress.sparsezip import SparseZipConfig, grouped_log_variance, hybrid_scores

    hidden, cls_attn, keys = synthetic_inputs(b=5, n=64, seed=7)
    cls_attn[3:, :, 1:33] *= 8  # rows 3 and 4: attention piled on their first half
    cls_attn = cls_attn / cls_attn.sum(-1, keepdim=True)
    config = cfg("sparsezip_next_160", skip_dynamic_k=not dynamic, **{"merging.contextual_num": 2})
    assert isinstance(config, SparseZipConfig)
    groups = torch.tensor([0, 0, 0, 3, 3])
    out = sparsezip(hidden, cls_attn, keys, config, groups=groups)
    scores = hybrid_scores(cls_attn, keys, (1.0, 0.6, 0.8), config.tau_feat, config.tau_sim)  # [B, N]
    if dynamic:
        log_var = grouped_log_variance(scores, groups, config.dynk.eps)
        k = torch.round(config.dynk.c + config.dynk.scale * log_var).clamp(config.k_min, config.k_max).long()
    else:
        k = torch.full((5,), config.dominant)
    kept = out.index.masked_fill(~out.valid, -1)  # [B, T] CLIP positions, -1 merged / padding
    assert ((kept == 0).sum(dim=1) == 1).all()  # every row keeps its CLS
    for rows in ([0, 1, 2], [3, 4]):
        patches = [kept[r][kept[r] > 0] - 1 for r in rows]
        assert sum(p.numel() for p in patches) == len(rows) * (int(k[rows[0]]) - 1)
        lowest = min(float(scores[r, p].min()) for r, p in zip(rows, patches))
        dropped = torch.cat([scores[r][~torch.isin(torch.arange(64), p)] for r, p in zip(rows, patches)])
        assert lowest >= float(dropped.max())  # the group's highest scores, wherever they are
    shares = [(kept[r] > 0).sum().item() for r in range(5)]
    assert len(set(shares)) > 1  # the rows of a group take different shares
