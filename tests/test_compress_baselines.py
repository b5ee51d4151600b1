"""keep_all / random_keep / pool and the compress() dispatcher over every shipped config."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparsezip_lmms.compress import (
    compress,
    keep_all,
    needs_scoring_inputs,
    needs_text,
    pool,
    pool_grid,
    random_keep,
    selects_after_projector,
    sparsezip,
    visionzip,
)
from sparsezip_lmms.config import available_configs, load_config
from sparsezip_lmms.methods import method_of

from _compress_helpers import golden_inputs, synthetic_inputs


def test_keep_all_is_plain_llava():
    hidden, _, _ = golden_inputs()
    out = keep_all(hidden)
    assert torch.equal(out.tokens, hidden[:, 1:])  # LLaVA-1.5 "default" strategy: CLS dropped
    assert torch.equal(out.index, torch.arange(1, 577).expand(3, 576)) and out.valid.all()
    via = compress(hidden, None, None, load_config("keep_all"))
    assert torch.equal(via.tokens, out.tokens) and torch.equal(via.index, out.index)


def test_random_keep_seeded_sorted_unique():
    hidden, _, _ = synthetic_inputs(b=3, n=64)
    a = random_keep(hidden, 10, torch.Generator().manual_seed(5))
    b = random_keep(hidden, 10, torch.Generator().manual_seed(5))
    c = random_keep(hidden, 10, torch.Generator().manual_seed(6))
    assert torch.equal(a.index, b.index) and not torch.equal(a.index, c.index)
    assert (a.index[:, 1:] > a.index[:, :-1]).all() and (a.index >= 1).all() and (a.index <= 64).all()
    assert torch.equal(a.tokens, hidden.gather(1, a.index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])))
    assert torch.equal(random_keep(hidden, 64).index, torch.arange(1, 65).expand(3, 64))
    cfg = load_config("random_64")
    x, y = compress(*golden_inputs(), cfg), compress(*golden_inputs(), cfg)
    assert torch.equal(x.index, y.index) and x.tokens.shape == (3, 64, 64)


def test_keyed_random_keep_depends_only_on_seed_key_and_position():
    from sparsezip_lmms.compress import image_keys

    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(4, 3, 336, 336, generator=g)  # [4 images]
    keys = image_keys(pixels)
    assert keys.dtype == torch.int64 and len(set(keys.tolist())) == 4
    assert ((keys >= 0) & (keys < 2**32)).all()
    # the same image has the same key alone, in another batch, at another position
    assert image_keys(pixels[2:3]).item() == keys[2].item()
    assert torch.equal(image_keys(pixels.flip(0)), keys.flip(0))
    # a one-level change in one pixel changes the key
    nudged = pixels[:1].clone()
    nudged[0, 1, 100, 200] += 2 / 1024
    assert image_keys(nudged).item() != keys[0].item()

    hidden, _, _ = synthetic_inputs(b=4, n=576)
    out = random_keep(hidden, 64, keys=keys, seed=7)
    assert (out.index[:, 1:] > out.index[:, :-1]).all() and (out.index >= 1).all() and (out.index <= 576).all()
    alone = random_keep(hidden[1:2], 64, keys=keys[1:2], seed=7)
    assert torch.equal(alone.index[0], out.index[1]) and torch.equal(alone.tokens[0], out.tokens[1])
    assert not torch.equal(random_keep(hidden, 64, keys=keys, seed=8).index, out.index)  # the seed matters
    assert len({tuple(row) for row in out.index.tolist()}) == 4  # different images, different draws
    via = compress(hidden, None, None, load_config("random_64"), image_keys=keys.flip(0))
    assert torch.equal(via.index, random_keep(hidden, 64, keys=keys.flip(0), seed=load_config("random_64").seed).index)
    with pytest.raises(ValueError, match="keys"):
        random_keep(hidden, 64, keys=keys[:2])
    with pytest.raises(ValueError, match="pixel_values"):
        image_keys(torch.full((1, 3, 4, 4), float("nan")))


def test_keyed_random_keep_is_uniform():
    """Over 4000 keys every patch is kept about k/N of the time (binomial, 4000 * 64/576 = 444 expected)."""
    hidden = torch.zeros(4000, 577, 2)
    keys = torch.arange(4000, dtype=torch.int64) * 7919
    counts = torch.zeros(577)
    index = random_keep(hidden, 64, keys=keys, seed=0).index  # [4000, 64]
    counts.index_add_(0, index.flatten(), torch.ones(index.numel()))
    freq = counts[1:] / 4000  # [576]
    assert abs(float(freq.mean()) - 64 / 576) < 1e-9
    sd = (64 / 576 * (1 - 64 / 576) / 4000) ** 0.5  # ~0.005
    assert float((freq - 64 / 576).abs().max()) < 5 * sd


@pytest.mark.parametrize(
    "k,grid", [(64, (8, 8)), (128, (8, 16)), (192, (12, 16)), (576, (24, 24)), (61, (7, 7)), (3, (1, 1)), (2, (1, 2))]
)
def test_pool_grid(k, grid):
    assert pool_grid(k, 24) == grid
    assert grid[0] * grid[1] <= k


def test_pool_values():
    hidden, _, _ = golden_inputs()
    out = pool(hidden, 64)
    grid = hidden[:, 1:].reshape(3, 24, 24, 64)
    # 24 / 8 = 3: exact 3x3 block means, row-major
    expected = grid.reshape(3, 8, 3, 8, 3, 64).mean((2, 4)).reshape(3, 64, 64)
    assert torch.allclose(out.tokens, expected, atol=1e-12)
    assert (out.index == -1).all() and out.valid.all()
    assert pool(hidden, 128).tokens.shape == (3, 128, 64)
    assert torch.equal(pool(hidden, 576).tokens, hidden[:, 1:])
    ref = F.adaptive_avg_pool2d(hidden[:, 1:].transpose(1, 2).reshape(3, 64, 24, 24), (7, 7))
    assert torch.allclose(pool(hidden, 61).tokens, ref.flatten(2).transpose(1, 2), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_baselines_keep_dtype(dtype):
    hidden, _, _ = golden_inputs(dtype)
    for out in (keep_all(hidden), random_keep(hidden, 20), pool(hidden, 64)):
        assert out.tokens.dtype == dtype and torch.isfinite(out.tokens).all()


def test_baseline_bad_input():
    hidden, _, _ = synthetic_inputs(b=1, n=64)
    for fn in (lambda k: random_keep(hidden, k), lambda k: pool(hidden, k)):
        for k in (0, -1, 65):
            with pytest.raises(ValueError, match="k"):
                fn(k)
    with pytest.raises(ValueError, match="square"):
        pool(synthetic_inputs(b=1, n=10)[0], 4)
    bad = hidden.clone()
    bad[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="hidden"):
        keep_all(bad)


def _vision_side(name: str) -> bool:
    """Configs ``compress`` runs: neither an in-LLM method nor one that selects after the projector."""
    config = load_config(name)
    qwen = getattr(config, "by_ratio", False)  # Qwen2.5-VL's ratio budgets are not LLaVA configs
    return method_of(config).stage != "llm" and not selects_after_projector(config) and not qwen


@pytest.mark.parametrize("name", [n for n in available_configs() if _vision_side(n)])
def test_dispatch_every_config(name):
    config = load_config(name)
    hidden, cls_attn, keys = golden_inputs()
    text = torch.randn(3, 576, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = compress(hidden, cls_attn, keys, config, text if needs_text(config) else None)
    assert out.tokens.dtype == hidden.dtype and torch.isfinite(out.tokens).all()
    keep = getattr(config, "keep", 0)
    budget = {"none": 576, "random": keep, "pool": keep, "vispruner": keep}
    if config.method == "visionzip":
        budget["visionzip"] = config.dominant + config.contextual
        assert torch.equal(out.tokens, visionzip(hidden, cls_attn, keys, config.dominant, config.contextual).tokens)
    if config.method == "sparsezip":
        from sparsezip_lmms.budgets import max_visual_tokens

        budget["sparsezip"] = max_visual_tokens(config, 576)
        ref = sparsezip(hidden, cls_attn, keys, config, text if needs_text(config) else None)
        assert torch.equal(out.tokens, ref.tokens)
    assert (out.counts <= budget[config.method]).all()
    assert needs_scoring_inputs(config) == (config.method in ("visionzip", "sparsezip", "vispruner"))


def test_dispatch_rejects_other_configs():
    hidden, cls_attn, keys = golden_inputs()
    with pytest.raises(ValueError, match="config"):
        compress(hidden, cls_attn, keys, load_config("sparsevlm_64"))
    for name in ("sparsevlm2_64", "fastv_64"):
        with pytest.raises(ValueError, match="prunes inside the LLM prefill"):
            compress(hidden, cls_attn, keys, load_config(name))
    for name in ("divprune_64", "cdpruner_64"):  # they select among the projected tokens
        with pytest.raises(ValueError, match="selects among the projected tokens"):
            compress(hidden, cls_attn, keys, load_config(name))
    with pytest.raises(ValueError, match="config"):
        compress(hidden, cls_attn, keys, {"method": "visionzip"})
    with pytest.raises(ValueError, match="cls_attn"):
        compress(hidden, None, keys, load_config("visionzip_64"))
