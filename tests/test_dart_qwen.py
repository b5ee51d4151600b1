"""DART on Qwen2.5-VL against its official port (tests/data/dart_qwen, ZichenWen1/DART 5a19452 run in
float64 through the real generate; see its README): the one pruning decoder with 3-row M-RoPE positions.

From the set's LLM inputs (``inputs_embeds``, the unpruned positions), alone and as one left-padded batch of
the four prompts, every decision must match exactly (pivots, their order, kept tokens, the positions used
from layer K on, cache lengths, decode positions, greedy ids; logits within 1e-10 with the set's float64
numerics); and ``compressed_generate`` from the pixels of one prompt (the vision tower, the splice and the
positions included).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2_5_VLForConditionalGeneration

from sparsezip_lmms.config import load_config
from sparsezip_lmms.pruning import pruned_generate
from sparsezip_lmms.qwen import compressed_generate
from _qwen_numerics import float64_numerics

# another set of the same kind (its meta.json, cases.safetensors and qwen/): SPARSEZIP_DART_QWEN_SET=DIR with
# -k parity. A set made with the float64 shims ("numerics": "f64") is checked with them; one made with the
# official float32 steps, on the stock float64 model with the floats to 1e-5.
DATA = Path(os.environ.get("SPARSEZIP_DART_QWEN_SET") or Path(__file__).parent / "data" / "dart_qwen")
META = json.loads((DATA / "meta.json").read_text())
SAMPLES = tuple(META["samples"])
SHIMS = META["numerics"] == "f64"
NEW = META["new_tokens"]
PAD = 297


def _model(shims: bool):
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(DATA / "qwen")).double().eval()
    return float64_numerics(model) if shims else model


@pytest.fixture(scope="module")
def dart_qwen():
    return load_file(str(DATA / "cases.safetensors")), META, _model(SHIMS)


def _config(setting):
    return load_config("dart_qwen", {
        "layer": setting["K"], "reduction_ratio": setting["r"], "pivot_image": setting["Pi"], "pivot_text": setting["Pt"],
    })  # fmt: skip


def _batch(cases, samples):
    """Left-padded ([B, L, d] embeds, [B, L] mask, [3, B, L] positions, [B] image starts, [B] counts)."""
    rows = [cases[f"{s}/inputs_embeds"] for s in samples]
    width = max(r.shape[0] for r in rows)
    embeds = torch.zeros(len(rows), width, rows[0].shape[1], dtype=torch.float64)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros(3, len(rows), width, dtype=torch.long)
    for b, (s, row) in enumerate(zip(samples, rows)):
        pad = width - row.shape[0]
        embeds[b, pad:], mask[b, pad:] = row, 1
        positions[:, b, pad:] = cases[f"{s}/position_ids_full"]
    starts = torch.tensor([width - r.shape[0] + META["samples"][s]["image_token_start_index"] for s, r in zip(samples, rows)])
    counts = [int(cases[f"{s}/image_embeds"].shape[0]) for s in samples]
    return embeds, mask, positions, starts, counts


def _check(out, row, cases, case, meta, tol=1e-10 if SHIMS else 1e-5):
    c = meta["cases"][case]
    k = c["K"]
    valid = lambda t: t[t >= 0]  # noqa: E731
    assert valid(out.pivots[0][row]).tolist() == c["pivot_order"]
    assert valid(out.kept[0][row]).equal(cases[f"{case}/kept_span_ids"])
    used = out.positions[k][:, row]  # [3, n] the positions layer K used (-1 padded)
    assert used[:, used[0] >= 0].equal(cases[f"{case}/position_ids"])
    assert out.cache_lengths[row].tolist() == cases[f"{case}/cache_len_after_prefill"].tolist()
    assert out.decode_positions[row, :, 0].equal(cases[f"{case}/decode_positions"])
    assert out.sequences[row].equal(cases[f"{case}/greedy_ids"])
    golden = cases[f"{case}/logits_prefill_last"]
    assert float((out.prefill_logits[row] - golden).abs().max() / golden.abs().max()) <= tol
    norms = out.scores[0][row]
    assert torch.allclose(norms[~norms.isnan()], cases[f"{case}/l1_image"], rtol=1e-12 if tol <= 1e-10 else tol, atol=0)


@pytest.mark.parametrize("sample", SAMPLES)
def test_dart_qwen_parity_single_prompt(dart_qwen, sample):
    cases, meta, model = dart_qwen
    embeds, mask, positions, starts, counts = _batch(cases, [sample])
    for setting in meta["settings"]:
        out = pruned_generate(
            model, embeds, mask, starts, _config(setting), NEW, num_visual_tokens=counts, family="qwen2_5_vl",
            position_ids=positions,
        )  # fmt: skip
        _check(out, 0, cases, f"{sample}/{setting['tag']}", meta)


def _check_batch(model, cases, meta, tol=None):
    """The set's prompts as one left-padded batch of LLM inputs, every setting checked row by row."""
    embeds, mask, positions, starts, counts = _batch(cases, list(SAMPLES))
    for setting in meta["settings"]:
        out = pruned_generate(
            model, embeds, mask, starts, _config(setting), NEW, num_visual_tokens=counts, family="qwen2_5_vl",
            position_ids=positions,
        )  # fmt: skip
        for row, sample in enumerate(SAMPLES):
            _check(out, row, cases, f"{sample}/{setting['tag']}", meta, **({} if tol is None else {"tol": tol}))


