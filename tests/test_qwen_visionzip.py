"""VisionZip on Qwen2.5-VL (``sparsezip_lmms.qwen.compressed_generate``): parity with the official code's golden
fixtures (``tests/data/visionzip_qwen``, README there), batched parity, keep_all == stock ``generate``, several
images per prompt, refused inputs.

The fixtures were made in float64 with float64 "shims" (RMSNorm statistics, the vision RoPE and the text M-RoPE
in float64). The same numerics are given to the one float64 model instance here by swapping its modules
(never the transformers classes): every ``Qwen2_5_VLRMSNorm``, the vision rotary table, each vision block's
``attn`` (the fixtures' eager vision attention, per ``cu_seqlens`` block, with the RoPE applied in float64 where
5.x applies it after ``q.float()``) and the text rotary table. The library itself never swaps anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2_5_VLForConditionalGeneration

from sparsezip_lmms.compress.visionzip_qwen import visionzip_qwen, visionzip_qwen_counts
from sparsezip_lmms.config import load_config
from sparsezip_lmms.qwen import compressed_generate
from sparsezip_lmms.qwen.positions import prompt_positions
from _qwen_numerics import float64_numerics

# another set of the same kind (its meta.json, cases.safetensors and qwen/): SPARSEZIP_VISIONZIP_QWEN_SET=DIR with
# -k parity. A set made with the float64 shims ("numerics": "f64") is checked with them to 1e-10; one made with the
# official numerics as they are, on the stock float64 model to 1e-5 (the README of the fixtures).
DATA = Path(os.environ.get("SPARSEZIP_VISIONZIP_QWEN_SET") or Path(__file__).parent / "data" / "visionzip_qwen")
META = json.loads((DATA / "meta.json").read_text())
SAMPLES = tuple(META["samples"])
SETTINGS = tuple((float(d[1:]), float(c[1:])) for d, c in (m.split("_") for m in META["modules"]))  # "D0.65_C0.05"
SHIMS = META["numerics"] == "f64"
PAD, IMAGE, VIDEO = 297, 293, 294
TOL = 1e-10 if SHIMS else 1e-5
NEW = META["new_tokens"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max() / b.abs().max())


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def gold() -> dict[str, torch.Tensor]:
    return load_file(str(DATA / "cases.safetensors"))


@pytest.fixture(scope="module")
def meta() -> dict:
    return META


@pytest.fixture(scope="module")
def model64():
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(DATA / "qwen")).double().eval()
    return float64_numerics(model) if SHIMS else model


def pixels(gold, s: str, dtype=torch.float64) -> torch.Tensor:
    frame = gold[f"{s}/pixel_values_frame"]  # [P, 3, 14, 14]
    return frame[:, :, None].expand(frame.shape[0], 3, 2, 14, 14).reshape(frame.shape[0], 1176).to(dtype)


def left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    return ids, mask


def batch_of(gold, samples, dtype=torch.float64):
    ids, mask = left_pad([gold[f"{s}/input_ids"] for s in samples])
    pv = torch.cat([pixels(gold, s, dtype) for s in samples])
    grid = torch.cat([gold[f"{s}/image_grid_thw"] for s in samples])
    return ids, mask, pv, grid


def config(rd, rc):
    return load_config("visionzip_qwen", {"dominant_ratio": rd, "contextual_ratio": rc})


def check_case(gold, out, row: int, image: int, s: str, rd: float, rc: float, tol: float = TOL) -> dict[str, float]:
    """Row ``row`` / image ``image`` of ``out`` against case s/D{rd}_C{rc}; returns the float errors."""
    c = f"{s}/D{rd}_C{rc}"
    dbg = out.debug
    sel = dbg.selections[image]
    for name in ("dominant_idx", "contextual_target_idx", "merged_idx", "contextual_assign", "keep_image_idx"):
        assert torch.equal(getattr(sel, name), gold[f"{c}/{name}"]), (c, name)
    assert torch.equal(out.kept[image], gold[f"{c}/keep_image_idx"]), c
    assert torch.equal(out.keep_seq[row], gold[f"{c}/keep_seq_idx"]), c
    assert torch.equal(out.position_ids[row], gold[f"{c}/position_ids"]), c
    assert torch.equal(out.decode_positions[row], gold[f"{c}/decode_positions"]), c
    assert torch.equal(out.sequences[row], gold[f"{c}/greedy_ids"]), c
    errors = {
        "attn_mean": rel(dbg.attn_mean[image], gold[f"{s}/attn_mean"]),
        "attn_key": rel(dbg.attn_key[image], gold[f"{s}/attn_key"][0]),
        "image_embeds": rel(dbg.image_embeds[image], gold[f"{s}/image_embeds"]),
        "inputs_embeds": rel(dbg.inputs_embeds[row], gold[f"{c}/inputs_embeds"]),
        "logits": rel(out.logits[row], gold[f"{c}/logits_steps"]),
        "logits_prefill": rel(out.logits[row, 0], gold[f"{c}/logits_prefill_last"]),
    }
    assert max(errors.values()) <= tol, (c, errors)
    return errors


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("s", SAMPLES)
def test_parity_alone_every_setting(model64, gold, meta, s):
    ids = gold[f"{s}/input_ids"][None]
    mask = torch.ones_like(ids)
    grid = gold[f"{s}/image_grid_thw"]
    positions, max_position = prompt_positions(model64, ids, mask, grid, IMAGE)
    assert torch.equal(positions[:, 0], gold[f"{s}/position_ids_full"])
    for rd, rc in SETTINGS:
        out = compressed_generate(model64, ids, mask, pixels(gold, s), grid, config(rd, rc), NEW, debug=True)
        case = meta["cases"][f"{s}/D{rd}_C{rc}"]
        assert (out.sequences.shape, out.logits.shape) == ((1, NEW), (1, NEW, model64.config.text_config.vocab_size))
        assert out.logits.dtype == torch.float64
        assert len(out.kept[0]) == case["D"] + case["C"] and out.position_ids[0].shape == (3, case["L_pruned"])
        assert int(max_position) == case["max_position"]
        check_case(gold, out, 0, 0, s, rd, rc)


@pytest.mark.parametrize("rd,rc", SETTINGS)
def test_parity_one_left_padded_batch(model64, gold, rd, rc):
    ids, mask, pv, grid = batch_of(gold, SAMPLES)
    out = compressed_generate(model64, ids, mask, pv, grid, config(rd, rc), NEW, debug=True)
    assert out.image_rows == list(range(len(SAMPLES))) and out.sequences.shape == (len(SAMPLES), NEW)
    worst = {}
    for i, s in enumerate(SAMPLES):
        for k, v in check_case(gold, out, i, i, s, rd, rc).items():
            worst[k] = max(worst.get(k, 0.0), v)
    print(f"D{rd}_C{rc} batch of 4, worst relative errors: {worst}")


def test_parity_with_the_stock_float64_numerics(gold):
    """Without the fixtures' shims (a float64 model with transformers' own float32 steps: RMSNorm statistics,
    the vision RoPE table, the text M-RoPE cos/sin), as a set made with the official numerics is checked: every
    decision is the same, the floats agree to about 1e-6 (the fixtures' README: use about 1e-5)."""
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(DATA / "qwen")).double().eval()
    worst = 0.0
    for rd, rc in SETTINGS:
        out = compressed_generate(model, *batch_of(gold, SAMPLES), config(rd, rc), NEW, debug=True)
        worst = max(worst, *(max(check_case(gold, out, i, i, s, rd, rc, 1e-5).values()) for i, s in enumerate(SAMPLES)))
        for s in SAMPLES:
            ids = gold[f"{s}/input_ids"][None]
            out = compressed_generate(model, ids, torch.ones_like(ids), pixels(gold, s), gold[f"{s}/image_grid_thw"], config(rd, rc), NEW, debug=True)  # fmt: skip
            worst = max(worst, max(check_case(gold, out, 0, 0, s, rd, rc, 1e-5).values()))
    assert worst > 1e-9 or not SHIMS  # the shims are really absent: the float32 steps show
    print(f"stock float64 numerics, worst relative error: {worst:.1e}")


