"""The one pruning decoder against the official FastV and SparseVLM v2.0 codes, and its deferred mode.

Fixtures (tests/data/fastv, tests/data/sparsevlm2; the tiny 32-layer LLaMAs rebuilt by tests/_tiny_llama.py):
what the official codes did, in float64, on prompts laid out as LLaVA-1.5 presents them. Every discrete
decision (kept tokens, priority heads, positions, cache lengths, decode positions, greedy ids) must
match exactly; prefill logits within 1e-3 relative (transformers computes RMSNorm statistics and RoPE
tables in float32, the fixtures in float64). FastV's doubled cache of layer K-1 is compared halved.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparsezip_lmms.compress.in_llm import DeferredRule, FastVRule, SparseVLM2Rule, rope_bias, rule_for_config
from sparsezip_lmms.config import ConfigError, load_config
from sparsezip_lmms.pruning import pruned_generate
from _tiny_llama import left_padded_prompts, tiny_llama

DATA = Path(__file__).parent / "data"
NEW_TOKENS = 6
LOGIT_RTOL = 1e-3
SCHEDULES = {64: [66, 34, 20], 128: [238, 108, 60], 192: [300, 200, 118]}


def _load(name):
    return load_file(str(DATA / name / "cases.safetensors")), json.loads((DATA / name / "meta.json").read_text())


@pytest.fixture(scope="module")
def fastv():
    cases, meta = _load("fastv")
    return cases, meta, tiny_llama(DATA / "fastv" / "llama32", torch.float64)


@pytest.fixture(scope="module")
def sparsevlm2():
    cases, meta = _load("sparsevlm2")
    return cases, meta, tiny_llama(DATA / "sparsevlm2" / "llama32", torch.float64)


_batch = left_padded_prompts  # (inputs_embeds [B, L, d], attention_mask [B, L], image_start [B])


def _valid(row: torch.Tensor) -> torch.Tensor:
    return row[row >= 0]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


# --------------------------------------------------------------------------- FastV


def _fastv_config(case_meta, span):
    return load_config({"method": "fastv", "layer": case_meta["K"], "ratio": float(case_meta["R"]), "span": span})


def _check_fastv(out, row, cases, case, case_meta):
    k = case_meta["K"]
    assert out.pruning_layers == (k - 1,) and out.method == "fastv"
    assert _valid(out.kept[0][row]).equal(cases[f"{case}/kept_rel"])
    for layer in range(32):
        assert _valid(out.positions[layer][row]).equal(cases[f"{case}/prefill_pos/layer{layer:02d}"]), layer
    official = list(case_meta["cache_len_after_prefill"])
    official[k - 1] //= 2  # the official layer K-1 stores its keys twice (exact copies)
    assert out.cache_lengths[row].tolist() == official
    assert out.decode_positions[row].tolist() == case_meta["decode_pos"]
    assert out.sequences[row].tolist() == case_meta["greedy_ids"]
    assert _rel(out.prefill_logits[row], cases[f"{case}/logits_prefill_last"]) <= LOGIT_RTOL
    assert _rel(_valid(out.scores[0][row]), cases[f"{case}/scores"]) <= 1e-4


FASTV_CASES = [f"{s}/{k}" for s in ("s0", "s1", "q0") for k in ("K2_R0.5", "K3_R0.5", "K2_R0.1112", "K3_R0.3")]


@pytest.mark.parametrize("case", FASTV_CASES)
def test_fastv_parity_single_prompt(fastv, case):
    cases, meta, model = fastv
    case_meta = meta["cases"][case]
    sample = case_meta["sample"]
    embeds, mask, starts = _batch(cases, meta, [sample])
    # the real image span reproduces s0 and s1; q0 (28 system tokens) needs the official fixed span 35..610
    spans = ["fixed"] if sample == "q0" else ["image", "fixed"]
    for span in spans:
        out = pruned_generate(model, embeds, mask, starts, _fastv_config(case_meta, span), NEW_TOKENS)
        _check_fastv(out, 0, cases, case, case_meta)


def test_fastv_real_span_differs_from_the_official_span_on_q0(fastv):
    """q0's image starts at 28: the official code scores positions 35..610 (7 text tokens, not 7 patches)."""
    cases, meta, model = fastv
    case_meta = meta["cases"]["q0/K2_R0.5"]
    embeds, mask, starts = _batch(cases, meta, ["q0"])
    out = pruned_generate(model, embeds, mask, starts, _fastv_config(case_meta, "image"), NEW_TOKENS)
    assert not _valid(out.kept[0][0]).equal(cases["q0/K2_R0.5/kept_rel"])
    assert out.positions[2][0][:35].tolist() == list(range(28)) + _valid(out.positions[2][0])[28:35].tolist()
    assert (out.kept[0][0] < 576).all() and out.visual_tokens_per_layer[0, 1] == 288  # patches only