def test_dart_qwen_parity_left_padded_batch(dart_qwen):
    cases, meta, model = dart_qwen
    _check_batch(model, cases, meta)


def test_dart_qwen_parity_with_the_stock_numerics(dart_qwen):
    """On the stock float64 model (transformers' own float32 steps, as a set made with the official numerics
    is checked): the four prompts' LLM inputs as one left-padded batch, and the prompts whose pixels the set
    holds (here d; tests/data keeps only its pixels) in one batch through ``compressed_generate``. Every
    decision exact, the logits within 1e-5 (the README measured 2.2e-7)."""
    cases, meta, _ = dart_qwen
    model = _model(False)
    _check_batch(model, cases, meta, tol=1e-5)
    held = [s for s in SAMPLES if f"{s}/pixel_values_frame" in cases]
    frames = [cases[f"{s}/pixel_values_frame"] for s in held]  # [P, 3, 14, 14] each
    pixels = torch.cat([f[:, :, None].expand(f.shape[0], 3, 2, 14, 14).reshape(f.shape[0], 1176) for f in frames]).double()
    rows = [cases[f"{s}/input_ids"] for s in held]
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([torch.full((width - len(r),), PAD), r]) for r in rows])  # [B, L] left padded
    mask = torch.stack([torch.cat([torch.zeros(width - len(r), dtype=torch.long), torch.ones(len(r), dtype=torch.long)]) for r in rows])
    grid = torch.cat([cases[f"{s}/image_grid_thw"] for s in held])
    worst = 0.0
    for setting in meta["settings"]:
        out = compressed_generate(model, ids, mask, pixels, grid, _config(setting), NEW)
        for row, sample in enumerate(held):
            case = f"{sample}/{setting['tag']}"
            assert out.kept[row].equal(cases[f"{case}/kept_span_ids"]), case
            assert out.position_ids[row].equal(cases[f"{case}/position_ids"]), case
            assert out.keep_seq[row].equal(cases[f"{case}/keep_indexs"]), case
            assert out.decode_positions[row].equal(cases[f"{case}/decode_positions"]), case
            assert out.sequences[row].equal(cases[f"{case}/greedy_ids"]), case
            assert valid_pivots(out.pruned.pivots[0][row]) == meta["cases"][case]["pivot_order"], case
            golden = cases[f"{case}/logits_steps"]
            worst = max(worst, float((out.logits[row] - golden).abs().max() / golden.abs().max()))
    assert held and worst <= 1e-5
    print(f"DART-Qwen from pixels, stock float64 numerics ({held}): worst logits error {worst:.1e}")


def valid_pivots(pivots: torch.Tensor) -> list[int]:
    return pivots[pivots >= 0].tolist()


