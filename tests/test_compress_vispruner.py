"""VisPruner: parity with golden selections of the official code, the generalisation, batching, edges.

Fixtures in ``tests/data/vispruner/`` (copies of the public golden set, see its README): the official
VisPruner selection (Theia-4869/VisPruner aefa01a, ``encode_images``) run in float64 on the scoring
inputs of the VisionZip golden images (B = 3, N = 576 patches, C = 64, H = 4). ``meta.json`` lists the
settings (T, r); two of them (T64_r0.3, T1_r0.5) make the official code fail (``official_error``).
The copy leaves out the set's ``pixel_values`` (4 MB; the selection starts from the CLIP states).
"""

from __future__ import annotations

import pytest
import torch

from _compress_helpers import NoHostSync, golden_meta, golden_tensors

from sparsezip_lmms.compress.vispruner import (
    vispruner_diverse,
    vispruner_important,
    vispruner_official_failure,
    vispruner_problem,
    vispruner_round,
    vispruner_schedule,
    vispruner_select,
    vispruner_split,
)

N = 576
SETTINGS = golden_meta("vispruner")["settings"]
OK = [s for s in SETTINGS if "official_error" not in s]
FAILING = [s for s in SETTINGS if "official_error" in s]


def golden_inputs(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    c = golden_tensors("vispruner")
    return c["hidden_minus2"][:, 1:].to(dtype), c["cls_attn_row"][:, :, 1:].to(dtype)  # [3, N, C], [3, H, N]


def golden(tag: str, name: str) -> torch.Tensor:
    return golden_tensors("vispruner")[f"{tag}/{name}"]


def assert_valid_selection(kept: torch.Tensor, b: int, tokens: int, n: int = N) -> None:
    assert kept.dtype == torch.long and tuple(kept.shape) == (b, tokens)
    assert bool((kept >= 0).all()) and bool((kept < n).all())
    assert bool((kept[:, 1:] > kept[:, :-1]).all())  # strictly ascending: distinct


def reference_select(features: torch.Tensor, cls_attn: torch.Tensor, tokens: int, ratio: float) -> list[int]:
    """One image, plain Python lists, from the README's rules plus the ceil generalisation."""
    t_imp = int(tokens * ratio)
    t_div = tokens - t_imp
    scores = cls_attn.double().mean(0).tolist()
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable
    important, residual = order[:t_imp], order[t_imp:]
    unit = features.double() / features.double().norm(dim=-1, keepdim=True)
    while t_div > 0:
        drop = min(8, len(residual) - t_div, (len(residual) + 1) // 2)
        if drop <= 0:
            break
        a, b = residual[0::2], residual[1::2]
        sim = (unit[a] @ unit[b].T).max(dim=1).values.tolist()
        ranked = sorted(range(len(a)), key=lambda i: -sim[i])[drop:]
        residual = [a[i] for i in ranked] + b
    return sorted(important + (residual if t_div > 0 else []))


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("s", OK, ids=[s["tag"] for s in OK])
def test_parity_float64(s):
    features, cls_attn = golden_inputs()
    expected = golden(s["tag"], "kept_idx")  # [3, T]
    assert vispruner_split(s["T"], s["r"]) == (s["important"], s["diverse"])
    assert torch.equal(vispruner_select(features, cls_attn, s["T"], s["r"]), expected)  # batch of 3
    assert torch.equal(vispruner_select(features, cls_attn, s["T"], s["r"], odd="error"), expected)
    for i in range(3):  # each image alone
        assert torch.equal(vispruner_select(features[i : i + 1], cls_attn[i : i + 1], s["T"], s["r"]), expected[i : i + 1])
    important, _ = vispruner_important(cls_attn, s["important"])
    assert torch.equal(important.sort(dim=1).values, golden(s["tag"], "important_idx"))
    mask = torch.zeros(3, N, dtype=torch.bool).scatter(1, expected, True)
    assert torch.equal(mask, golden(s["tag"], "kept_mask"))


def test_official_failure_replay_matches_golden_meta():
    for s in OK:
        assert vispruner_official_failure(s["T"], s["r"], N) is None, s["tag"]
    for s in FAILING:
        message = vispruner_official_failure(s["T"], s["r"], N)
        assert message is not None and s["official_error"].split(":")[0] in message, (s["tag"], message)
    assert "odd" in vispruner_official_failure(64, 0.3, N)  # 557 residual tokens
    assert "RuntimeError" in vispruner_official_failure(64, 1.0, N)  # T_div = 0: the official loop over-drops
    assert "b is empty" in vispruner_official_failure(575, 1.0, N)  # R = 1
    assert "silently" in vispruner_official_failure(6, 0.4, N)  # R = 7, drop = 3: one a token lost, no error
    assert vispruner_official_failure(3, 0.0, N) is None  # R = 8, drop = 5 > 4 a tokens: size −1 broadcasts
    assert vispruner_official_failure(N, 1.0, N) is None


@pytest.mark.parametrize("s", FAILING, ids=[s["tag"] for s in FAILING])
def test_generalisation_runs_where_official_fails(s):
    features, cls_attn = golden_inputs()
    kept = vispruner_select(features, cls_attn, s["T"], s["r"])
    assert_valid_selection(kept, 3, s["T"])
    important, _ = vispruner_important(cls_attn, int(s["T"] * s["r"]))
    assert bool(torch.isin(important, kept).all())
    for i in range(3):
        assert kept[i].tolist() == reference_select(features[i], cls_attn[i], s["T"], s["r"])
    with pytest.raises(ValueError, match="official code raises"):
        vispruner_select(features, cls_attn, s["T"], s["r"], odd="error")


@pytest.mark.parametrize("tokens,ratio", [(6, 0.4), (575, 1.0), (64, 1.0)])
def test_error_mode_refuses_every_official_failure(tokens, ratio):
    features, cls_attn = golden_inputs()
    assert_valid_selection(vispruner_select(features, cls_attn, tokens, ratio), 3, tokens)
    with pytest.raises(ValueError, match="official code"):
        vispruner_select(features, cls_attn, tokens, ratio, odd="error")


# --------------------------------------------------------------------------- rules and schedule


def test_schedule():
    assert vispruner_split(64, 0.3) == (19, 45) and vispruner_split(1, 0.5) == (0, 1)
    assert vispruner_split(3, 0.7) == (int(3 * 0.7), 3 - int(3 * 0.7))
    for s in OK:  # official settings: R even and drop <= R // 2 in every round
        rounds = vispruner_schedule(s["T"], s["r"], N)
        assert all(r % 2 == 0 and 0 < d <= min(8, r // 2) for r, d in rounds)
        assert sum(d for _, d in rounds) == N - s["T"]
    assert any(r % 2 for r, _ in vispruner_schedule(64, 0.3, N))
    assert vispruner_schedule(1, 0.5, N)[-4:] == [(16, 8), (8, 4), (4, 2), (2, 1)]  # over-drop clamped
    assert vispruner_schedule(3, 0.0, N)[-3:] == [(16, 8), (8, 4), (4, 1)]  # as the official size −1 broadcast
    assert vispruner_schedule(64, 1.0, N) == [] and vispruner_schedule(N, 0.5, N) == []


@pytest.mark.parametrize("tokens,ratio", [(64, 0.3), (1, 0.5), (2, 0.5), (7, 0.0), (9, 0.25), (20, 0.5), (63, 0.0), (6, 0.4)])
def test_batched_matches_per_image_reference(tokens, ratio):
    g = torch.Generator().manual_seed(tokens)
    b, n = 3, 80
    features = torch.randn(b, n, 16, generator=g, dtype=torch.float64)
    cls_attn = (3 * torch.randn(b, 4, n + 1, generator=g, dtype=torch.float64)).softmax(-1)[:, :, 1:]
    kept = vispruner_select(features, cls_attn, tokens, ratio)
    assert_valid_selection(kept, b, tokens, n)
    for i in range(b):
        assert kept[i].tolist() == reference_select(features[i], cls_attn[i], tokens, ratio)


def test_edges_all_important_all_diverse_all_kept():
    features, cls_attn = golden_inputs()
    important, _ = vispruner_important(cls_attn, 64)
    assert torch.equal(vispruner_select(features, cls_attn, 64, 1.0), important.sort(dim=1).values)  # T_div = 0
    assert_valid_selection(vispruner_select(features, cls_attn, 64, 0.0), 3, 64)
    assert torch.equal(vispruner_select(features, cls_attn, N, 0.3), torch.arange(N).expand(3, N))
    kept = vispruner_select(features, cls_attn, 1, 0.5)
    assert_valid_selection(kept, 3, 1)


def test_ties_are_stable():
    features = torch.ones(2, 10, 4, dtype=torch.float64)  # every pair identical: cosine 1 everywhere
    cls_attn = torch.full((2, 3, 10), 0.1, dtype=torch.float64)
    assert vispruner_select(features, cls_attn, 4, 1.0).tolist() == [[0, 1, 2, 3]] * 2
    # residual 0..9: a = 0,2,4,6,8 (all score 1), the first 5 of a dropped -> b = 1,3,5,7,9, then 1,5,9 / 3,7 ...
    assert vispruner_select(features, cls_attn, 5, 0.0).tolist() == [[1, 3, 5, 7, 9]] * 2


def test_no_host_sync_in_rounds():
    features, cls_attn = golden_inputs()
    t_imp, t_div = vispruner_split(64, 0.5)
    _, residual = vispruner_important(cls_attn, t_imp)
    unit = features / features.norm(dim=-1, keepdim=True)
    with NoHostSync():
        diverse = vispruner_diverse(unit, residual, t_div)
    assert tuple(diverse.shape) == (3, t_div)


# --------------------------------------------------------------------------- dtypes, devices


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_lower_precision_inputs(dtype):
    features, cls_attn = golden_inputs(dtype)
    for tokens, ratio in [(64, 0.5), (64, 0.3), (1, 0.5)]:
        assert_valid_selection(vispruner_select(features, cls_attn, tokens, ratio), 3, tokens)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    features, cls_attn = golden_inputs()
    kept = vispruner_select(features.cuda(), cls_attn.cuda(), 128, 0.5)
    assert kept.is_cuda and torch.equal(kept.cpu(), golden("T128_r0.5", "kept_idx"))
    half = vispruner_select(features.cuda().half(), cls_attn.cuda().half(), 64, 0.3)
    assert_valid_selection(half.cpu(), 3, 64)


# --------------------------------------------------------------------------- validation


def test_problem_messages():
    assert vispruner_problem(64, 0.5, N) is None and vispruner_problem(64, 0.3, N) is None
    assert "tokens" in vispruner_problem(0, 0.5, N)
    assert "tokens" in vispruner_problem(N + 1, 0.5, N)
    assert "tokens" in vispruner_problem(3.0, 0.5, N)
    assert "important_ratio" in vispruner_problem(64, -0.1, N)
    assert "important_ratio" in vispruner_problem(64, 1.5, N)
    assert "important_ratio" in vispruner_problem(64, float("nan"), N)
    assert "n_patches" in vispruner_problem(64, 0.5, 0)


def test_invalid_inputs_raise():
    features, cls_attn = golden_inputs()
    bad = [
        ((features[0], cls_attn), "features"),
        ((features.long(), cls_attn), "features"),
        ((features, cls_attn[:, 0]), "cls_attn"),
        ((features, cls_attn[:, :, 1:]), "cls_attn"),
        ((features, cls_attn[:2]), "cls_attn"),
        ((features, cls_attn.tolist()), "cls_attn"),
    ]
    for args, name in bad:
        with pytest.raises(ValueError, match=name):
            vispruner_select(*args, 64, 0.5)
    for tokens, ratio, name in [(0, 0.5, "tokens"), (N + 1, 0.5, "tokens"), (True, 0.5, "tokens"), (64.0, 0.5, "tokens"),
                                (64, -0.5, "important_ratio"), (64, 1.01, "important_ratio"), (64, "x", "important_ratio")]:
        with pytest.raises(ValueError, match=name):
            vispruner_select(features, cls_attn, tokens, ratio)
    with pytest.raises(ValueError, match="odd"):
        vispruner_select(features, cls_attn, 64, 0.5, odd="floor")
    with pytest.raises(ValueError, match="features"):
        vispruner_select(features.clone().index_fill_(1, torch.tensor([5]), float("nan")), cls_attn, 64, 0.5)


def test_round_with_empty_b_does_not_crash():
    similarity = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)  # [B, N, N] cosines of 3 orthogonal patches
    residual = torch.tensor([[2], [0]])
    assert vispruner_round(similarity, residual, 1).shape == (2, 0)
    assert torch.equal(vispruner_round(similarity, residual, 0), residual)