@pytest.mark.parametrize("setting", ["K2_R0.5", "K3_R0.3"])
def test_fastv_parity_left_padded_batch(fastv, setting):
    cases, meta, model = fastv
    samples = ["s0", "s1", "q0"]
    embeds, mask, starts = _batch(cases, meta, samples)
    case_meta = meta["cases"][f"s0/{setting}"]
    out = pruned_generate(model, embeds, mask, starts, _fastv_config(case_meta, "fixed"), NEW_TOKENS)
    for row, sample in enumerate(samples):
        _check_fastv(out, row, cases, f"{sample}/{setting}", meta["cases"][f"{sample}/{setting}"])


def test_fastv_keeps_int_of_n_times_ratio(fastv):
    cases, meta, model = fastv
    embeds, mask, starts = _batch(cases, meta, ["s0"])
    for ratio, expected in ((0.3, 172), (0.1112, 64), (0.0816, 47), (0.198, 114), (0.3125, 180)):
        out = pruned_generate(model, embeds, mask, starts, load_config({"method": "fastv", "ratio": ratio}), 1)
        assert out.visual_tokens_per_layer[0, 1:].unique().tolist() == [expected]


def test_fastv_k1_and_layers_beyond_the_llm_are_refused(fastv):
    with pytest.raises(ConfigError, match="K >= 2"):
        load_config({"method": "fastv", "layer": 1})
    cases, meta, model = fastv
    embeds, mask, starts = _batch(cases, meta, ["s0"])
    with pytest.raises(ConfigError, match="do not exist"):
        pruned_generate(model, embeds, mask, starts, load_config({"method": "fastv", "layer": 40}), 1)


# --------------------------------------------------------------------------- SparseVLM v2.0


def _sparsevlm2_config(budget):
    return load_config(f"sparsevlm2_{budget}")


def _check_sparsevlm2(out, row, cases, meta, case):
    case_meta = meta["cases"][case]
    sample = case_meta["sample"]
    assert out.method == "sparsevlm2" and out.pruning_layers == (2, 6, 15)
    assert out.raters[row].tolist() == meta["samples"][sample]["rater_idx"]
    for stage, layer in enumerate((2, 6, 15)):
        prefix = f"{case}/L{layer}"
        assert _valid(out.kept[stage][row]).equal(cases[f"{prefix}/kept_span_ids"]), layer
        assert set(out.heads[stage][row].tolist()) == set(cases[f"{prefix}/priority_heads"].tolist()), layer
        assert _rel(_valid(out.scores[stage][row].nan_to_num(-1)), cases[f"{prefix}/scores"]) <= 1e-4
    for layer in range(32):
        assert _valid(out.positions[layer][row]).equal(cases[f"{case}/prefill_pos/layer{layer:02d}"]), layer
    assert out.cache_lengths[row].equal(cases[f"{case}/cache_len_after_prefill"])
    assert out.decode_positions[row].equal(cases[f"{case}/decode_pos"])
    assert out.sequences[row].tolist() == case_meta["greedy_ids"]
    assert out.visual_tokens_per_layer[row].equal(cases[f"{case}/visual_count_per_layer"])
    assert float(out.equal_tokens[row]) == float(cases[f"{case}/equal_tokens"])
    assert _rel(out.prefill_logits[row], cases[f"{case}/logits_prefill_last"]) <= LOGIT_RTOL


