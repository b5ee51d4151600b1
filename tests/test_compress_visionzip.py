"""VisionZip: parity with the official implementation's golden outputs, conventions, edge cases."""

from __future__ import annotations

import pytest
import torch

from sparsezip_lmms.compress import Compressed, visionzip

from _compress_helpers import SETTINGS, cases, golden_inputs, rel_err, synthetic_inputs


@pytest.mark.parametrize("dominant,contextual", SETTINGS)
def test_parity_float64_direct_inputs(dominant, contextual):
    gold = cases()
    hidden, cls_attn, keys = golden_inputs(torch.float64)
    out = visionzip(hidden, cls_attn, keys, dominant, contextual)
    expected = gold[f"features_D{dominant}_C{contextual}"]
    assert out.tokens.dtype == torch.float64
    assert out.tokens.shape == expected.shape
    assert torch.equal(out.index[:, :dominant], gold[f"dominant_idx_D{dominant}_C{contextual}"])
    assert (out.index[:, dominant:] == -1).all()
    assert out.valid.all()
    assert rel_err(out.tokens, expected) <= 1e-5
    # per image too, not only overall
    for b in range(expected.shape[0]):
        assert rel_err(out.tokens[b], expected[b]) <= 1e-5


@pytest.mark.parametrize("dominant,contextual", SETTINGS)
def test_parity_float32_loose(dominant, contextual):
    gold = cases()
    hidden, cls_attn, keys = golden_inputs(torch.float32)
    out = visionzip(hidden, cls_attn, keys, dominant, contextual)
    assert out.tokens.dtype == torch.float32
    assert out.tokens.shape == gold[f"features_D{dominant}_C{contextual}"].shape
    # no exact-index requirement in float32 (near ties may flip); features close overall
    assert rel_err(out.tokens, gold[f"features_D{dominant}_C{contextual}"]) <= 1e-3


def test_budgets_and_cls_first():
    hidden, cls_attn, keys = golden_inputs()
    for dominant, contextual in ((54, 10), (108, 20), (162, 30)):
        out = visionzip(hidden, cls_attn, keys, dominant, contextual)
        assert out.tokens.shape[1] == dominant + contextual
        assert (out.index[:, 0] == 0).all()  # CLS kept, first
        kept = out.index[:, :dominant]
        assert (kept[:, 1:] > kept[:, :-1]).all()  # ascending source order
        assert torch.equal(out.tokens[:, 0], hidden[:, 0])
        # kept tokens are copies of the source rows
        assert torch.equal(out.tokens[:, :dominant], hidden.gather(1, kept.unsqueeze(-1).expand(-1, -1, 64)))
        assert torch.equal(out.counts, torch.full((3,), dominant + contextual))


def test_dominant_are_top_attention_patches():
    hidden, cls_attn, keys = synthetic_inputs(b=2, n=49)
    out = visionzip(hidden, cls_attn, keys, dominant=8, contextual=4)
    score = cls_attn[:, :, 1:].sum(1)
    expected = score.topk(7, dim=1).indices.sort(dim=1).values + 1
    assert torch.equal(out.index[:, 1:8], expected)


def test_contextual_zero():
    hidden, cls_attn, keys = golden_inputs()
    out = visionzip(hidden, cls_attn, keys, 54, 0)
    gold = cases()
    assert out.tokens.shape == (3, 54, 64)
    assert torch.equal(out.index, gold["dominant_idx_D54_C10"])
    assert out.kept.all()


def test_contextual_is_target_plus_mean():
    # tiny hand-checkable case: N = 4 patches, 1 dominant patch, 2 contextual tokens
    hidden = torch.arange(5 * 2, dtype=torch.float64).view(1, 5, 2)
    cls_attn = torch.tensor([[[0.2, 0.1, 0.5, 0.1, 0.1]]], dtype=torch.float64)  # patch 2 dominant
    keys = torch.tensor([[[0, 1], [1, 0], [0, 1], [0.9, 0.1], [0.1, 0.9]]], dtype=torch.float64)
    out = visionzip(hidden, cls_attn, keys, dominant=2, contextual=2)
    # remaining positions 1, 3, 4 -> R = 3, step = 1, targets = ranks 0, 1 -> positions 1, 3
    # position 4 (key ~[0.1, 0.9]) is closer to position 3's key [0.9, 0.1]? cos = 0.22 vs 0.11 -> 3
    assert out.index.tolist() == [[0, 2, -1, -1]]
    assert torch.equal(out.tokens[0, 2], hidden[0, 1])  # nothing assigned: its own hidden state
    assert torch.equal(out.tokens[0, 3], hidden[0, 3] + hidden[0, 4])


