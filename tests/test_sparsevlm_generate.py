"""End-to-end SparseVLM v1.5 generation against the golden outputs of the official code.

Fixtures (tests/data/sparsevlm): a random 32-layer LLaMA (hidden 64; its weights rebuilt from their
recipe by tests/_tiny_llama.py) and, for two samples x budgets 64/128/192, what the official code did: kept visual tokens at layers 2/6/15, the recycling draws,
greedy ids, prefill logits, per-layer cache lengths and decode positions, the "equal tokens" count.
The model runs here in float64 with transformers' own modules (RMSNorm statistics and RoPE tables in
float32), hence logits agree to ~1e-4 relative, not 1e-14; every discrete decision must match exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPVisionConfig, LlamaConfig, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration

from sparsezip_lmms.config import ConfigError, load_config
from sparsezip_lmms.pruning import PrunedOutput, pruned_generate
from _tiny_llama import tiny_llama

DATA = Path(__file__).parent / "data" / "sparsevlm"
SAMPLES = ("s0", "s1")
BUDGETS = (64, 128, 192)
LAYERS = (2, 6, 15)
NEW_TOKENS = 6
LOGIT_RTOL = 1e-3


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def cases() -> dict[str, torch.Tensor]:
    return load_file(str(DATA / "cases.safetensors"))


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((DATA / "meta.json").read_text())


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return tiny_llama(DATA / "llama32", torch.float64, attn_implementation="sdpa")


def _inputs(cases, meta, samples, pad_side="left"):
    """(inputs_embeds [B, L, d], attention_mask [B, L], image_start [B]) with padding on one side."""
    rows = [cases[f"{s}/inputs_embeds"] for s in samples]
    width = max(r.shape[0] for r in rows)
    embeds = torch.zeros(len(rows), width, rows[0].shape[1], dtype=torch.float64)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    starts = []
    for b, (sample, row) in enumerate(zip(samples, rows)):
        pad = width - row.shape[0] if pad_side == "left" else 0
        embeds[b, pad : pad + row.shape[0]] = row
        mask[b, pad : pad + row.shape[0]] = 1
        starts.append(pad + meta["samples"][sample]["v_token_start"])
    return embeds, mask, torch.tensor(starts)


def _noise(cases, samples, budget):
    """The official draws, one [B, n_max] tensor per pruning layer (zero padded)."""
    out = []
    for layer in LAYERS:
        rows = [cases[f"{s}/r{budget}/L{layer}/recycle_noise"] for s in samples]
        table = torch.zeros(len(rows), max(r.numel() for r in rows), dtype=torch.float64)
        for b, r in enumerate(rows):
            table[b, : r.numel()] = r
        out.append(table)
    return out


_RUNS: dict[tuple, PrunedOutput] = {}


def _run(model, cases, meta, samples, budget, noise=True, pad_side="left") -> PrunedOutput:
    """Generate NEW_TOKENS tokens for the given samples (one padded batch); memoized across tests."""
    key = (tuple(samples), budget, noise, pad_side)
    if key not in _RUNS:
        embeds, mask, starts = _inputs(cases, meta, samples, pad_side)
        draws = _noise(cases, samples, budget) if noise else None
        _RUNS[key] = pruned_generate(
            model, embeds, mask, starts, load_config(f"sparsevlm_{budget}"), NEW_TOKENS, draws
        )
    return _RUNS[key]


def _kept(out: PrunedOutput, stage: int, row: int) -> torch.Tensor:
    ids = out.kept[stage][row]
    return ids[ids >= 0]


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _check_against_official(out: PrunedOutput, row: int, cases, meta, sample: str, budget: int) -> None:
    prefix = f"{sample}/r{budget}/"
    for stage, layer in enumerate(LAYERS):
        assert _kept(out, stage, row).equal(cases[prefix + f"L{layer}/kept_span_ids"]), f"kept at layer {layer}"
        scores = out.scores[stage][row]
        scores = scores[~scores.isnan()]
        assert _rel_err(scores, cases[prefix + f"L{layer}/scores"]) < LOGIT_RTOL, f"scores at layer {layer}"
    assert out.sequences[row].tolist() == cases[prefix + "greedy_ids"][:NEW_TOKENS].tolist()
    assert _rel_err(out.prefill_logits[row], cases[prefix + "logits_prefill_last"]) < LOGIT_RTOL
    assert out.equal_tokens[row].item() == cases[prefix + "equal_tokens"].item()
    assert out.equal_tokens[row].item() == meta["cases"][f"{sample}/r{budget}"]["equal_tokens"]
    assert out.visual_tokens_per_layer[row].equal(cases[prefix + "visual_count_per_layer"])
    assert out.cache_lengths[row].equal(cases[prefix + "cache_len_after_prefill"])
    assert out.cache_lengths[row].equal(cases[prefix + "layer_input_len_prefill"])
    assert out.decode_positions[row].equal(cases[prefix + "decode_pos"])
    assert out.raters[row].tolist() == meta["samples"][sample]["rater_idx"]


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("sample", SAMPLES)
def test_parity_single_sample(model, cases, meta, sample, budget):
    out = _run(model, cases, meta, [sample], budget)
    assert out.sequences.shape == (1, NEW_TOKENS)
    assert out.prefill_logits.shape == (1, model.config.vocab_size)
    _check_against_official(out, 0, cases, meta, sample, budget)


@pytest.mark.parametrize("budget", BUDGETS)
def test_parity_left_padded_batch(model, cases, meta, budget):
    out = _run(model, cases, meta, list(SAMPLES), budget)
    for row, sample in enumerate(SAMPLES):
        _check_against_official(out, row, cases, meta, sample, budget)
        alone = _run(model, cases, meta, [sample], budget)
        assert out.sequences[row].equal(alone.sequences[0])
        torch.testing.assert_close(out.prefill_logits[row], alone.prefill_logits[0], rtol=1e-10, atol=1e-10)
        for stage in range(len(LAYERS)):
            assert _kept(out, stage, row).equal(_kept(alone, stage, 0))


def test_padding_side_does_not_matter(model, cases, meta):
    left = _run(model, cases, meta, list(SAMPLES), 64)
    right = _run(model, cases, meta, list(SAMPLES), 64, pad_side="right")
    assert left.sequences.equal(right.sequences)
    torch.testing.assert_close(left.prefill_logits, right.prefill_logits, rtol=1e-10, atol=1e-10)
    for a, b in zip(left.kept, right.kept):
        assert a.equal(b)


# --------------------------------------------------------------------------- own random draws


def test_own_draws_are_seeded_and_batch_invariant(model, cases, meta):
    first = _run(model, cases, meta, list(SAMPLES), 64, noise=False)
    embeds, mask, starts = _inputs(cases, meta, list(SAMPLES))
    second = pruned_generate(model, embeds, mask, starts, load_config("sparsevlm_64"), NEW_TOKENS)  # not memoized
    assert first.sequences.equal(second.sequences)
    assert all(a.equal(b) for a, b in zip(first.kept, second.kept))
    torch.testing.assert_close(first.prefill_logits, second.prefill_logits, rtol=0, atol=0)
    alone = _run(model, cases, meta, ["s1"], 64, noise=False)  # a sample draws the same numbers alone
    assert all(_kept(first, s, 1).equal(_kept(alone, s, 0)) for s in range(len(LAYERS)))
    assert first.sequences[1].equal(alone.sequences[0])
    # only the budget-64 layer-6 clustering has exact density ties: layer 2 does not depend on the draw
    for row, sample in enumerate(SAMPLES):
        assert _kept(first, 0, row).equal(cases[f"{sample}/r64/L2/kept_span_ids"])


@pytest.mark.parametrize("budget", (128, 192))
def test_own_draws_reproduce_tie_free_budgets(model, cases, meta, budget):
    out = _run(model, cases, meta, list(SAMPLES), budget, noise=False)
    for row, sample in enumerate(SAMPLES):
        _check_against_official(out, row, cases, meta, sample, budget)


# --------------------------------------------------------------------------- model variants


def test_bare_decoder_with_head_and_eager_layers(model, cases, meta):
    embeds, mask, starts = _inputs(cases, meta, ["s0"])
    config = load_config("sparsevlm_64")  # wide top-k margins: eager's float32 softmax cannot flip a choice
    draws = _noise(cases, ["s0"], 64)
    full = pruned_generate(model, embeds, mask, starts, config, 3, draws)
    bare = pruned_generate(model.model, embeds, mask, starts, config, 3, draws, lm_head=model.lm_head)
    assert full.sequences.equal(bare.sequences)
    torch.testing.assert_close(full.prefill_logits, bare.prefill_logits, rtol=0, atol=0)
    assert model.config._attn_implementation == "sdpa"  # left as configured
    with pytest.raises(ValueError, match="lm_head"):
        pruned_generate(model.model, embeds, mask, starts, config, 3, draws)

    eager = tiny_llama(DATA / "llama32", torch.float64, attn_implementation="eager")
    out = pruned_generate(eager, embeds, mask, starts, config, 3, draws)
    assert out.sequences.equal(full.sequences)
    assert all(a.equal(b) for a, b in zip(out.kept, full.kept))
    torch.testing.assert_close(out.prefill_logits, full.prefill_logits, rtol=1e-4, atol=1e-4)  # float32 softmax


def _tiny_gqa_model(attn: str) -> LlamaForCausalLM:
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(config, attn_implementation=attn, dtype=torch.float64)
    with torch.no_grad():  # peaked attention, so that scores have clear margins
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8.0)
    return model.eval()


def test_scores_equal_the_layers_attention_probabilities_gqa():
    """Rater rows x keys must equal what the layer's own (eager) attention computes over the full sequence."""
    sdpa, eager = _tiny_gqa_model("sdpa"), _tiny_gqa_model("eager")
    eager.load_state_dict(sdpa.state_dict())
    gen = torch.Generator().manual_seed(1)
    n_sys, n_vis, n_text = 5, 24, 7
    embeds = torch.randn(1, n_sys + n_vis + n_text, 32, generator=gen, dtype=torch.float64)
    config = load_config("sparsevlm_64", {"pruning_layers": [1, 2], "schedule": [10, 5]})
    out = pruned_generate(sdpa, embeds, None, torch.tensor([n_sys]), config, 2, num_visual_tokens=n_vis)

    with torch.no_grad():
        ref = eager(inputs_embeds=embeds, output_attentions=True)
    probs = ref.attentions[1][0].mean(0)  # [L, L], layer 1 saw the unpruned sequence
    rows = out.raters[0] + n_sys + n_vis
    expected = probs[rows][:, n_sys : n_sys + n_vis].mean(0)  # [24]
    torch.testing.assert_close(out.scores[0][0], expected, rtol=1e-5, atol=1e-8)
    assert _kept(out, 0, 0).equal(torch.sort(torch.topk(expected, 10).indices).values)
    # 14 deleted -> 5 clustered -> 1 recycled; then 6 deleted -> 2 clustered -> 1 recycled
    assert out.visual_tokens_per_layer[0].tolist() == [24, 11, 6, 6]
    assert out.cache_lengths[0].tolist() == [36, 36, 23, 18]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_pruning_layer_on_needed_rows_equals_the_whole_layer(attn, monkeypatch):
    """The pruning layer computed only at the rows the pruning keeps (system, kept, recycling inputs,
    text) gives what running the whole layer and pruning its output gives: a left-padded batch of two
    lengths, GQA, pruning at consecutive layers (a one-layer stage)."""
    import sparsezip_lmms.pruning.stages as stages

    model = _tiny_gqa_model(attn)
    gen = torch.Generator().manual_seed(3)
    n_vis = 24
    embeds = torch.randn(2, 5 + n_vis + 9, 32, generator=gen, dtype=torch.float64)
    mask = torch.ones(2, embeds.shape[1], dtype=torch.long)
    mask[1, :3] = 0  # row 1: 2 system tokens after 3 padding rows
    config = load_config("sparsevlm_64", {"pruning_layers": [0, 1, 2], "schedule": [14, 8, 4]})
    starts = torch.tensor([5, 5])
    split = pruned_generate(model, embeds, mask, starts, config, 4, num_visual_tokens=n_vis)
    assert stages.splits_rows(model.model.layers[1])
    monkeypatch.setattr(stages, "splits_rows", lambda layer: False)
    whole = pruned_generate(model, embeds, mask, starts, config, 4, num_visual_tokens=n_vis)
    assert split.sequences.equal(whole.sequences)
    assert all(a.equal(b) for a, b in zip(split.kept, whole.kept, strict=True))
    assert split.visual_tokens_per_layer.equal(whole.visual_tokens_per_layer)
    assert split.cache_lengths.equal(whole.cache_lengths)
    torch.testing.assert_close(split.prefill_logits, whole.prefill_logits, rtol=1e-10, atol=1e-10)
    for a, b in zip(split.scores, whole.scores, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, equal_nan=True)


