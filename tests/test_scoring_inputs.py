"""scoring_inputs: one partial CLIP forward, exact hidden states, CLS row and keys; hooks removed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsezip_lmms.compress import visionzip
from sparsezip_lmms.llava import ScoringInputs, scoring_inputs

from _compress_helpers import SETTINGS, cases, load_clip, rel_err


@pytest.fixture(scope="module")
def clip64():
    return load_clip().double()


@pytest.fixture(scope="module")
def captured64(clip64):
    return scoring_inputs(clip64, cases()["pixel_values"].double())


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_pre_hooks) + len(m._forward_hooks) + len(getattr(m, "_forward_pre_hooks_with_kwargs", {}))
        for m in model.modules()
    )


def test_matches_fixture_tensors(captured64):
    gold = cases()
    assert isinstance(captured64, ScoringInputs)
    assert captured64.hidden.shape == (3, 577, 64)
    assert captured64.cls_attn.shape == (3, 4, 577)
    assert captured64.keys.shape == (3, 577, 16)
    assert rel_err(captured64.hidden, gold["hidden_minus2"]) <= 1e-12
    assert rel_err(captured64.cls_attn, gold["cls_attn_row"]) <= 1e-12
    assert rel_err(captured64.keys, gold["keys_mean"]) <= 1e-12
    assert torch.allclose(captured64.cls_attn.sum(-1), torch.ones(3, 4, dtype=torch.float64))


@pytest.mark.parametrize("dominant,contextual", SETTINGS)
def test_visionzip_parity_through_clip(captured64, dominant, contextual):
    gold = cases()
    s = captured64
    out = visionzip(s.hidden, s.cls_attn, s.keys, dominant, contextual)
    assert torch.equal(out.index[:, :dominant], gold[f"dominant_idx_D{dominant}_C{contextual}"])
    assert rel_err(out.tokens, gold[f"features_D{dominant}_C{contextual}"]) <= 1e-5


def test_hidden_equals_transformers_hidden_states(clip64, captured64):
    px = cases()["pixel_values"].double()
    with torch.no_grad():
        ref = clip64(px, output_hidden_states=True).hidden_states
    assert torch.equal(captured64.hidden, ref[-2])
    for layer in (3, -24):  # other layers: the first image is enough (batch 1 vs 3: BLAS rounding)
        assert rel_err(scoring_inputs(clip64, px[:1], layer=layer).hidden, ref[layer][:1]) <= 1e-13


def test_no_hooks_left_and_later_layers_not_run(clip64):
    before = _hook_count(clip64)
    calls = []
    layers = clip64.encoder.layers
    handles = [layers[i].register_forward_pre_hook(lambda *a, i=i: calls.append(i)) for i in range(24)]
    try:
        scoring_inputs(clip64, cases()["pixel_values"][:1].double(), layer=3)
    finally:
        for h in handles:
            h.remove()
    assert calls == [0, 1, 2]  # hidden_states[3] is the output of layer 2: nothing after it ran
    assert _hook_count(clip64) == before


def test_hook_removed_on_error(clip64):
    before = _hook_count(clip64)
    with pytest.raises(ValueError):  # wrong image size: raised inside the forward
        scoring_inputs(clip64, torch.zeros(1, 3, 224, 224, dtype=torch.float64))
    assert _hook_count(clip64) == before

    def boom(*args):
        raise RuntimeError("boom")

    handle = clip64.encoder.layers[1].register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):  # fails mid-way, after the capture hook is set
            scoring_inputs(clip64, cases()["pixel_values"][:1].double(), layer=3)
    finally:
        handle.remove()
    assert _hook_count(clip64) == before


def test_float32_model():
    model = load_clip()  # float32
    gold = cases()
    s = scoring_inputs(model, gold["pixel_values"][:1])
    assert s.hidden.dtype == torch.float32 and s.cls_attn.dtype == torch.float32
    assert rel_err(s.hidden, gold["hidden_minus2"][:1]) <= 1e-4
    out = visionzip(s.hidden, s.cls_attn, s.keys, 54, 10)
    assert rel_err(out.tokens, gold["features_D54_C10"][:1]) <= 1e-3


def test_wrappers_accepted(clip64):
    px = cases()["pixel_values"][:1].double()
    ref = scoring_inputs(clip64, px, layer=2)

    class Wrapper(nn.Module):  # transformers 4.x layout: model.vision_model.{embeddings, ...}
        def __init__(self, inner):
            super().__init__()
            self.vision_model = inner

    s = scoring_inputs(Wrapper(clip64), px, layer=2)
    assert torch.equal(s.hidden, ref.hidden) and torch.equal(s.cls_attn, ref.cls_attn)


def test_bad_arguments(clip64):
    px = cases()["pixel_values"][:1].double()
    with pytest.raises(ValueError, match="vision_model"):
        scoring_inputs(nn.Linear(2, 2), px)
    for layer in (0, 25, -25, 1.5):
        with pytest.raises(ValueError, match="layer"):
            scoring_inputs(clip64, px, layer=layer)
    with pytest.raises(ValueError, match="pixel_values"):
        scoring_inputs(clip64, px[0])