def test_contextual_larger_than_remaining():
    hidden, cls_attn, keys = synthetic_inputs(b=2, n=9)
    out = visionzip(hidden, cls_attn, keys, dominant=7, contextual=5)  # R = 3 < 5
    assert out.tokens.shape[1] == 7 + 3
    remaining = [sorted(set(range(10)) - set(row)) for row in out.index[:, :7].tolist()]
    for b in range(2):  # every remaining token is its own contextual token
        assert torch.equal(out.tokens[b, 7:], hidden[b, remaining[b]])


def test_dominant_all_keeps_everything():
    hidden, cls_attn, keys = synthetic_inputs(b=2, n=16)
    out = visionzip(hidden, cls_attn, keys, dominant=17, contextual=4)
    assert torch.equal(out.tokens, hidden)
    assert torch.equal(out.index, torch.arange(17).expand(2, 17))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    hidden, cls_attn, keys = golden_inputs(dtype)
    out = visionzip(hidden, cls_attn, keys, 54, 10)
    assert out.tokens.dtype == dtype
    assert torch.isfinite(out.tokens).all()
    ref = visionzip(*golden_inputs(torch.float64), 54, 10)
    assert rel_err(out.tokens, ref.tokens) < 0.05


def test_batch_invariance():
    hidden, cls_attn, keys = golden_inputs()
    full = visionzip(hidden, cls_attn, keys, 54, 10)
    for b in range(3):
        one = visionzip(hidden[b : b + 1], cls_attn[b : b + 1], keys[b : b + 1], 54, 10)
        assert torch.equal(one.index, full.index[b : b + 1])
        assert torch.allclose(one.tokens, full.tokens[b : b + 1], rtol=1e-12, atol=1e-12)


def test_result_type():
    out = visionzip(*synthetic_inputs(b=2, n=16), dominant=5, contextual=2)
    assert isinstance(out, Compressed)
    assert out.valid.dtype == torch.bool and out.index.dtype == torch.long
    assert [t.shape[0] for t in out.unpad()] == [7, 7]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"dominant": 0}, "dominant"),
        ({"dominant": -3}, "dominant"),
        ({"dominant": 18}, "dominant"),
        ({"dominant": 4.0}, "dominant"),
        ({"dominant": True}, "dominant"),
        ({"contextual": -1}, "contextual"),
    ],
)
def test_bad_budgets(kwargs, match):
    args = {"dominant": 4, "contextual": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        visionzip(*synthetic_inputs(b=1, n=16), **args)


def test_bad_shapes_and_values():
    hidden, cls_attn, keys = synthetic_inputs(b=2, n=16)
    with pytest.raises(ValueError, match="hidden"):
        visionzip(hidden[0], cls_attn, keys, 4, 2)
    with pytest.raises(ValueError, match="cls_attn"):
        visionzip(hidden, cls_attn[:, :, 1:], keys, 4, 2)
    with pytest.raises(ValueError, match="cls_attn"):
        visionzip(hidden, cls_attn[:1], keys, 4, 2)
    with pytest.raises(ValueError, match="keys"):
        visionzip(hidden, cls_attn, keys[:, 1:], 4, 2)
    with pytest.raises(ValueError, match="keys"):
        visionzip(hidden, cls_attn, None, 4, 2)
    with pytest.raises(ValueError, match="hidden"):
        visionzip(hidden.long(), cls_attn, keys, 4, 2)
    for name, t in (("hidden", hidden), ("cls_attn", cls_attn), ("keys", keys)):
        bad = t.clone()
        bad[0, 0, 0] = float("nan") if name != "keys" else float("inf")
        args = {"hidden": hidden, "cls_attn": cls_attn, "keys": keys, name: bad}
        with pytest.raises(ValueError, match=name):
            visionzip(**args, dominant=4, contextual=2)