def test_llava_model_uses_its_language_model_and_head():
    text = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
    )
    vision = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_index=63))
    llava = llava.to(torch.float64).eval()
    embeds = torch.randn(1, 4 + 24 + 6, 32, dtype=torch.float64)
    config = load_config("sparsevlm_64", {"pruning_layers": [0, 1], "schedule": [8, 4]})
    whole = pruned_generate(llava, embeds, None, torch.tensor([4]), config, 3, num_visual_tokens=24)
    parts = pruned_generate(
        llava.model.language_model,
        embeds,
        None,
        torch.tensor([4]),
        config,
        3,
        lm_head=llava.lm_head,
        num_visual_tokens=24,
    )
    assert whole.sequences.equal(parts.sequences)
    assert whole.visual_tokens_per_layer.tolist() == [[9, 5, 5]]  # 8 + 1 recycled, then 4 + 1


# --------------------------------------------------------------------------- edge cases and bad inputs


def test_pruning_after_the_last_layer_and_single_token(model, cases, meta):
    embeds, mask, starts = _inputs(cases, meta, ["s1"])
    config = load_config("sparsevlm_64", {"pruning_layers": [2, 6, 31]})
    out = pruned_generate(model, embeds, mask, starts, config, 1, _noise(cases, ["s1"], 64))
    assert out.sequences.shape == (1, 1) and out.decode_positions.shape == (1, 0, 32)
    assert out.visual_tokens_per_layer[0, 31] == 18 and out.visual_tokens_per_layer[0, 30] == 32
    assert out.cache_lengths[0, 31] == out.cache_lengths[0, 7]  # layer 31's cache saw the unpruned stage