# --------------------------------------------------------------------------- keep_all == stock generate


def test_keep_all_matches_stock_generate(gold):
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(DATA / "qwen")).eval()  # float32, stock numerics
    ids, mask, pv, grid = batch_of(gold, ("c", "a"), torch.float32)
    stock = model.generate(
        input_ids=ids, attention_mask=mask, pixel_values=pv, image_grid_thw=grid, mm_token_type_ids=(ids == IMAGE).int(),
        max_new_tokens=5, min_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True,
    )  # fmt: skip
    out = compressed_generate(model, ids, mask, pv, grid, load_config("keep_all"), 5)
    assert torch.equal(out.sequences, stock.sequences[:, ids.shape[1] :])
    assert rel(out.logits, torch.stack(stock.logits, dim=1)) <= 1e-5
    assert [len(k) for k in out.kept] == [54, 64] and all(torch.equal(k, torch.arange(len(k))) for k in out.kept)
    assert [p.shape[1] for p in out.position_ids] == [int(m.sum()) for m in mask]


# --------------------------------------------------------------------------- several images in one prompt


def test_two_images_in_one_prompt_each_selected_alone(model64, gold):
    rd, rc = 0.45, 0.05
    a, c, b = (gold[f"{s}/input_ids"] for s in "acb")
    start_a, start_c = 14, 17  # the image starts of samples a and c (meta.json)
    image_a = a[start_a - 1 : start_a + 65]  # <|vision_start|> + 64 image tokens + <|vision_end|>
    two = torch.cat([a[: start_a - 1], image_a, torch.tensor([11, 12, 13]), c[start_c - 1 :]])  # text between
    ids, mask = left_pad([two, b])
    pv = torch.cat([pixels(gold, s) for s in "acb"])
    grid = torch.cat([gold[f"{s}/image_grid_thw"] for s in "acb"])
    out = compressed_generate(model64, ids, mask, pv, grid, config(rd, rc), 3, debug=True)
    assert out.image_rows == [0, 0, 1] and out.sequences.shape == (2, 3)
    for image, s in enumerate("acb"):
        assert torch.equal(out.kept[image], gold[f"{s}/D{rd}_C{rc}/keep_image_idx"]), s
        assert rel(out.debug.attn_mean[image], gold[f"{s}/attn_mean"]) <= TOL
    # the row's positions: the unpruned prompt's, sliced by the kept tokens
    positions, _ = prompt_positions(model64, ids, mask, grid, IMAGE)
    pad = ids.shape[1] - len(two)
    assert torch.equal(out.position_ids[0], positions[:, 0, pad + out.keep_seq[0]])
    assert out.position_ids[0].shape[1] == len(two) - 64 - 54 + len(out.kept[0]) + len(out.kept[1])
    # row 1 (sample b alone, left-padded beside a longer row) is the golden case
    assert torch.equal(out.position_ids[1], gold[f"b/D{rd}_C{rc}/position_ids"])
    assert torch.equal(out.sequences[1], gold[f"b/D{rd}_C{rc}/greedy_ids"][:3])
    assert rel(out.logits[1], gold[f"b/D{rd}_C{rc}/logits_steps"][:3]) <= TOL


