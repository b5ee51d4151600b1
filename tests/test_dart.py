"""DART through the one pruning decoder against the official code (tests/data/dart, from ZichenWen1/DART
5a19452 run in float64 through the real LLaVA generate; see its README).

The fixtures were made with float64 RMSNorm statistics and RoPE tables; the tiny LLaMA here gets the same
numerics by swapping its norm and rotary modules for float64 ones (this test's model instance only).
Every decision must match exactly: pivots and their processing order, each pivot's picks, kept tokens,
prefill positions of every layer, cache lengths, decode positions, greedy ids; logits within 1e-10.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from sparsezip_lmms.compress.dart import DartRule, dart_picks, pivot_processing_order
from sparsezip_lmms.config import ConfigError, load_config
from sparsezip_lmms.pruning import pruned_generate
from _tiny_llama import left_padded_prompts, tiny_llama

DATA = Path(__file__).parent / "data" / "dart"
NEW_TOKENS = 6
SAMPLES = ("s0", "s1", "m0")
SETTINGS = ("K2_M64_P4x4", "K2_M128_P4x4", "K2_M192_P4x4", "K3_M128_P4x4", "K2_M128_P2x6", "K2_r0.778_P4x4")


class _Float64Norm(nn.Module):
    """RMSNorm with its statistics in the input's dtype (float64 here), the fixtures' numerics."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.weight = norm.weight
        self.eps = norm.variance_epsilon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class _Float64Rope(nn.Module):
    """Rotary tables computed in float64, inverse frequencies included."""

    def __init__(self, rope: nn.Module):
        super().__init__()
        dim, theta = 2 * rope.inv_freq.numel(), rope.config.rope_parameters["rope_theta"]
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor):
        freqs = position_ids[..., None].to(torch.float64) * self.inv_freq.to(x.device)  # [B, L, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


@pytest.fixture(scope="module")
def dart():
    cases = load_file(str(DATA / "cases.safetensors"))
    meta = json.loads((DATA / "meta.json").read_text())
    model = tiny_llama(DATA / "llama32", torch.float64)
    decoder = model.model
    decoder.norm = _Float64Norm(decoder.norm)
    decoder.rotary_emb = _Float64Rope(decoder.rotary_emb)
    for layer in decoder.layers:
        layer.input_layernorm = _Float64Norm(layer.input_layernorm)
        layer.post_attention_layernorm = _Float64Norm(layer.post_attention_layernorm)
    return cases, meta, model


def _batch(cases, meta, samples):
    """Left-padded (inputs_embeds [B, L, d], attention_mask [B, L], image_start [B], visual counts [B])."""
    counts = [meta["samples"][s]["v_token_num"] for s in samples]
    return (*left_padded_prompts(cases, meta, samples), counts)


def _config(setting_meta):
    ratio = float(setting_meta["reduction_ratio"])
    return load_config({
        "method": "dart", "layer": setting_meta["K"], "max_tokens": setting_meta["max_num_trunction"],
        "reduction_ratio": ratio, "pivot_image": setting_meta["pivot_image_token"],
        "pivot_text": setting_meta["pivot_text_token"],
    })  # fmt: skip


def _valid(row: torch.Tensor) -> torch.Tensor:
    return row[row >= 0]


def _check(out, row, cases, case, case_meta):
    k = case_meta["K"]
    assert out.pruning_layers == (k - 1,) and out.method == "dart"
    assert _valid(out.pivots[0][row]).tolist() == case_meta["pivot_order"]
    assert _valid(out.kept[0][row]).equal(cases[f"{case}/kept_span_ids"])
    for layer in range(6):
        assert _valid(out.positions[layer][row]).equal(cases[f"{case}/prefill_pos/layer{layer:02d}"]), layer
    assert out.cache_lengths[row].tolist() == case_meta["cache_len_after_prefill"]
    assert out.decode_positions[row].tolist() == case_meta["decode_pos"]
    assert out.sequences[row].tolist() == case_meta["greedy_ids"]
    logits, golden = out.prefill_logits[row], cases[f"{case}/logits_prefill_last"]
    assert float((logits - golden).abs().max() / golden.abs().max()) <= 1e-10
    norms, golden_norms = _valid(out.scores[0][row].nan_to_num(-1.0)), cases[f"{case}/l1_image"]
    assert torch.allclose(norms, golden_norms, rtol=1e-12, atol=0)
    assert out.visual_tokens_per_layer[row, k:].unique().tolist() == [case_meta["n_kept_image"]]