def test_single_text_token_uses_it_as_rater(model, cases, meta):
    info = meta["samples"]["s0"]
    embeds = cases["s0/inputs_embeds"][None, : info["text_token_start"] + 1]  # image + one text token
    out = pruned_generate(model, embeds, None, torch.tensor([info["v_token_start"]]), load_config("sparsevlm_64"), 2)
    assert out.raters[0].tolist() == [0]
    assert [k.shape[1] for k in out.kept] == [66, 30, 17]


def test_half_precision_runs():
    model = _tiny_gqa_model("sdpa").to(torch.bfloat16)
    embeds = torch.randn(2, 40, 32, dtype=torch.bfloat16)
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, :4] = 0
    config = load_config("sparsevlm_64", {"pruning_layers": [1, 2], "schedule": [10, 5]})
    out = pruned_generate(model, embeds, mask, torch.tensor([5, 9]), config, 3, num_visual_tokens=24)
    assert out.sequences.shape == (2, 3) and out.prefill_logits.dtype == torch.bfloat16
    assert torch.isfinite(out.prefill_logits.float()).all()
    assert [k.shape for k in out.kept] == [(2, 10), (2, 5)]


def test_pruning_layer_beyond_depth(model, cases, meta):
    embeds, mask, starts = _inputs(cases, meta, ["s0"])
    config = load_config("sparsevlm_64", {"pruning_layers": [2, 6, 32]})
    with pytest.raises(ConfigError, match="32 layers"):
        pruned_generate(model, embeds, mask, starts, config, 1)