@pytest.mark.parametrize("budget", [64, 128, 192])
@pytest.mark.parametrize("sample", ["s0", "s1"])
def test_sparsevlm2_parity_single_prompt(sparsevlm2, sample, budget):
    cases, meta, model = sparsevlm2
    embeds, mask, starts = _batch(cases, meta, [sample])
    out = pruned_generate(model, embeds, mask, starts, _sparsevlm2_config(budget), NEW_TOKENS)
    _check_sparsevlm2(out, 0, cases, meta, f"{sample}/r{budget}")


@pytest.mark.parametrize("budget", [64, 192])
def test_sparsevlm2_parity_left_padded_batch(sparsevlm2, budget):
    cases, meta, model = sparsevlm2
    embeds, mask, starts = _batch(cases, meta, ["s1", "s0"])
    out = pruned_generate(model, embeds, mask, starts, _sparsevlm2_config(budget), NEW_TOKENS)
    _check_sparsevlm2(out, 0, cases, meta, f"s1/r{budget}")
    _check_sparsevlm2(out, 1, cases, meta, f"s0/r{budget}")


def test_rope_bias_is_the_official_term(sparsevlm2):
    """B from the layer's own rotary tables equals the official RoPE-only term on rater rows x visual span."""
    cases, meta, model = sparsevlm2
    for stage_case in ("s0/r64/L2", "s0/r64/L6", "s1/r128/L15"):
        sample = meta["samples"][stage_case.split("/")[0]]
        rows = torch.tensor(sample["rater_idx"]) + sample["text_token_start"]  # the raters' original position ids
        cols = cases[f"{stage_case}/span_pos_before"]
        positions = torch.cat([rows, cols])[None]  # [1, R + n]
        probe = torch.zeros(1, positions.shape[1], 160, dtype=torch.float64)
        cos, sin = model.model.rotary_emb(probe, position_ids=positions)  # [1, R + n, hd]
        r = rows.numel()
        bias = rope_bias(cos[0, :r], sin[0, :r], cos[0, r:], sin[0, r:], 8**-0.5)
        torch.testing.assert_close(bias, cases[f"{stage_case}/rope_bias_rows"], rtol=1e-5, atol=1e-6)


def test_sparsevlm2_refuses_a_non_positive_rope_term(fastv):
    """head_dim 16 with RoPE base 1e4 (the FastV tiny model): the term turns negative beyond distance 91."""
    cases, meta, model = fastv
    embeds, mask, starts = _batch(cases, meta, ["s0"])
    with pytest.raises(ValueError, match=r"RoPE-only term .* is not positive .* row\(s\) \[0\]"):
        pruned_generate(model, embeds, mask, starts, _sparsevlm2_config(64), 1)


def test_sparsevlm2_with_more_priority_heads_than_the_model_uses_all(sparsevlm2):
    cases, meta, model = sparsevlm2
    embeds, mask, starts = _batch(cases, meta, ["s0"])
    config = load_config("sparsevlm2_64", {"priority_heads": 32})
    out = pruned_generate(model, embeds, mask, starts, config, 1)
    assert all(sorted(h[0].tolist()) == list(range(20)) for h in out.heads)


# --------------------------------------------------------------------------- deferred pruning


