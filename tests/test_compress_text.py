"""Question relevance through the LLaVA projector's weights (vision and LLM comparison spaces)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsezip_lmms.compress import projector_pull_back, text_relevance, zscore


class Projector(nn.Module):
    """Same structure as transformers' LlavaMultiModalProjector."""

    def __init__(self, c: int, d: int, bias: bool = True, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.linear_1 = nn.Linear(c, d, bias=bias)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(d, d, bias=bias)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


def _inputs(b=2, n=12, c=8, lt=5, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    patches = torch.randn(b, n, c, generator=g, dtype=torch.float64)
    text = torch.randn(b, lt, d, generator=g, dtype=torch.float64)
    mask = torch.ones(b, lt, dtype=torch.bool)
    mask[1, 3:] = False
    return patches, text, mask


def _mean_cos(p, q, mask):
    cos = F.cosine_similarity(p.unsqueeze(2), q.unsqueeze(1), dim=-1)  # [B, N, Lt]
    m = mask.unsqueeze(1).double()
    return (cos * m).sum(-1) / m.sum(-1)


def test_vision_space_definition():
    proj = Projector(8, 16).double()
    patches, text, mask = _inputs()
    rel = text_relevance(patches, text, mask, proj, space="vision")
    w1, w2, b2 = proj.linear_1.weight, proj.linear_2.weight, proj.linear_2.bias
    q = (text - b2) @ w2 @ w1  # W1ᵀ W2ᵀ (t − b2), row-vector form
    assert rel.shape == (2, 12) and rel.dtype == torch.float64
    assert torch.allclose(rel, _mean_cos(patches, q.detach(), mask), atol=1e-12)


def test_llm_space_definition():
    proj = Projector(8, 16).double()
    patches, text, mask = _inputs()
    rel = text_relevance(patches, text, mask, proj, space="llm")
    with torch.no_grad():
        ref = _mean_cos(proj(patches), text, mask)
    assert torch.allclose(rel, ref, atol=1e-12)


def test_pull_back_inverts_orthogonal_linear_part():
    """With orthogonal W1, W2 the transposes invert the linear part: the matching patch wins."""
    c = 16
    proj = Projector(c, c).double()
    with torch.no_grad():
        for lin, seed in ((proj.linear_1, 1), (proj.linear_2, 2)):
            q, _ = torch.linalg.qr(torch.randn(c, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
            lin.weight.copy_(q)
    patches = torch.randn(1, 30, c, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for j in (0, 7, 29):
        query = (patches[:, j] @ proj.linear_1.weight.T @ proj.linear_2.weight.T + proj.linear_2.bias).detach()
        rel = text_relevance(patches, query.unsqueeze(1), torch.ones(1, 1, dtype=torch.bool), proj, "vision")
        assert int(rel.argmax()) == j and torch.isclose(rel[0, j], torch.tensor(1.0, dtype=torch.float64))


def test_masked_tokens_are_ignored_and_empty_mask_gives_zeros():
    proj = Projector(8, 16).double()
    patches, text, mask = _inputs()
    noisy = text.clone()
    noisy[1, 3:] = 1e3  # padding content must not matter
    for space in ("vision", "llm"):
        a = text_relevance(patches, text, mask, proj, space)
        b = text_relevance(patches, noisy, mask, proj, space)
        assert torch.allclose(a, b, atol=1e-12)
        empty = text_relevance(patches, text, torch.zeros_like(mask), proj, space)
        assert (empty == 0).all()


def test_real_llava_projector_and_no_bias():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2),
        text_config=LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64),
    )
    proj = LlavaMultiModalProjector(config).double()
    patches, text, mask = _inputs()
    for space in ("vision", "llm"):
        rel = text_relevance(patches, text, mask, proj, space)
        assert rel.shape == (2, 12) and torch.isfinite(rel).all()
    nobias = Projector(8, 16, bias=False).double()
    assert torch.isfinite(text_relevance(patches, text, mask, nobias, "vision")).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    proj = Projector(8, 16).to(dtype)
    patches, text, mask = _inputs()
    for space in ("vision", "llm"):
        rel = text_relevance(patches.to(dtype), text.to(dtype), mask, proj, space)
        assert rel.dtype == torch.float32 and torch.isfinite(rel).all()
        ref = text_relevance(patches, text, mask, proj.double(), space)
        proj.to(dtype)
        assert torch.allclose(rel.double(), ref, atol=0.05)


@pytest.mark.parametrize("bias", [True, False])
def test_folded_pull_back_equals_the_two_transposes(bias):
    proj = Projector(8, 16, bias=bias).double()
    patches, text, mask = _inputs()
    pull_back = projector_pull_back(proj)
    assert pull_back.matrix.shape == (16, 8) and pull_back.matrix.dtype == torch.float64
    folded = text_relevance(patches, text, mask, proj, "vision", pull_back=pull_back)
    assert torch.allclose(folded, text_relevance(patches, text, mask, proj, "vision"), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_folded_pull_back_in_half_precision_is_float32(dtype):
    proj = Projector(8, 16).to(dtype)
    patches, text, mask = _inputs()
    pull_back = projector_pull_back(proj)
    assert pull_back.matrix.dtype == torch.float32
    rel = text_relevance(patches.to(dtype), text.to(dtype), mask, proj, "vision", pull_back=pull_back)
    ref = text_relevance(patches, text, mask, proj.double(), "vision")
    assert rel.dtype == torch.float32 and torch.allclose(rel.double(), ref, atol=0.02)


def test_bad_inputs():
    proj = Projector(8, 16).double()
    patches, text, mask = _inputs()
    with pytest.raises(ValueError, match="space"):
        text_relevance(patches, text, mask, proj, "pixels")
    with pytest.raises(ValueError, match="text_mask"):
        text_relevance(patches, text, mask.long(), proj)
    with pytest.raises(ValueError, match="text_mask"):
        text_relevance(patches, text, mask[:, :2], proj)
    with pytest.raises(ValueError, match="patch_hidden"):
        text_relevance(patches[0], text, mask, proj)
    with pytest.raises(ValueError, match="projector"):
        text_relevance(patches, text, mask, nn.Linear(8, 16))
    with pytest.raises(ValueError, match="projector"):
        text_relevance(patches[..., :4], text, mask, proj)
    with pytest.raises(ValueError, match="pull_back"):
        text_relevance(patches, text, mask, proj, "llm", pull_back=projector_pull_back(proj))
    with pytest.raises(ValueError, match="pull_back"):
        text_relevance(patches, text, mask, proj, "vision", pull_back=projector_pull_back(Projector(4, 16).double()))


def test_zscore():
    x = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]], dtype=torch.float64)
    z = zscore(x, dim=1)
    assert torch.allclose(z[0], torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64) * (1.5**0.5))
    assert (z[1] == 0).all()


def test_seed_key_relevance_definition_and_padding():
    from sparsezip_lmms.compress import seed_key_relevance, seed_zscore

    g = torch.Generator().manual_seed(0)
    keys = torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    text = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)  # D = 3 < Ck = 5: zero-padded
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    rel = seed_key_relevance(keys, text, mask)
    assert rel.dtype == torch.float32 and rel.shape == (2, 7)
    for b in range(2):
        t = text[b][mask[b]].mean(0)
        t = torch.nn.functional.pad(t / t.norm(), (0, 2))
        expect = (keys[b] / keys[b].norm(dim=-1, keepdim=True)) @ t
        assert torch.allclose(rel[b].double(), expect, atol=1e-6)
    x = torch.randn(3, 10, generator=g, dtype=torch.float64)
    z = seed_zscore(x, dim=1)
    assert torch.allclose(z.std(1), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="keys"):
        seed_key_relevance(keys[0], text)