def test_a_row_without_images(model64, gold):
    ids, mask = left_pad([gold["a/input_ids"], torch.tensor([296, 5, 6, 7, 295])])
    out = compressed_generate(model64, ids, mask, pixels(gold, "a"), gold["a/image_grid_thw"], config(0.65, 0.05), 5)
    assert torch.equal(out.sequences[0], gold["a/D0.65_C0.05/greedy_ids"])
    assert torch.equal(out.position_ids[1], torch.arange(5).expand(3, 5))
    assert out.decode_positions[1].tolist() == [5, 6, 7, 8]


def test_chunked_scores_and_no_hook_left(model64, gold, monkeypatch):
    from sparsezip_lmms.qwen import vision

    monkeypatch.setattr(vision, "_MAX_ROWS", 50)  # 308 patches: 7 query chunks
    ids = gold["b/input_ids"][None]
    out = compressed_generate(model64, ids, torch.ones_like(ids), pixels(gold, "b"), gold["b/image_grid_thw"], config(0.2, 0.05), 2, debug=True)
    assert rel(out.debug.attn_mean[0], gold["b/attn_mean"]) <= TOL
    assert torch.equal(out.kept[0], gold["b/D0.2_C0.05/keep_image_idx"])
    attn = model64.model.visual.blocks[-1].attn
    assert not attn._forward_pre_hooks and not attn._forward_hooks


# --------------------------------------------------------------------------- counts and refused inputs


def test_counts_truncate_the_binary_double_product():
    assert visionzip_qwen_counts(77, 0.65, 0.05) == (50, 3)
    assert visionzip_qwen_counts(54, 0.08, 0.02) == (4, 1)
    assert visionzip_qwen_counts(100, 0.29, 0.05) == (28, 5)  # 0.29 * 100 = 28.999999999999996
    assert visionzip_qwen_counts(180, 0.35, 0.05) == (62, 9)
    assert visionzip_qwen_counts(4, 0.2, 0.05) == (0, 1)