def test_deferred_selection_of_fastvs_tokens_is_fastv(fastv):
    """The same kept tokens applied at layer K's input with original positions: FastV exactly."""
    cases, meta, model = fastv
    embeds, mask, starts = _batch(cases, meta, ["s0", "s1"])
    ref = pruned_generate(model, embeds, mask, starts, load_config({"method": "fastv", "layer": 3, "ratio": 0.3}), 5)
    keep = torch.zeros(2, 576, dtype=torch.bool)
    for row in range(2):
        keep[row, _valid(ref.kept[0][row])] = True
    config = load_config("visionzip_64", {"prune_layer": 3})
    out = pruned_generate(model, embeds, mask, starts, config, 5, visual_keep=keep)
    assert out.method == "deferred" and out.pruning_layers == (2,)
    assert out.sequences.equal(ref.sequences)
    assert out.cache_lengths.equal(ref.cache_lengths) and out.decode_positions.equal(ref.decode_positions)
    assert all(a.equal(b) for a, b in zip(out.positions, ref.positions, strict=True))
    assert out.kept[0].equal(ref.kept[0])
    torch.testing.assert_close(out.prefill_logits, ref.prefill_logits, rtol=1e-12, atol=1e-12)


def test_deferred_keep_everything_is_the_plain_model(fastv):
    cases, meta, model = fastv
    embeds, mask, starts = _batch(cases, meta, ["s1"])
    keep = torch.ones(1, 576, dtype=torch.bool)
    out = pruned_generate(model, embeds, mask, starts, DeferredRule(4), 4, visual_keep=keep)
    plain = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.sequences.equal(plain[:, -4:])
    logits = model(inputs_embeds=embeds, attention_mask=mask).logits[:, -1]
    torch.testing.assert_close(out.prefill_logits, logits, rtol=1e-10, atol=1e-10)


def test_deferred_contiguous_positions_and_per_row_counts(fastv):
    """Rows with different span lengths (deferred SparseZip's variable merged tokens): each keeps its own
    selection; contiguous positions renumber from layer L on, decoding continues at each layer's length."""
    cases, meta, model = fastv
    embeds, mask, starts = _batch(cases, meta, ["s0", "s1"])
    gen = torch.Generator().manual_seed(0)
    keep = torch.rand(2, 576, generator=gen) < 0.1
    counts = torch.tensor([576, 570])  # row 1: its last 6 "visual" tokens count as text
    config = load_config("sparsezip_64", {"prune_layer": 2, "prune_positions": "contiguous"})
    out = pruned_generate(model, embeds, mask, starts, config, 3, num_visual_tokens=counts, visual_keep=keep)
    for row, length in enumerate((638, 632)):
        k = int(keep[row, : counts[row]].sum())
        assert _valid(out.kept[0][row]).equal(torch.nonzero(keep[row, : counts[row]]).flatten())
        assert out.visual_tokens_per_layer[row].tolist() == [int(counts[row])] + [k] * 31
        pruned = length - int(counts[row]) + k
        assert out.cache_lengths[row].tolist() == [length, length] + [pruned] * 30
        assert _valid(out.positions[5][row]).tolist() == list(range(pruned))
        assert out.decode_positions[row, 0].tolist() == [length, length] + [pruned] * 30


def test_rule_for_config(fastv):
    assert isinstance(rule_for_config(load_config("fastv_64")), FastVRule)
    assert isinstance(rule_for_config(load_config("sparsevlm2_64")), SparseVLM2Rule)
    assert rule_for_config(load_config("confound/aware_inside")).pruning_layers == (2,)
    with pytest.raises(ValueError, match="does not prune inside the LLM"):
        rule_for_config(load_config("confound/aware_before"))  # prune_layer 0: before the LLM, as today
    cases, meta, model = fastv
    embeds, mask, starts = _batch(cases, meta, ["s0"])
    with pytest.raises(ValueError, match="visual_keep"):
        pruned_generate(model, embeds, mask, starts, load_config("visionzip_64", {"prune_layer": 1}), 1)