def test_dart_through_compressed_generate_from_pixels(dart_qwen):
    """Prompt d from its pixels, left padded: the vision tower, the splice, the unpruned positions and the
    in-LLM pruning together."""
    cases, meta, model = dart_qwen
    frame = cases["d/pixel_values_frame"]  # [P, 3, 14, 14]
    pixels = frame[:, :, None].expand(frame.shape[0], 3, 2, 14, 14).reshape(frame.shape[0], 1176).double()
    ids = cases["d/input_ids"]
    for setting in meta["settings"]:
        case = f"d/{setting['tag']}"
        padded = torch.cat([torch.full((3,), PAD), ids])[None]  # [1, L + 3] left padding
        mask = torch.cat([torch.zeros(3, dtype=torch.long), torch.ones(len(ids), dtype=torch.long)])[None]
        out = compressed_generate(model, padded, mask, pixels, cases["d/image_grid_thw"], _config(setting), NEW)
        assert out.kept[0].equal(cases[f"{case}/kept_span_ids"])
        assert out.position_ids[0].equal(cases[f"{case}/position_ids"])
        assert out.keep_seq[0].equal(cases[f"{case}/keep_indexs"])
        assert out.decode_positions[0].equal(cases[f"{case}/decode_positions"])
        assert out.sequences[0].equal(cases[f"{case}/greedy_ids"])
        golden = cases[f"{case}/logits_steps"]
        assert float((out.logits[0] - golden).abs().max() / golden.abs().max()) <= 1e-9
        assert out.pruned.pivots[0][0].tolist() == meta["cases"][case]["pivot_order"]


def test_in_llm_methods_take_one_image_per_row_and_keep_positions(dart_qwen):
    cases, _, model = dart_qwen
    embeds, mask, positions, starts, counts = _batch(cases, ["c"])
    with pytest.raises(ValueError, match="renumbers positions"):  # SparseVLM v1.5 renumbers: not for M-RoPE
        pruned_generate(model, embeds, mask, starts, load_config("sparsevlm_64", {"schedule": [40, 20, 10], "pruning_layers": [0, 1, 2]}), 2,
                        num_visual_tokens=counts, position_ids=positions)  # fmt: skip
    out = pruned_generate(model, embeds, mask, starts, load_config("fastv_64", {"ratio": 0.5}), 3, num_visual_tokens=counts,
                          family="qwen2_5_vl", position_ids=positions)  # fmt: skip
    assert out.visual_tokens_per_layer[0, 1:].unique().tolist() == [40]  # FastV: int(80 * 0.5) from layer 2 on
    assert out.decode_positions[0, :, 0].tolist() == [40, 41]  # max position 39 + n


@pytest.mark.parametrize(
    "name, overrides",
    [("fastv_64", {"ratio": 0.3}), ("sparsevlm2_64", {"pruning_layers": [1, 2, 3], "schedule": [40, 20, 10]}), ("dart_qwen", {})],
)
def test_in_llm_methods_on_qwen_keep_each_row_as_if_alone(dart_qwen, name, overrides):
    """FastV, SparseVLM v2.0 and DART on Qwen2.5-VL from the LLM inputs of the four prompts: a left-padded
    batch keeps, positions and answers exactly as each prompt alone."""
    cases, _, model = dart_qwen
    config = load_config(name, overrides)
    embeds, mask, positions, starts, counts = _batch(cases, list(SAMPLES))
    batch = pruned_generate(model, embeds, mask, starts, config, 3, num_visual_tokens=counts, family="qwen2_5_vl",
                            position_ids=positions)  # fmt: skip
    valid = lambda t: t[..., t.reshape(-1, t.shape[-1])[0] >= 0]  # noqa: E731 - drop the -1 padding columns
    for row, sample in enumerate(SAMPLES):
        embeds, mask, positions, starts, counts = _batch(cases, [sample])
        alone = pruned_generate(model, embeds, mask, starts, config, 3, num_visual_tokens=counts, family="qwen2_5_vl",
                                position_ids=positions)  # fmt: skip
        for a, b in zip(alone.kept, batch.kept):
            assert valid(a[0]).equal(valid(b[row])), (name, sample)
        assert valid(alone.positions[-1][:, 0]).equal(valid(batch.positions[-1][:, row]))  # [3, L'] from the last layer
        assert alone.sequences[0].equal(batch.sequences[row]) and alone.decode_positions[0].equal(batch.decode_positions[row])