def test_pure_selection_single_image(gold):
    s, c = "d", "d/D0.45_C0.05"
    out = visionzip_qwen(gold[f"{s}/attn_mean"], gold[f"{s}/attn_key"][0], gold[f"{s}/image_embeds"], 0.45, 0.05)
    assert torch.equal(out.dominant_idx, gold[f"{c}/dominant_idx"])
    assert torch.equal(out.contextual_assign, gold[f"{c}/contextual_assign"])
    assert torch.equal(out.keep_image_idx, gold[f"{c}/keep_image_idx"])


def test_refused_inputs(model64, gold):
    ids = gold["a/input_ids"][None]
    mask, pv, grid, cfg = torch.ones_like(ids), pixels(gold, "a"), gold["a/image_grid_thw"], config(0.65, 0.05)
    extra = ids.clone()
    extra[0, 3] = IMAGE
    with pytest.raises(ValueError, match="more image tokens in the prompt"):
        compressed_generate(model64, extra, mask, pv, grid, cfg, 2)
    with pytest.raises(ValueError, match="too small for one merged token"):
        compressed_generate(model64, ids, mask, pv[:2], torch.tensor([[1, 1, 2]]), cfg, 2)
    with pytest.raises(ValueError, match="videos are not supported"):
        compressed_generate(model64, ids, mask, pv, grid, cfg, 2, pixel_values_videos=pv)
    video = ids.clone()
    video[0, 3] = VIDEO
    with pytest.raises(ValueError, match="video"):
        compressed_generate(model64, video, mask, pv, grid, cfg, 2)
    with pytest.raises(ValueError, match="dominant_ratio"):
        load_config("visionzip_qwen", {"dominant_ratio": 1.5, "contextual_ratio": 0.05})
    with pytest.raises(ValueError, match="contextual_ratio"):
        visionzip_qwen_counts(64, 0.5, 0.0)
    with pytest.raises(ValueError, match="dominant_ratio"):
        compressed_generate(model64, ids, mask, pv, grid, load_config("visionzip_64"), 2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        compressed_generate(model64, ids, mask, pv, grid, cfg, 0)


def test_divprune_on_the_post_merger_tokens_alone_and_batched(gold, model64):
    """DivPrune on Qwen2.5-VL: each image's budget of its own post-merger tokens, the same picks as the
    LLaVA-validated divprune_select on that image's tokens, alone or in a left-padded batch; positions
    sliced from the unpruned prompt (never renumbered)."""
    from sparsezip_lmms.compress.divprune import divprune_select

    config = load_config({"method": "divprune", "keep_ratio": 0.25})
    ids, mask, pv, grid = batch_of(gold, list(SAMPLES))
    batched = compressed_generate(model64, ids, mask, pv, grid, config, 2, debug=True)
    for image, s in enumerate(SAMPLES):
        embeds = gold[f"{s}/image_embeds"]  # [N, E] the official merger output
        n = embeds.shape[0]
        expected = divprune_select(embeds[None], int(round(0.25 * n)))[0].sort().values
        assert batched.kept[image].equal(expected), s
        ids1, mask1, pv1, grid1 = batch_of(gold, [s])
        alone = compressed_generate(model64, ids1, mask1, pv1, grid1, config, 2)
        assert alone.kept[0].equal(expected) and alone.sequences[0].equal(batched.sequences[image])
        full = gold[f"{s}/position_ids_full"]  # [3, L]
        assert alone.position_ids[0].equal(full[:, alone.keep_seq[0]])


def test_vispruner_on_the_merged_tokens_with_the_global_attention(gold, model64):
    """VisPruner on Qwen2.5-VL as its author applies it: the attention each merged token receives (the
    VisionZip score of the set) in place of CLS attention, duplicates removed on the post-merger tokens;
    the same picks as vispruner_select on each image alone, in a batch of images of different sizes."""
    from sparsezip_lmms.compress.vispruner import vispruner_select

    config = load_config({"method": "vispruner", "keep_ratio": 0.3})
    ids, mask, pv, grid = batch_of(gold, list(SAMPLES))
    out = compressed_generate(model64, ids, mask, pv, grid, config, 2)
    for image, s in enumerate(SAMPLES):
        embeds, scores = gold[f"{s}/image_embeds"], gold[f"{s}/attn_mean"]  # [N, E], [N]
        tokens = max(1, int(round(0.3 * embeds.shape[0])))
        expected = vispruner_select(embeds[None], scores[None, None], tokens, 0.5)[0]
        assert out.kept[image].equal(expected), s