def test_sparsevlm2_rope_term_uses_float32_tables_in_half_precision(sparsevlm2, monkeypatch):
    """In bfloat16 the layer's rotary tables are rounded to 3 digits; the RoPE-only term is built from the
    same positions in float32 instead (the tables a float32 model would use)."""
    import copy

    import sparsezip_lmms.pruning.attention as attention

    cases, meta, model = sparsevlm2
    half = copy.deepcopy(model).to(torch.bfloat16)
    embeds, mask, starts = _batch(cases, meta, ["s0"])
    seen = []

    def recording(cos_rows, sin_rows, cos_cols, sin_cols, scaling):
        seen.append((cos_rows, sin_rows))
        return rope_bias(cos_rows, sin_rows, cos_cols, sin_cols, scaling)

    monkeypatch.setattr(attention, "rope_bias", recording)
    out = pruned_generate(half, embeds.to(torch.bfloat16), mask, starts, _sparsevlm2_config(64), 1)
    assert out.method == "sparsevlm2" and len(seen) == 3
    sample = meta["samples"]["s0"]
    rows = torch.tensor(sample["rater_idx"]) + sample["text_token_start"]  # the raters' position ids at layer 2
    probe = torch.zeros(1, 1, dtype=torch.float32)
    cos32, sin32 = half.model.rotary_emb(probe, position_ids=rows[None])  # [1, R, hd] float32
    cos, sin = seen[0]
    assert cos.dtype == torch.float32
    torch.testing.assert_close(cos, cos32[0], rtol=0, atol=0)
    torch.testing.assert_close(sin, sin32[0], rtol=0, atol=0)
    assert (cos32[0].to(torch.bfloat16).float() - cos32[0]).abs().max() > 1e-4  # what the bfloat16 tables would lose


def test_row_logits_match_repeated_float32_keys_without_copying_them_whole(monkeypatch):
    """The pruning layer's query-row logits: grouped-query heads share their key head, and the keys are
    converted to float32 chunk by chunk; the values are those of the repeated float32 keys."""
    import sparsezip_lmms.pruning.attention as attention
    from transformers.models.llama.modeling_llama import repeat_kv

    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 8, 3, 16, generator=generator).to(torch.bfloat16)  # [B, H, R, hd]
    keys = torch.randn(2, 2, 1000, 16, generator=generator).to(torch.bfloat16)  # [B, H_kv, L, hd]
    expected = query.float() @ repeat_kv(keys, 4).float().transpose(-1, -2)  # [B, H, R, L]
    monkeypatch.setattr(attention, "KEY_CHUNK_ELEMENTS", 2 * 2 * 16 * 300)  # 300-key chunks (the minimum is 256)
    got = attention.row_logits(query, keys)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_pruning_layer_computations_follow_the_layer_device(fastv):
    """With device_map over several devices each layer lives on one of them: what the decoder computes
    with a layer's own submodules runs where that layer's weights are (here: a layer moved to "meta",
    fed host tensors; shapes only)."""
    import copy

    from sparsezip_lmms.pruning.attention import keys_and_values, layer_device, query_attention

    _, _, model = fastv
    layer = copy.deepcopy(model.model.layers[1]).to("meta")
    assert layer_device(layer).type == "meta"
    batch, length, width = 2, 7, model.config.hidden_size
    hidden = torch.randn(batch, length, width, dtype=torch.float64)
    cos_sin = model.model.rotary_emb(hidden, position_ids=torch.arange(length).expand(batch, -1))
    from transformers.cache_utils import DynamicCache

    keys, values = keys_and_values(layer, DynamicCache(config=model.config), hidden, cos_sin)
    assert keys.device.type == "meta" and keys.shape[2] == length
    probs = query_attention(layer, hidden[:, -2:], cos_sin, keys, torch.tensor([[5, 6], [5, 6]]), torch.ones(batch, length, dtype=torch.bool))
    assert probs.device.type == "meta" and probs.shape == (batch, model.config.num_attention_heads, 2, length)
