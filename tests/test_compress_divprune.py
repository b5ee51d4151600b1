"""DivPrune: parity with golden outputs of the official code, official quirks, batching, edge cases.

Fixtures in ``tests/data/divprune/``: outputs of the official DivPrune (vbdi/divprune 799e2d9,
``LlavaMetaForCausalLM.DivPrune``) run unchanged in float64, one image at a time, on synthetic
post-projector tokens (N = 576). ``cases.safetensors`` is a reduced copy: ``kept_features`` of the
k = 128 / 192 budgets are left out (they are bitwise ``features[b, idx_sorted[b]]``, checked when the
copy was written). Groups: ``g0`` (B=3, D=64), ``g1`` (B=2, D=96) smooth tokens without ties; ``t0``
(B=2, D=64) 300 distinct ±1 lattice vectors + 276 exact duplicates: exact ties everywhere, and the
official code repeats index 0 once every distinct vector is chosen (k = 301, 575).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _compress_helpers import NoHostSync, frobenius_rel_err, golden_meta, golden_tensors

from sparsezip_lmms.compress.divprune import (
    divprune_budget,
    divprune_distance,
    divprune_greedy,
    divprune_keep_positions,
    divprune_select,
    divprune_select_ragged,
    divprune_step0_scores,
)

DATA = Path(__file__).parent / "data" / "divprune"
IMAGE_TOKEN = -200  # LLaVA's image placeholder id
SYS_TOKEN_LEN = 35  # the official hard-coded start of the image in the merged sequence


def meta() -> dict:
    return golden_meta("divprune")


def case(name: str) -> torch.Tensor:
    return golden_tensors("divprune")[name].clone()


rel_err = frobenius_rel_err


CASES = [(g, k) for g, info in meta()["groups"].items() for k in info["budgets"]]  # 14 (group, k)
REPEAT_CASES = {("t0", 301), ("t0", 575)}  # where the official code picks a chosen token again


def gather_tokens(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """features [B, N, D], index [B, k] -> [B, k, D]."""
    return features.gather(1, index.unsqueeze(-1).expand(-1, -1, features.shape[-1]))


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("group,k", CASES, ids=[f"{g}-k{k}" for g, k in CASES])
def test_parity_float64(group, k):
    features = case(f"{group}/features")  # [B, N, D] float64
    order = divprune_select(features, k)  # [B, k]
    assert order.dtype == torch.long and order.shape == (features.shape[0], k)
    assert torch.equal(order, case(f"{group}/k{k}/idx_order"))
    kept = order.sort(dim=1).values  # [B, k] the order LLaVA keeps
    assert torch.equal(kept, case(f"{group}/k{k}/idx_sorted"))

    distance = divprune_distance(features)  # [B, N, N]
    assert rel_err(divprune_step0_scores(distance), case(f"{group}/score_step0")) <= 1e-12
    greedy_order, gain = divprune_greedy(distance, k)
    assert torch.equal(greedy_order, order)
    assert rel_err(gain, case(f"{group}/k{k}/gain")) <= 1e-12

    name = f"{group}/k{k}/kept_features"
    expected = case(name) if name in golden_tensors("divprune") else gather_tokens(features, case(f"{group}/k{k}/idx_sorted"))
    assert rel_err(gather_tokens(features, kept), expected) <= 1e-12


def test_fixture_covers_ties_and_repeats():
    """The set exercises the tie rule and the no-masking quirk (so parity above proves both)."""
    for k in (1, 64, 192, 300, 301, 575):
        assert (case(f"t0/k{k}/ties") > 1).any()  # exact ties decided by the lowest-index rule
    for group, k in CASES:
        order = case(f"{group}/k{k}/idx_order")
        has_repeat = any(len(set(row)) < k for row in order.tolist())
        assert has_repeat == ((group, k) in REPEAT_CASES)


def test_tie_goes_to_lowest_index():
    features = case("t0/features")
    score = divprune_step0_scores(divprune_distance(features))  # [B, N]
    ties = score == score.max(dim=1, keepdim=True).values  # [B, N]
    first = ties.to(torch.uint8).argmax(dim=1)  # lowest index among the maxima
    assert (ties.sum(1) > 1).all()
    assert torch.equal(divprune_select(features, 1)[:, 0], first)


@pytest.mark.parametrize("k,repeats", [(301, 1), (575, 275)])
def test_official_repeats_index_zero_after_distinct_vectors(k, repeats):
    order = divprune_select(case("t0/features"), k)  # [2, k]
    info = meta()["groups"]["t0"]["cases"][f"k{k}"]
    for b, row in enumerate(order):
        first_repeat = info["first_repeat_step"][b]
        assert first_repeat == 300
        assert len(set(row[:first_repeat].tolist())) == first_repeat  # 300 distinct vectors first
        assert (row[first_repeat:] == 0).all()  # then index 0 for every remaining step
        assert row.numel() - len(set(row.tolist())) == repeats == info["repeats"][b]


def test_mask_chosen_deviation():
    for group, k in CASES:
        features = case(f"{group}/features")
        masked = divprune_select(features, k, mask_chosen=True)
        official = case(f"{group}/k{k}/idx_order")
        if (group, k) in REPEAT_CASES:
            assert torch.equal(masked[:, :300], official[:, :300])  # same until the official repeat
            assert all(len(set(row)) == k for row in masked.tolist())  # k distinct picks
        else:
            assert torch.equal(masked, official)
    # k = N with masking: every token exactly once
    full = divprune_select(case("t0/features"), 576, mask_chosen=True)
    assert torch.equal(full.sort(dim=1).values, torch.arange(576).expand(2, 576))


# --------------------------------------------------------------------------- batching


@pytest.mark.parametrize("group,k", CASES, ids=[f"{g}-k{k}" for g, k in CASES])
def test_batch_one_equals_batch(group, k):
    features = case(f"{group}/features")  # [B, N, D]
    expected = case(f"{group}/k{k}/idx_order")  # [B, k]
    for b in range(features.shape[0]):
        assert torch.equal(divprune_select(features[b : b + 1], k), expected[b : b + 1])


@pytest.mark.parametrize("k", [1, 64, 192, 575])
def test_mixed_batch_of_different_images(k):
    # g0 and t0 share D = 64: interleave smooth and lattice images in one batch
    rows = [("t0", 1), ("g0", 0), ("t0", 0), ("g0", 2), ("g0", 1)]
    features = torch.stack([case(f"{g}/features")[b] for g, b in rows])  # [5, 576, 64]
    expected = torch.stack([case(f"{g}/k{k}/idx_order")[b] for g, b in rows])  # [5, k]
    assert torch.equal(divprune_select(features, k), expected)


@pytest.mark.parametrize("mask_chosen", [False, True])
def test_ragged_batch_equals_each_image_alone(mask_chosen):
    """Images of different lengths padded into one batch (LLaVA-NeXT's packed sequences): each row
    equals the official selection on its own tokens; padding is never picked, even where its zero
    vectors make the distances NaN. The lattice image (t0) keeps its exact ties and official repeats."""
    rows = [("t0", 1, 576, 301), ("g0", 0, 400, 44), ("t0", 0, 333, 0), ("g0", 2, 576, 575), ("g0", 1, 17, 16)]
    lengths = torch.tensor([n for _, _, n, _ in rows])
    budgets = torch.tensor([k for *_, k in rows])
    features = torch.zeros(len(rows), 576, 64, dtype=torch.float64)  # [5, 576, 64] zero padding
    for i, (g, b, n, _) in enumerate(rows):
        features[i, :n] = case(f"{g}/features")[b, :n]
    valid = torch.arange(576)[None, :] < lengths[:, None]  # [5, 576]
    order = divprune_select_ragged(features, valid, budgets, mask_chosen=mask_chosen)  # [5, 575]
    assert order.shape == (5, 575)
    for i, (_, _, n, k) in enumerate(rows):
        alone = divprune_select(features[i : i + 1, :n], k, mask_chosen=mask_chosen)[0]  # [k]
        assert torch.equal(order[i, :k], alone)
        assert bool((order[i, k:] == -1).all())
    if not mask_chosen:
        assert torch.equal(order[0, :301], case("t0/k301/idx_order")[1])  # the official repeat of index 0


def test_ragged_batch_refuses_bad_budgets():
    features = case("g0/features")[:2]
    valid = torch.ones(2, 576, dtype=torch.bool)
    valid[1, 100:] = False
    with pytest.raises(ValueError, match="valid tokens per row"):
        divprune_select_ragged(features, valid, torch.tensor([10, 101]))
    with pytest.raises(ValueError, match="k must be a long tensor"):
        divprune_select_ragged(features, valid, [10, 10])
    features = features.clone()
    features[1, 5] = 0.0
    with pytest.raises(ValueError, match="zero-norm"):
        divprune_select_ragged(features, valid, torch.tensor([10, 10]))
    features[1, 300] = 0.0  # padding may be zero
    features[1, 5] = 1.0
    divprune_select_ragged(features, valid, torch.tensor([10, 10]))


def test_deterministic():
    features = case("g1/features")
    first = divprune_select(features, 128)
    for _ in range(3):
        assert torch.equal(divprune_select(features.clone(), 128), first)


@pytest.mark.parametrize("mask_chosen", [False, True])
def test_greedy_loop_has_no_host_sync(mask_chosen):
    distance = divprune_distance(case("g0/features"))
    with NoHostSync():
        order, _ = divprune_greedy(distance, 64, mask_chosen=mask_chosen)
    assert torch.equal(order, case("g0/k64/idx_order"))
    # on the meta device no value can be read at all
    meta_order, meta_gain = divprune_greedy(torch.empty(2, 16, 16, device="meta"), 8, mask_chosen=mask_chosen)
    assert meta_order.shape == (2, 8) and meta_gain.shape == (2, 8)


# --------------------------------------------------------------------------- dtypes


def test_float32_keeps_the_official_order():
    """README: the official code in float32 gives the float64 order on every case; so does this one."""
    for group, k in CASES:
        order = divprune_select(case(f"{group}/features").float(), k)
        assert torch.equal(order, case(f"{group}/k{k}/idx_order")), (group, k)


def test_input_dtype_by_default_and_compute_dtype():
    features = case("g0/features")
    assert divprune_distance(features.half()).dtype == torch.float16  # official: no cast
    half = divprune_select(features.half(), 64)
    assert half.shape == (3, 64)
    wide = divprune_select(features.half(), 64, compute_dtype=torch.float64)
    assert torch.equal(wide, divprune_select(features.half().double(), 64))
    assert torch.equal(
        divprune_select(features.float(), 64, compute_dtype=torch.float64),
        divprune_select(features.float().double(), 64),
    )


# --------------------------------------------------------------------------- budget, LLaVA wiring


def test_budget_rule_official_table():
    n = meta()["ratio_to_k_N"]
    for ratio, k in meta()["ratio_to_k"].items():
        assert divprune_budget(float(ratio), n) == k
    assert divprune_budget(0.098, 576) == 56  # the published scripts' SUBSET_RATIO
    assert divprune_budget(4.5 / 576, 576) == 4 and divprune_budget(5.5 / 576, 576) == 6  # half to even
    for info in meta()["groups"].values():
        for name, c in info["cases"].items():
            assert divprune_budget(c["ratio"], info["N"]) == c["k_from_ratio"] == int(name[1:])


def test_budget_zero_keeps_no_image_token():
    features = case("g0/features")
    order = divprune_select(features, divprune_budget(0.0, 576))
    assert order.shape == (3, 0) and order.dtype == torch.long
    keep = divprune_keep_positions(order, SYS_TOKEN_LEN, 576, 631)
    assert torch.equal(keep[0], torch.cat([torch.arange(35), torch.arange(611, 631)]))


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan"), float("inf")])
def test_bad_ratio(ratio):
    with pytest.raises(ValueError, match="ratio"):
        divprune_budget(ratio, 576)


@pytest.mark.parametrize("name", ["llava/g0_b0_k64", "llava/t0_b0_k301"])
def test_llava_keep_index(name):
    group, b, k = name.split("/")[1].split("_")
    b, k = int(b[1:]), int(k[1:])
    input_ids = case(f"{name}/input_ids")  # [1, 36 + n]
    assert int(input_ids[0, SYS_TOKEN_LEN]) == IMAGE_TOKEN
    n_text = input_ids.shape[1] - SYS_TOKEN_LEN - 1
    length = SYS_TOKEN_LEN + 576 + n_text  # merged sequence: 35 leading, 576 image, n text
    assert length == meta()["llava"][name]["seq_len_in"]
    order = divprune_select(case(f"{group}/features")[b : b + 1], k)  # [1, k]
    keep = divprune_keep_positions(order, SYS_TOKEN_LEN, 576, length)  # [1, 35 + k + n]
    assert torch.equal(keep[0], case(f"{name}/keep_index"))
    assert keep.shape[1] == meta()["llava"][name]["seq_len_out"]
    if k == 301:
        assert int((keep[0] == SYS_TOKEN_LEN).sum()) == 2  # the repeated token is kept twice


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("k", [-1, 577, 2.0, True, None])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k"):
        divprune_select(case("g0/features"), k)


def test_k_limit_named():
    with pytest.raises(ValueError, match=r"k \(577\) exceeds the N=576"):
        divprune_select(case("g0/features"), 577)
    assert divprune_select(case("g0/features")[:1], 576).shape == (1, 576)  # k = N is allowed


def test_bad_features():
    features = case("g0/features")
    with pytest.raises(ValueError, match="features"):
        divprune_select(features[0], 4)
    with pytest.raises(ValueError, match="features"):
        divprune_select(features.long(), 4)
    with pytest.raises(ValueError, match="N>=2"):
        divprune_select(features[:, :1], 1)
    with pytest.raises(ValueError, match="features"):
        divprune_select([[1.0]], 1)
    bad = features.clone()
    bad[1, 7, 3] = float("nan")
    with pytest.raises(ValueError, match="features contains NaN"):
        divprune_select(bad, 4)
    zero = features.clone()
    zero[2, 11] = 0
    with pytest.raises(ValueError, match="zero-norm"):
        divprune_select(zero, 4)
    with pytest.raises(ValueError, match="compute_dtype"):
        divprune_select(features, 4, compute_dtype=torch.int32)