@pytest.mark.parametrize("sample", SAMPLES)
def test_dart_parity_single_prompt(dart, sample):
    cases, meta, model = dart
    embeds, mask, starts, counts = _batch(cases, meta, [sample])
    for setting in meta["settings"]:
        case = f"{sample}/{setting['tag']}"
        out = pruned_generate(model, embeds, mask, starts, _config(setting), NEW_TOKENS, num_visual_tokens=counts)
        _check(out, 0, cases, case, meta["cases"][case])


def test_dart_parity_left_padded_batch(dart):
    """s0, s1 and m0 (a 256-token image) together: every row as if alone, at every setting."""
    cases, meta, model = dart
    embeds, mask, starts, counts = _batch(cases, meta, list(SAMPLES))
    for setting in meta["settings"]:
        out = pruned_generate(model, embeds, mask, starts, _config(setting), NEW_TOKENS, num_visual_tokens=counts)
        for row, sample in enumerate(SAMPLES):
            case = f"{sample}/{setting['tag']}"
            _check(out, row, cases, case, meta["cases"][case])


def test_pivot_order_is_the_recorded_official_order(dart):
    """The official processing order (CPython's set order) from the pivots in top-k order, for all 18 cases;
    ``topk`` and ``ascending`` are the other orders."""
    _, meta, _ = dart
    for case in meta["cases"].values():
        image, text = case["pivot_image"], case["pivot_text"]
        assert pivot_processing_order(image, text) == case["pivot_order"]
        assert pivot_processing_order(image, text, "topk") == image + text
        assert pivot_processing_order(image, text, "ascending") == sorted(image + text)


def test_other_pivot_orders_keep_other_tokens(dart):
    """The order matters (README: ascending changes the kept set in 18/18 cases): the ablation keys work."""
    cases, meta, model = dart
    embeds, mask, starts, counts = _batch(cases, meta, ["s0"])
    setting = meta["settings"][1]
    official = cases["s0/K2_M128_P4x4/kept_span_ids"]
    for order in ("ascending", "topk"):
        config = load_config({**_config(setting).model_dump(), "pivot_order": order})
        out = pruned_generate(model, embeds, mask, starts, config, 1, num_visual_tokens=counts)
        assert out.kept[0][0].numel() == official.numel()
        if order == "ascending":
            assert not _valid(out.kept[0][0]).equal(official)


def test_budget_counts_are_the_official_ones():
    assert [dart_picks(576, 4, 4, m, 0.5) for m in (64, 128, 192)] == [8, 16, 24]
    assert dart_picks(576, 4, 4, None, 0.778) == 15 and dart_picks(256, 4, 4, None, 0.778) == 7
    assert dart_picks(2000, 4, 4, 64, 0.5, family="llava_next") == 40  # NeXT: min(320, N - 4) // 8
    assert dart_picks(200, 4, 4, 64, 0.5, family="llava_next") == 24
    assert dart_picks(192, 4, 4, 128, 0.778, family="qwen2_5_vl") == 5  # Qwen: int(N (1 - r) / P), M ignored
    assert dart_picks(80, 4, 4, None, 0.8, family="qwen2_5_vl") == 1  # int(1.9999999999999996)
    rule = DartRule(2, 64, 0.889, 4, 4)
    assert rule.keep_count(0, 576) == 68 and rule.for_family("llava_next").keep_count(0, 2000) == 324


def test_bad_settings_are_refused_by_name(dart):
    for bad, key in (
        ({"layer": 0}, "layer"),
        ({"pivot_image": 0, "pivot_text": 0}, "pivot_image"),
        ({"reduction_ratio": 1.0}, "reduction_ratio"),
        ({"pivot_order": "random"}, "pivot_order"),
        ({"kep": 3}, "kep"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_config("dart_64", bad)
    cases, meta, model = dart
    embeds, mask, starts, counts = _batch(cases, meta, ["m0"])
    with pytest.raises(ValueError, match="exceed the 252 visual tokens"):  # 8 x 32 > 256 - 4 (official: crash)
        pruned_generate(model, embeds, mask, starts, load_config("dart_64", {"max_tokens": 256}), 1, num_visual_tokens=counts)
    with pytest.raises(ValueError, match="pivot_text=40"):
        pruned_generate(model, embeds, mask, starts, load_config("dart_64", {"pivot_text": 40}), 1, num_visual_tokens=counts)
    with pytest.raises(ConfigError, match="do not exist"):
        pruned_generate(model, embeds, mask, starts, load_config("dart_64", {"layer": 7}), 1, num_visual_tokens=counts)
