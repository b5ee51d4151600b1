"""CDPruner: parity with golden outputs of the official code, relevance conventions, batching, edges.

Fixtures in ``tests/data/cdpruner/`` (copies): outputs of the official CDPruner
(Theia-4869/CDPruner 9541616, ``LlavaMetaForCausalLM.encode_images`` and ``CLIPVisionTower``) in
float64 (its float32 casts widened to "float32 or wider", nothing else changed).

* ``cases.safetensors`` / ``meta.json``: stages (a)–(d) on synthetic inputs. Groups ``g576`` (B=2,
  N=576, D=224, E=64), ``g64`` (B=2, N=64, D=80, E=32), ``t64`` (like g64, with 3 exact copies of the
  most relevant token: an exact 3-way tie at step 0). Mode ``p``: one call per image with its own
  question (LLaVA-1.5); mode ``j``: one call on all B images with ``text_embeds[0]`` (LLaVA-1.6 crops).
* ``clip/`` (a tiny random ``CLIPModel``, ``eos_token_id = 2``) and ``clip_cases.safetensors``: the
  official image embeds (layer −2, CLS dropped, post_layernorm, visual_projection), the 77-token text
  segmentation of stored ``input_ids`` and the text embeds.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from _compress_helpers import NoHostSync, frobenius_rel_err, golden_meta, golden_tensors

from sparsezip_lmms.compress.cdpruner import (
    cdpruner_cosine,
    cdpruner_greedy_map,
    cdpruner_kernel,
    cdpruner_normalize_relevance,
    cdpruner_patch_embeds,
    cdpruner_pool_positions,
    cdpruner_raw_relevance,
    cdpruner_relevance,
    cdpruner_select,
    cdpruner_similarity,
    cdpruner_text_segments,
)

DATA = Path(__file__).parent / "data" / "cdpruner"
CLIP_DIR = DATA / "clip"


def _clip_cases() -> dict[str, torch.Tensor]:
    return golden_tensors("cdpruner", "clip_cases.safetensors")


def meta() -> dict:
    return golden_meta("cdpruner")


def case(name: str) -> torch.Tensor:
    return golden_tensors("cdpruner")[name].clone()


rel_err = frobenius_rel_err


# (group, text mode e.g. "3j"), and (group, text mode, budget)
TEXTS = [(g, t) for g, info in meta()["groups"].items() for t in info["texts"]]
CASES = [(g, t, k) for g, t in TEXTS for k in meta()["groups"][g]["budgets"]]  # 18 cases


def question(group: str, text: str) -> tuple[torch.Tensor, bool]:
    """(text_embeds [B, M, E] per image, or [1, M, E] one for all in joint mode, joint flag)."""
    m, joint = int(text[:-1]), text[-1] == "j"
    embeds = case(f"{group}/text_embeds_M{m}")  # [B, M, E]
    return (embeds[:1] if joint else embeds), joint


def gather_tokens(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """features [B, N, D], index [B, k] -> [B, k, D]."""
    return features.gather(1, index.unsqueeze(-1).expand(-1, -1, features.shape[-1]))


# --------------------------------------------------------------------------- parity: stages


@pytest.mark.parametrize("group,text", TEXTS, ids=[f"{g}-M{t}" for g, t in TEXTS])
def test_parity_relevance_and_kernel(group, text):
    prefix = f"{group}/M{text}"
    image_embeds = case(f"{group}/image_embeds")  # [B, N, E]
    text_embeds, joint = question(group, text)
    cosine = cdpruner_cosine(image_embeds, text_embeds)  # [B, N, M]
    assert rel_err(cosine, case(f"{prefix}/cos_image_text")) <= 1e-12
    raw = cdpruner_raw_relevance(cosine)  # [B, N]
    assert rel_err(raw, case(f"{prefix}/relevance_raw")) <= 1e-12
    relevance = cdpruner_relevance(image_embeds, text_embeds, joint=joint)  # [B, N]
    assert relevance.dtype == torch.float64
    assert rel_err(relevance, case(f"{prefix}/relevance")) <= 1e-12

    similarity = cdpruner_similarity(case(f"{group}/features"))  # [B, N, N]
    if f"{group}/similarity" in golden_tensors("cdpruner"):
        assert rel_err(similarity, case(f"{group}/similarity")) <= 1e-12
    kernel = cdpruner_kernel(similarity, relevance)  # [B, N, N]
    assert rel_err(torch.diagonal(kernel, dim1=1, dim2=2), case(f"{prefix}/kernel_diag")) <= 1e-12
    if f"{prefix}/kernel" in golden_tensors("cdpruner"):
        assert rel_err(kernel, case(f"{prefix}/kernel")) <= 1e-12


@pytest.mark.parametrize("group,text,k", CASES, ids=[f"{g}-M{t}-k{k}" for g, t, k in CASES])
def test_parity_selection_float64(group, text, k):
    prefix = f"{group}/M{text}/k{k}"
    features = case(f"{group}/features")  # [B, N, D]
    text_embeds, joint = question(group, text)
    relevance = cdpruner_relevance(case(f"{group}/image_embeds"), text_embeds, joint=joint)  # [B, N]
    order = cdpruner_select(features, relevance, k)  # [B, k]
    assert order.dtype == torch.long and order.shape == (features.shape[0], k)
    assert torch.equal(order, case(f"{prefix}/idx_order"))
    kept = order.sort(dim=1).values  # [B, k] the official mask's tokens, ascending
    assert torch.equal(kept, case(f"{prefix}/idx_sorted"))

    kernel = cdpruner_kernel(cdpruner_similarity(features), relevance)
    greedy_order, gain = cdpruner_greedy_map(kernel, k)
    assert torch.equal(greedy_order, order)
    assert rel_err(gain, case(f"{prefix}/gain")) <= 1e-12

    name = f"{prefix}/kept_features"
    expected = case(name) if name in golden_tensors("cdpruner") else gather_tokens(features, case(f"{prefix}/idx_sorted"))
    assert rel_err(gather_tokens(features, kept), expected) <= 1e-12

    # the distinct deviation agrees wherever the official run is not degenerate (all of this set)
    assert torch.equal(cdpruner_select(features, relevance, k, distinct=True), order)


def test_fixture_tie_is_decided_by_lowest_index():
    ties = case("t64/M1p/k1/ties")  # [B, 1]
    assert (ties == 3).all()
    copies = case("t64/tie_positions")  # [B, 3]
    relevance = cdpruner_relevance(case("t64/image_embeds"), case("t64/text_embeds_M1"))
    order = cdpruner_select(case("t64/features"), relevance, 1)  # [B, 1]
    assert torch.equal(order[:, 0], copies.min(dim=1).values)


def test_joint_mode_matters():
    """Per-image normalisation of a common question changes most of the joint cases."""
    features, image_embeds = case("g576/features"), case("g576/image_embeds")
    text_embeds, _ = question("g576", "3j")
    per_image = cdpruner_relevance(image_embeds, text_embeds, joint=False)
    changed = sum(
        not torch.equal(cdpruner_select(features, per_image, k), case(f"g576/M3j/k{k}/idx_order"))
        for k in (64, 128, 192)
    )
    assert changed >= 1
    assert rel_err(per_image, case("g576/M3j/relevance")) > 1e-6


@pytest.mark.parametrize("group,m", [("g576", 3), ("g64", 2)])
def test_groups_normalise_like_one_joint_call_per_image(group, m):
    """LLaVA-1.6 batched: rows grouped by image (each image its crops and its question) get exactly the
    relevance of one joint call per image; one group is the plain joint call."""
    image_embeds = case(f"{group}/image_embeds")  # [2, N, E] two crops of one image
    text = case(f"{group}/text_embeds_M{m}")  # [2, M, E]: question 0, question 1
    joint = cdpruner_relevance(image_embeds, text[:1], joint=True)  # [2, N] the fixture's joint mode
    torch.testing.assert_close(joint, case(f"{group}/M{m}j/relevance"), rtol=1e-12, atol=0)
    one_group = cdpruner_relevance(image_embeds, text[:1].expand(2, -1, -1), joint=True, groups=torch.zeros(2, dtype=torch.long))
    assert torch.equal(one_group, joint)
    # two images of 2 and 3 crops in one call, crops interleaved, each image with its own question
    crops = torch.cat([image_embeds, image_embeds.flip(1)[:1] * 0.5 + image_embeds[1:] * 0.5, image_embeds.flip(1)])  # [5, N, E]
    groups = torch.tensor([0, 0, 1, 1, 1])
    texts = torch.stack([text[0], text[0], text[1], text[1], text[1]])  # [5, M, E]
    batched = cdpruner_relevance(crops, texts, joint=True, groups=groups)  # [5, N]
    first = cdpruner_relevance(crops[:2], text[:1], joint=True)
    second = cdpruner_relevance(crops[2:], text[1:], joint=True)
    assert torch.equal(batched, torch.cat([first, second]))
    assert not torch.allclose(batched, cdpruner_relevance(crops, texts, joint=True))  # grouping matters


def test_positive_sign_would_change_the_selection():
    features, image_embeds = case("g64/features"), case("g64/image_embeds")
    text_embeds = case("g64/text_embeds_M2")
    flipped = cdpruner_relevance(image_embeds, -text_embeds)  # = normalising +mean cos
    assert not torch.equal(cdpruner_select(features, flipped, 16), case("g64/M2p/k16/idx_order"))


# --------------------------------------------------------------------------- relevance conventions


def test_relevance_sign_and_min_max_by_hand():
    text = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)  # [1, M=1, E=2]
    image = torch.tensor([[[2.0, 0.0], [-3.0, 0.0], [0.0, 5.0]]], dtype=torch.float64)  # cos 1, −1, 0
    raw = cdpruner_raw_relevance(cdpruner_cosine(image, text))
    assert torch.equal(raw, torch.tensor([[-1.0, 1.0, 0.0]], dtype=torch.float64))  # negative cosine
    r = cdpruner_relevance(image, text)
    expected = (torch.tensor([[0.0, 2.0, 1.0]], dtype=torch.float64) + 1e-6) / 2.0  # span 2, 1e-6 on top
    assert torch.allclose(r, expected, rtol=0, atol=1e-15)
    assert (r > 0).all()  # the least text-like token is the most relevant; no token gets 0
    assert int(r.argmax()) == 1 and int(r.argmin()) == 0


@pytest.mark.parametrize("group,text", TEXTS, ids=[f"{g}-M{t}" for g, t in TEXTS])
def test_relevance_range(group, text):
    text_embeds, joint = question(group, text)
    raw = case(f"{group}/M{text}/relevance_raw")  # [B, N]
    r = cdpruner_relevance(case(f"{group}/image_embeds"), text_embeds, joint=joint)
    dims = (0, 1) if joint else (1,)
    span = raw.amax(dim=dims) - raw.amin(dim=dims)  # [] joint (one min–max per call), [B] per image
    assert torch.allclose(r.amin(dim=dims), 1e-6 / span, rtol=1e-12, atol=0)
    assert torch.allclose(r.amax(dim=dims), 1 + 1e-6 / span, rtol=1e-12, atol=0)
    if joint:  # one min–max over the whole call: the extremes sit in different images here or not,
        per_row = cdpruner_normalize_relevance(raw, joint=False)  # but per-row differs from joint
        assert not torch.allclose(per_row, r)


def test_relevance_embed_scale_and_common_question():
    image_embeds = case("g64/image_embeds")
    text_embeds = case("g64/text_embeds_M2")
    base = cdpruner_relevance(image_embeds, text_embeds)
    scaled = cdpruner_relevance(image_embeds * 3.5, text_embeds * 0.25)
    assert rel_err(scaled, base) <= 1e-12  # embeds are L2-normalised
    common = text_embeds[:1]  # [1, M, E] one question for both images
    broadcast = cdpruner_relevance(image_embeds, common, joint=True)
    assert torch.equal(broadcast, cdpruner_relevance(image_embeds, common.expand(2, -1, -1), joint=True))


def test_text_mask_pads_questions_of_different_lengths():
    # t64's one-segment question padded to M = 2 with a masked zero row gives the official relevance
    text = case("t64/text_embeds_M1")  # [B, 1, E]
    padded = torch.cat([text, torch.zeros_like(text)], dim=1)  # [B, 2, E]
    mask = torch.tensor([[True, False], [True, False]])
    r = cdpruner_relevance(case("t64/image_embeds"), padded, text_mask=mask)
    assert torch.isfinite(r).all()
    assert rel_err(r, case("t64/M1p/relevance")) <= 1e-12
    all_valid = cdpruner_relevance(
        case("g64/image_embeds"), case("g64/text_embeds_M2"), text_mask=torch.ones(2, 2, dtype=torch.bool)
    )
    assert rel_err(all_valid, case("g64/M2p/relevance")) <= 1e-12


def test_empty_question_fallback_is_uniform():
    image_embeds = case("g64/image_embeds")  # [2, 64, 32]
    for joint in (False, True):
        empty = cdpruner_relevance(image_embeds, image_embeds.new_zeros(2, 0, 32), joint=joint)  # M = 0
        assert torch.equal(empty, torch.ones(2, 64, dtype=torch.float64))
        masked = cdpruner_relevance(
            image_embeds, case("g64/text_embeds_M2"), joint=joint, text_mask=torch.zeros(2, 2, dtype=torch.bool)
        )
        assert torch.equal(masked, torch.ones(2, 64, dtype=torch.float64))
    # one image without a question: it gets r = 1, the other keeps its own normalisation
    mask = torch.tensor([[True, True], [False, False]])
    for joint in (False, True):
        r = cdpruner_relevance(image_embeds, case("g64/text_embeds_M2"), joint=joint, text_mask=mask)
        assert torch.equal(r[1], torch.ones(64, dtype=torch.float64))
        assert rel_err(r[0], case("g64/M2p/relevance")[0]) <= 1e-12
    # the selection with a uniform relevance is a pure-diversity DPP, finite and distinct
    order = cdpruner_select(case("g64/features"), torch.ones(2, 64, dtype=torch.float64), 16)
    assert all(len(set(row)) == 16 for row in order.tolist())


def test_constant_relevance_fallback():
    one_token = cdpruner_relevance(torch.ones(2, 1, 4), torch.ones(2, 1, 4))  # N = 1: max == min
    assert torch.equal(one_token, torch.ones(2, 1))
    assert torch.equal(cdpruner_select(torch.ones(2, 1, 3), one_token, 1), torch.zeros(2, 1, dtype=torch.long))


# --------------------------------------------------------------------------- batching, device loop


def test_batch_one_equals_batch():
    for group, text, k in CASES:
        if text.endswith("j"):
            continue  # joint mode couples the images through the min–max by design
        features, image_embeds = case(f"{group}/features"), case(f"{group}/image_embeds")
        text_embeds, _ = question(group, text)
        expected = case(f"{group}/M{text}/k{k}/idx_order")
        for b in range(features.shape[0]):
            r = cdpruner_relevance(image_embeds[b : b + 1], text_embeds[b : b + 1])
            assert torch.equal(cdpruner_select(features[b : b + 1], r, k), expected[b : b + 1])


@pytest.mark.parametrize("k", [1, 8, 16, 24, 63])
def test_mixed_batch_of_different_images(k):
    # g64 (two-segment questions) and t64 (one segment, padded + masked) stacked in one call
    rows = [("t64", 1), ("g64", 0), ("t64", 0), ("g64", 1)]
    features = torch.stack([case(f"{g}/features")[b] for g, b in rows])  # [4, 64, 80]
    image_embeds = torch.stack([case(f"{g}/image_embeds")[b] for g, b in rows])  # [4, 64, 32]
    text = {
        "g64": case("g64/text_embeds_M2"),
        "t64": torch.cat([case("t64/text_embeds_M1"), torch.zeros(2, 1, 32, dtype=torch.float64)], 1),
    }
    text_embeds = torch.stack([text[g][b] for g, b in rows])  # [4, 2, 32]
    text_mask = torch.tensor([[g == "g64" or m == 0 for m in range(2)] for g, _ in rows])  # [4, 2]
    relevance = cdpruner_relevance(image_embeds, text_embeds, text_mask=text_mask)  # [4, 64]
    order = cdpruner_select(features, relevance, k)  # [4, k]
    for i, (g, b) in enumerate(rows):
        m = 2 if g == "g64" else 1
        alone = cdpruner_relevance(case(f"{g}/image_embeds")[b : b + 1], case(f"{g}/text_embeds_M{m}")[b : b + 1])
        assert rel_err(relevance[i], alone[0]) <= 1e-12
        assert torch.equal(order[i : i + 1], cdpruner_select(case(f"{g}/features")[b : b + 1], alone, k))
        if k in meta()["groups"][g]["budgets"]:
            assert torch.equal(order[i], case(f"{g}/M{m}p/k{k}/idx_order")[b])


def test_deterministic():
    relevance = case("g576/M3p/relevance")
    first = cdpruner_select(case("g576/features"), relevance, 128)
    for _ in range(2):
        assert torch.equal(cdpruner_select(case("g576/features"), relevance.clone(), 128), first)


@pytest.mark.parametrize("distinct", [False, True])
def test_greedy_loop_has_no_host_sync(distinct):
    kernel = cdpruner_kernel(cdpruner_similarity(case("g64/features")), case("g64/M2p/relevance"))
    with NoHostSync():
        order, _ = cdpruner_greedy_map(kernel, 16, distinct=distinct)
    assert torch.equal(order, case("g64/M2p/k16/idx_order"))
    meta_order, meta_gain = cdpruner_greedy_map(torch.empty(2, 16, 16, device="meta"), 8, distinct=distinct)
    assert meta_order.shape == (2, 8) and meta_gain.shape == (2, 8)


# --------------------------------------------------------------------------- degenerate budgets, dtypes


def _low_rank_inputs(d: int = 2, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    features = torch.randn(2, n, d, generator=g, dtype=torch.float64)  # rank(L) <= d < k
    relevance = torch.rand(2, n, generator=g, dtype=torch.float64) + 0.1
    return features, relevance


def test_degenerate_budget_reproduces_official_nan_repeats():
    """k > rank(L): official d² turn NaN, argmax returns the first NaN, picks alternate 0, 1, 0, 1."""
    features, relevance = _low_rank_inputs()
    kernel = cdpruner_kernel(cdpruner_similarity(features), relevance)
    order, gain = cdpruner_greedy_map(kernel, 8)
    assert torch.equal(cdpruner_select(features, relevance, 8), order)
    assert torch.isnan(gain).any(dim=1).all()
    for row, row_gain in zip(order.tolist(), gain):
        assert len(set(row)) < 8  # the official mask would hold fewer than k tokens
        first_nan = int(torch.isnan(row_gain).to(torch.uint8).argmax())
        assert torch.isnan(row_gain[first_nan:]).all()  # once NaN, every d² stays NaN
        tail = row[first_nan:]  # each pick: the first NaN entry (the last pick is −inf, not NaN)
        assert set(tail) <= {0, 1} and all(a != b for a, b in itertools.pairwise(tail))


def test_distinct_deviation_on_degenerate_budget():
    features, relevance = _low_rank_inputs()
    kernel = cdpruner_kernel(cdpruner_similarity(features), relevance)
    official, gain = cdpruner_greedy_map(kernel, 8)
    distinct, distinct_gain = cdpruner_greedy_map(kernel, 8, distinct=True)
    assert torch.equal(distinct.sort(dim=1).values, torch.arange(8).expand(2, 8))  # every token once
    assert not torch.isnan(distinct_gain).any()
    for b in range(2):  # identical up to (and including) the first step whose d² is not positive
        first_bad = int((~(gain[b] > 0)).to(torch.uint8).argmax())
        assert torch.equal(distinct[b, : first_bad + 1], official[b, : first_bad + 1])
    assert torch.equal(cdpruner_select(features, relevance, 8, distinct=True), distinct)


def test_float32_keeps_the_official_selection():
    """The official code runs in float32; on this set its float32 run selects the float64 tokens."""
    for group, text, k in CASES:
        text_embeds, joint = question(group, text)
        relevance = cdpruner_relevance(case(f"{group}/image_embeds").float(), text_embeds.float(), joint=joint)
        assert relevance.dtype == torch.float32
        order = cdpruner_select(case(f"{group}/features").float(), relevance, k)
        assert torch.equal(order.sort(dim=1).values, case(f"{group}/M{text}/k{k}/idx_sorted")), (group, text, k)


def test_half_inputs_run_in_float32():
    features = case("g64/features").half()
    assert cdpruner_similarity(features).dtype == torch.float32  # normalised in float16, then .float()
    relevance = cdpruner_relevance(case("g64/image_embeds").half(), case("g64/text_embeds_M2").half())
    assert relevance.dtype == torch.float32
    order = cdpruner_select(features, relevance, 16)
    assert order.shape == (2, 16) and all(len(set(row)) == 16 for row in order.tolist())


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("k", [0, -2, 65, 1.0, True, None])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k"):
        cdpruner_select(case("g64/features"), case("g64/M2p/relevance"), k)


def test_k_limit_named():
    with pytest.raises(ValueError, match=r"k \(65\) exceeds the N=64"):
        cdpruner_select(case("g64/features"), case("g64/M2p/relevance"), 65)
    with pytest.raises(ValueError, match=r"k must be >= 1"):
        cdpruner_select(case("g64/features"), case("g64/M2p/relevance"), 0)
    assert cdpruner_select(case("g64/features"), case("g64/M2p/relevance"), 64).shape == (2, 64)  # k = N


def test_bad_selection_inputs():
    features, relevance = case("g64/features"), case("g64/M2p/relevance")
    with pytest.raises(ValueError, match="features"):
        cdpruner_select(features[0], relevance, 4)
    with pytest.raises(ValueError, match="features"):
        cdpruner_select(features.long(), relevance, 4)
    with pytest.raises(ValueError, match="relevance must be"):
        cdpruner_select(features, relevance[:, 1:], 4)
    with pytest.raises(ValueError, match="relevance must be"):
        cdpruner_select(features, relevance[:1], 4)
    with pytest.raises(ValueError, match="relevance"):
        cdpruner_select(features, relevance.unsqueeze(-1), 4)
    bad = relevance.clone()
    bad[0, 3] = float("nan")
    with pytest.raises(ValueError, match="relevance contains NaN"):
        cdpruner_select(features, bad, 4)
    zero = features.clone()
    zero[1, 5] = 0
    with pytest.raises(ValueError, match="zero-norm"):
        cdpruner_select(zero, relevance, 4)


def test_bad_relevance_inputs():
    image_embeds, text_embeds = case("g64/image_embeds"), case("g64/text_embeds_M2")
    with pytest.raises(ValueError, match=r"text_embeds width E=31 does not match image_embeds width E=32"):
        cdpruner_relevance(image_embeds, text_embeds[..., :31])
    with pytest.raises(ValueError, match="text_embeds batch"):
        cdpruner_relevance(image_embeds, torch.cat([text_embeds, text_embeds]))
    with pytest.raises(ValueError, match="text_embeds"):
        cdpruner_relevance(image_embeds, text_embeds[0])
    with pytest.raises(ValueError, match="image_embeds"):
        cdpruner_relevance(image_embeds[0], text_embeds)
    with pytest.raises(ValueError, match="text_mask"):
        cdpruner_relevance(image_embeds, text_embeds, text_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="text_mask"):
        cdpruner_relevance(image_embeds, text_embeds, text_mask=torch.ones(2, 2))
    nan = image_embeds.clone()
    nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="image_embeds contains NaN"):
        cdpruner_relevance(nan, text_embeds)
    zero_text = text_embeds.clone()
    zero_text[1, 1] = 0
    with pytest.raises(ValueError, match="zero-norm segment"):
        cdpruner_relevance(image_embeds, zero_text)
    masked = cdpruner_relevance(image_embeds, zero_text, text_mask=torch.tensor([[True, True], [True, False]]))
    assert torch.isfinite(masked).all()


# --------------------------------------------------------------------------- CLIP side


@lru_cache(maxsize=1)
def load_clip():
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(str(CLIP_DIR)).to(torch.float64).eval()


def test_clip_image_embeds():
    gold = _clip_cases()
    model = load_clip()
    with torch.no_grad():
        out = model.vision_model(pixel_values=gold["pixel_values"].double(), output_hidden_states=True)
        hidden = out.hidden_states[-2]  # [B, 1+16, 16] LLaVA's select layer, CLS first
        assert rel_err(hidden[:, 1:], gold["image_features"]) <= 1e-12  # what the projector receives
        embeds = cdpruner_patch_embeds(hidden, model.vision_model.post_layernorm, model.visual_projection)
        assert embeds.shape == (2, 16, 8)
        assert rel_err(embeds, gold["image_embeds"]) <= 1e-12
        last = cdpruner_patch_embeds(out.hidden_states[-1], model.vision_model.post_layernorm, model.visual_projection)
        assert rel_err(last, gold["image_embeds"]) > 0.1  # the last layer is not what the official code uses


TEXT_LENGTHS = [(9, 1), (77, 1), (78, 2), (154, 2), (160, 3), (240, 4)]


@pytest.mark.parametrize("length,segments", TEXT_LENGTHS)
def test_clip_text_segments_and_embeds(length, segments):
    gold = _clip_cases()
    prefix = f"text/L{length}"
    input_ids = gold[f"{prefix}/input_ids"]  # [L]: BOS, L − 2 ids, EOS
    assert input_ids.shape == (length,) and int(input_ids[0]) == 49406 and int(input_ids[-1]) == 49407
    ids, mask = cdpruner_text_segments(input_ids)  # [M, 77] each
    assert ids.shape == (segments, 77)
    assert torch.equal(ids, gold[f"{prefix}/segment_input_ids"])
    assert torch.equal(mask, gold[f"{prefix}/segment_attention_mask"])
    model = load_clip()
    eos = model.config.text_config.eos_token_id
    assert eos == 2  # the legacy value: pooled at argmax(ids) per segment
    assert torch.equal(cdpruner_pool_positions(ids, eos), gold[f"{prefix}/pool_position"])
    with torch.no_grad():
        pooled = model.text_model(input_ids=ids, attention_mask=mask).pooler_output  # [M, 4]
        text_embeds = model.text_projection(pooled)  # [M, 8]
    assert rel_err(text_embeds, gold[f"{prefix}/text_embeds"]) <= 1e-12


def test_text_segments_edges():
    ids, mask = cdpruner_text_segments(torch.zeros(0, dtype=torch.long))
    assert ids.shape == (0, 77) and mask.shape == (0, 77)  # empty question -> M = 0 -> r = 1
    ids, mask = cdpruner_text_segments(torch.arange(1, 6), context_length=2)
    assert ids.tolist() == [[1, 2], [3, 4], [5, 0]] and mask.tolist() == [[1, 1], [1, 1], [1, 0]]
    with pytest.raises(ValueError, match="input_ids"):
        cdpruner_text_segments(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        cdpruner_text_segments(torch.ones(5, dtype=torch.long), torch.ones(4, dtype=torch.long))


def test_pool_positions_with_fixed_eos_id():
    ids, _ = cdpruner_text_segments(_clip_cases()["text/L160/input_ids"])  # [3, 77]
    first_eos = cdpruner_pool_positions(ids, 49407)  # first EOS, 0 where there is none
    assert first_eos[:2].tolist() == [0, 0] and int(ids[2, first_eos[2]]) == 49407
    legacy = cdpruner_pool_positions(ids, 2)
    assert legacy.tolist() == [0, 73, 5]  # differs only in the middle segment


def test_similarity_dtype_normalises_half_precision_features_in_float32():
    """similarity_dtype: at_least_float32 normalises bfloat16 tokens in float32 (official: in bfloat16)."""
    from sparsezip_lmms.compress.cdpruner import cdpruner_select, cdpruner_similarity
    from sparsezip_lmms.config import load_config

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 40, 24, generator=generator).to(torch.bfloat16)  # [B, N, D]
    relevance = torch.rand(2, 40, generator=generator)  # [B, N]
    wide = cdpruner_similarity(features.float())
    assert torch.equal(cdpruner_similarity(features, torch.float32), wide)
    assert not torch.equal(cdpruner_similarity(features), wide)  # the official bfloat16 normalisation rounds
    order = cdpruner_select(features, relevance, 8, normalize_dtype=torch.float32)
    assert torch.equal(order, cdpruner_select(features.float(), relevance, 8))
    assert load_config("cdpruner_64").similarity_dtype == "model"  # the official behaviour by default