def test_no_text_after_image(model, cases, meta):
    info = meta["samples"]["s0"]
    embeds = cases["s0/inputs_embeds"][None, : info["text_token_start"]]
    with pytest.raises(ValueError, match="no text after the image"):
        pruned_generate(model, embeds, None, torch.tensor([info["v_token_start"]]), load_config("sparsevlm_64"), 1)


def test_bad_inputs(model, cases, meta):
    embeds, mask, starts = _inputs(cases, meta, list(SAMPLES))
    config = load_config("sparsevlm_64")
    with pytest.raises(ValueError, match="visual tokens"):  # image span runs into the padding
        pruned_generate(model, embeds, mask, torch.tensor([35, 5]), config, 1)
    with pytest.raises(ValueError, match="visual tokens"):  # image span beyond the row
        pruned_generate(model, embeds, mask, torch.tensor([100, 100]), config, 1)
    with pytest.raises(ValueError, match="one tensor per pruning layer"):
        pruned_generate(model, embeds, mask, starts, config, 1, [torch.zeros(2, 200)])
    with pytest.raises(ValueError, match="recycle_noise"):
        pruned_generate(model, embeds, mask, starts, config, 1, [torch.zeros(2, 3)] * 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        pruned_generate(model, embeds, mask, starts, config, 0)
    with pytest.raises(ValueError, match="image_start"):
        pruned_generate(model, embeds, mask, starts[:1], config, 1)
    with pytest.raises(ConfigError, match="does not prune inside the LLM"):
        pruned_generate(model, embeds, mask, starts, load_config({"method": "none"}), 1)


def test_eos_stops_early_and_streamer_sees_every_step(model, cases, meta):
    full = _run(model, cases, meta, ["s0", "s1"], 64)
    # pick as "end of sequence" the token each row reaches last: both rows stop at that step at the latest
    eos = int(full.sequences[0, 2])
    embeds, mask, starts = _inputs(cases, meta, ["s0", "s1"])

    class Recorder:
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, value):
            self.puts.append(value.clone())

        def end(self):
            self.ended = True

    recorder = Recorder()
    out = pruned_generate(
        model, embeds, mask, starts, load_config("sparsevlm_64"), NEW_TOKENS, _noise(cases, ["s0", "s1"], 64),
        eos_token_id=eos, streamer=recorder,
    )  # fmt: skip
    steps = out.sequences.shape[1]
    assert steps <= NEW_TOKENS
    for row in range(2):
        ref = full.sequences[row].tolist()
        got = out.sequences[row].tolist()
        stop = ref.index(eos) + 1 if eos in ref else NEW_TOKENS
        assert got[: min(stop, steps)] == ref[: min(stop, steps)]
        assert all(t == eos for t in got[stop:])  # finished rows repeat the end token
    assert eos in out.sequences[0].tolist()[:3]
    assert recorder.ended and recorder.puts[0].shape == (2, 0)  # the (empty) prompt first
    assert [p.tolist() for p in recorder.puts[1:]] == out.sequences.T.tolist()
