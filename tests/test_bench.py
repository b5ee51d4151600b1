"""``python -m sparsezip_lmms bench``: the --quick smoke run, section 4 and its eager references.

No time threshold is asserted anywhere: timings depend on the machine and its load. The smoke run
checks that every section is produced and that every ratio is a finite positive number; the eager
references (one per in-LLM method) must keep exactly the tokens our pruning decoder keeps.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from sparsezip_lmms.bench.cli import PRUNING_METHODS, SECTIONS, _parser, settings_from_args
from sparsezip_lmms.bench.eager_pruning import eager_pruned_prefill, eager_sparsevlm_prefill
from sparsezip_lmms.bench.in_llm_section import METHODS, deferred_keep, in_llm_section, kept_tokens_agree, method_config
from sparsezip_lmms.bench.models import LlamaDims, build_llama
from sparsezip_lmms.bench.next_section import NEXT_CONFIGS
from sparsezip_lmms.bench.report import evaluate_targets, pruning_section, render
from sparsezip_lmms.bench.timing import DeviceTimer
from sparsezip_lmms.config import load_config
from sparsezip_lmms.pruning import pruned_generate

REPORT_SECTIONS = ("vision", "compression", "prefill", "pruning", "harness", "next")
# GQA (2 query heads per KV head), head size 64: SparseVLM v2.0's RoPE-only term stays positive over 636
# positions with rope_theta 10000 (at head size 32 or less it changes sign, and the decoder refuses)
TINY = LlamaDims(width=256, mlp=128, heads=4, kv_heads=2, vocab=512)
# (config, overrides): every in-LLM method, both position conventions of deferred pruning, FastV's
# fixed official span, v2.0 with fewer priority heads than the model has
CASES = (
    ("sparsevlm_64", None),
    ("sparsevlm_128", None),
    ("sparsevlm_192", None),
    ("sparsevlm2_64", None),
    ("sparsevlm2_128", {"priority_heads": 2}),
    ("fastv_64", None),
    ("fastv_default", None),
    ("fastv_128", {"span": "fixed"}),
    ("dart_64", None),
    ("dart_128", {"layer": 3, "pivot_image": 2, "pivot_text": 6}),
    ("visionzip_64", {"prune_layer": 3}),
    ("visionzip_128", {"prune_layer": 5, "prune_positions": "contiguous"}),
)


def _ratios(node, path=""):
    """Every (path, value) whose key names a ratio or a speed-up, anywhere in the report."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}"
            if isinstance(value, (dict, list)):
                yield from _ratios(value, where)
            elif ("ratio" in key or "speedup" in key or "_vs_" in key or path.endswith(".ratios")) and not isinstance(value, bool):
                yield where, value
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _ratios(value, f"{path}[{i}]")


def _finite_positive(ratios) -> list:
    return [(w, v) for w, v in ratios if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0)]


@pytest.fixture(scope="module")
def tiny_models():
    return {dtype: build_llama(16, TINY, torch.device("cpu"), dtype) for dtype in (torch.float64, torch.float32)}


def _prompt(seed: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 35 + 576 + 25, TINY.width, generator=g) * 0.5).to(dtype)  # [1, 636, d]


@pytest.mark.e2e
def test_bench_smoke_produces_every_section(tmp_path, capsys):
    """``--smoke``: every section's code path (``--quick``'s settings) on tiny widths."""
    from sparsezip_lmms.__main__ import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--smoke", "--json", str(out), "--workdir", str(tmp_path / "work")]) == 0
    printed = capsys.readouterr().out
    for title in ("### 1.", "### 2.", "### 3.", "### 4.", "### 5.", "### 6.", "### Targets"):
        assert title in printed
    assert "scoring / plain" in printed and "JSON:" in printed

    report = json.loads(out.read_text())
    for section in REPORT_SECTIONS:
        assert section in report, section
        assert report[section], section
    assert report["meta"]["quick"] is True and report["meta"]["smoke"] is True
    assert "SMOKE" in printed
    assert {t["name"] for t in report["targets"]} == {"scoring_capture", "sparsezip_op", "prefill_64", "sparsevlm_vs_eager"}
    assert all(t["measured"] is not None for t in report["targets"])

    ratios = list(_ratios(report))
    assert len(ratios) > 20
    bad = _finite_positive(ratios)
    assert not bad, bad

    vision = report["vision"]["batches"]["1"]
    assert set(vision["times"]) == {"plain", "plain_to_m2", "scoring", "official"}
    assert all(v < 1e-3 for v in vision["agreement"].values())  # both captures compute the same inputs
    configs = {row["config"] for row in report["compression"]["batches"]["1"]["rows"]}
    assert {"visionzip_64", "sparsezip_64", "sparsezip_dynamic", "random_64", "pool_64"} <= configs
    assert {"ablations/merge_off", "ablations/text_space_llm", "divprune_64", "cdpruner_64"} <= configs
    assert not {c for c in configs if c.startswith(("fastv", "sparsevlm"))}  # in-LLM methods: section 4
    selection = {r["config"]: r["selection_ratio_to_clip"] for r in report["compression"]["batches"]["1"]["rows"] if "selection_s" in r}
    assert set(selection) == {f"{m}_{k}" for m in ("divprune", "cdpruner") for k in (64, 128, 192)} | {"divprune_official"}
    rows = report["pruning"]["rows"]
    assert [r["method"] for r in rows] == list(METHODS)
    assert all(r["check"]["kept_identical"] for r in rows)
    harness = report["harness"]["batches"]
    assert set(harness) == {"1", "8"} and all(e["timed_samples"] > 0 for e in harness.values())
    # LLaVA-NeXT shapes: the stock packed sequence of a 672 x 672 image vs every method's NeXT path
    tokens = {r["config"]: r["visual_tokens"] for r in report["next"]["rows"]}
    assert set(tokens) == {"keep_all", *NEXT_CONFIGS}
    assert (tokens["keep_all"], tokens["visionzip_next_320"], tokens["visionzip_next_160"]) == (2928, 320, 160)
    assert tokens["divprune_next_320"] == round(320 / 2880 * 2928)  # the ratio of the packed sequence
    assert 5 * 64 < tokens["cdpruner_next_320"] <= 5 * 64 + 48  # 64 per crop, the 48 row newlines kept
    assert 5 * 32 <= tokens["sparsezip_next_320"] <= 320 and 5 * 32 <= tokens["ablations/next_budget_per_image"] <= 320


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_eager_reference_keeps_the_same_tokens_as_ours(tiny_models, dtype, name, overrides):
    """The official-style eager computation (full L x L attention, one prompt) and our SDPA decoder agree
    exactly on what every pruning layer keeps, and on scores, heads, positions and logits up to rounding."""
    llm = tiny_models[dtype]
    cfg = load_config(name, overrides)
    embeds = _prompt(sum(map(ord, name)) + len(overrides or ()), dtype)
    deferred = getattr(cfg, "prune_layer", 0) > 0
    keep = deferred_keep(1, int(name.rsplit("_", 1)[1]), "cpu") if deferred else None  # [1, 576]
    ours = pruned_generate(llm, embeds, None, torch.tensor([35]), cfg, 1, visual_keep=keep)
    ref = eager_pruned_prefill(llm, embeds, 35, cfg, visual_keep=keep)
    assert ref.method == ours.method
    assert len(ref.kept) == len(ours.pruning_layers)
    for a, b in zip(ours.kept, ref.kept, strict=True):
        assert torch.equal(a[0], b)
    for a, b in zip(ours.scores, ref.scores, strict=True):
        torch.testing.assert_close(a[0], b.to(a.dtype), rtol=1e-4, atol=1e-7, equal_nan=True)
    for a, b in zip(ours.heads, ref.heads, strict=True):
        assert (a is None and b is None) or torch.equal(a[0], b)
    assert ours.visual_tokens_per_layer[0].tolist() == ref.visual_tokens_per_layer
    assert torch.equal(ours.raters[0], ref.raters)
    assert torch.equal(ours.positions[-1][0], ref.positions)  # original ids kept, or renumbered
    tol = 1e-6 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(ours.prefill_logits[0], ref.prefill_logits, rtol=tol, atol=tol)
    report = kept_tokens_agree(llm, embeds, 35, cfg, keep)  # the check the bench reports
    assert report["kept_identical"] and report["kept_counts"] == [int(k.numel()) for k in ref.kept]
    assert report.get("heads_identical", True)


def test_eager_references_follow_each_methods_conventions(tiny_models):
    """Positions: renumbered (v1.5), original (v2.0, FastV, deferred); FastV keeps int(576 R) after K-1."""
    llm = tiny_models[torch.float32]
    embeds = _prompt(9, torch.float32)
    v15 = eager_pruned_prefill(llm, embeds, 35, load_config("sparsevlm_64"))
    assert torch.equal(v15.positions, torch.arange(v15.positions.numel()))
    v2 = eager_pruned_prefill(llm, embeds, 35, load_config("sparsevlm2_64"))
    # layer 15 (the last one, a pruning layer) rotates the 34 tokens kept at layer 6 with their original ids
    assert v2.positions[35 : 35 + 34].tolist() == (35 + v2.kept[1]).tolist() and v2.positions[-1] == 635
    assert all(h is not None and h.numel() == 4 for h in v2.heads)  # 14 priority heads, the model has 4
    fastv = eager_pruned_prefill(llm, embeds, 35, load_config("fastv_default"))
    assert [k.numel() for k in fastv.kept] == [288] and fastv.visual_tokens_per_layer[:2] == [576, 288]
    keep = deferred_keep(1, 64, "cpu")
    deferred = eager_pruned_prefill(llm, embeds, 35, load_config("visionzip_64", {"prune_layer": 3}), visual_keep=keep)
    assert torch.equal(deferred.kept[0], torch.nonzero(keep[0]).flatten())
    assert deferred.visual_tokens_per_layer[:3] == [576, 576, 64] and deferred.positions[-1] == 635


def test_eager_references_reject_batches_and_other_configs():
    llm = build_llama(16, LlamaDims(64, 128, 4, 4, 512), torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="one prompt"):
        eager_sparsevlm_prefill(llm, torch.zeros(2, 700, 64), 35, load_config("sparsevlm_64"))
    with pytest.raises(ValueError, match="one prompt"):
        eager_pruned_prefill(llm, torch.zeros(2, 700, 64), 35, load_config("fastv_64"))
    with pytest.raises(ValueError, match=r"v1\.5"):
        eager_sparsevlm_prefill(llm, torch.zeros(1, 700, 64), 35, load_config("sparsevlm2_64"))
    with pytest.raises(ValueError, match="visual_keep"):
        eager_pruned_prefill(llm, torch.zeros(1, 700, 64), 35, load_config("visionzip_64", {"prune_layer": 3}))
    with pytest.raises(ValueError, match="inside the LLM"):
        eager_pruned_prefill(llm, torch.zeros(1, 700, 64), 35, load_config("visionzip_64"))


def test_in_llm_section_times_every_method_at_batch_1_and_b(tiny_models):
    """The section on a tiny model: one row per method, batch 1 and batch 2, the agreement checks, finite
    positive ratios, the Markdown table and the SparseVLM target."""
    llm = tiny_models[torch.float32]
    out = in_llm_section(llm, TINY, [64], repeats=1, warmup=0, timer=DeviceTimer("cpu"), with_plain=True, batch=2)
    assert out["batch"] == 2 and out["prompt_tokens"] == 636
    rows = out["rows"]
    assert [(r["method"], r["config"]) for r in rows] == [
        ("sparsevlm", "sparsevlm_64"), ("sparsevlm2", "sparsevlm2_64"), ("fastv", "fastv_64"), ("dart", "dart_64"),
        ("deferred", "visionzip_64@L3"),
    ]  # fmt: skip
    for r in rows:
        assert r["check"]["kept_identical"] and r["check"]["batch_row0_kept_identical"], r["config"]
        assert set(r["times"]) == {"ours", "eager", "plain", "ours_b2"}
        assert {"eager_vs_ours", "eager_x2_vs_ours_b2", "speedup_vs_plain", "efficiency_ratio"} <= set(r["ratios"])
        assert r["tokens_per_layer"][0] == 636 and len(r["tokens_per_layer"]) == 16
    assert [r["pruning_layers"] for r in rows] == [[2, 6, 15], [2, 6, 15], [1], [1], [2]]
    assert rows[1]["check"]["heads_identical"]
    assert rows[4]["check"]["kept_counts"] == [64] and rows[2]["check"]["kept_counts"] == [47]
    assert rows[3]["check"]["kept_counts"] == [68]  # DART's official count at "64"
    assert not _finite_positive(_ratios(out))
    json.dumps(out)  # the JSON report

    report = {"meta": _meta(), "pruning": out}
    text = render(report)
    assert "### 4. In-LLM pruning" in text and "2 × eager / ours at batch 2" in text
    for label in ("SparseVLM v1.5", "SparseVLM v2.0", "FastV", "DART", "deferred", "`visionzip_64@L3`"):
        assert label in text
    target = {t["name"]: t for t in evaluate_targets(report)}["sparsevlm_vs_eager"]
    assert target["measured"] == rows[0]["ratios"]["eager_vs_ours"]

    # a report of earlier versions (section "sparsevlm", v1.5 budgets) still renders and feeds the target
    legacy = {k: v for k, v in out.items() if k not in ("rows", "methods", "budgets")}
    legacy["budgets"] = {"64": {k: v for k, v in rows[0].items() if k not in ("config", "method", "budget")}}
    old = {"meta": _meta(), "sparsevlm": legacy}
    assert pruning_section(old)["rows"][0]["config"] == "sparsevlm_64"
    assert "`sparsevlm_64`" in render(old)
    assert {t["name"]: t for t in evaluate_targets(old)}["sparsevlm_vs_eager"]["measured"] == target["measured"]


def _meta() -> dict:
    return {"device": "cpu", "device_name": "cpu", "dtype": "float32", "torch": "t", "transformers": "t",
            "threads": 1, "quick": True, "settings": {"repeats": 1, "warmup": 0}}  # fmt: skip


def test_section_4_options_and_the_sparsevlm_alias():
    def parse(*argv: str):
        return settings_from_args(_parser().parse_args(["--device", "cpu", *argv]))

    assert "pruning" in SECTIONS and "sparsevlm" not in SECTIONS
    assert tuple(PRUNING_METHODS) == tuple(METHODS)
    old = parse("--sections", "sparsevlm", "--sparsevlm-budgets", "64,128", "--sparsevlm-batch", "4", "--no-sparsevlm-plain")
    assert old.sections == ["pruning"] and old.pruning_budgets == [64, 128] and old.pruning_batch == 4
    assert old.pruning_plain is False and old.pruning_methods == list(METHODS)
    assert parse("--sections", "sparsevlm,pruning").sections == ["pruning"]
    new = parse("--sections", "pruning", "--pruning-methods", "fastv,deferred", "--pruning-width", "1024")
    assert new.pruning_methods == ["fastv", "deferred"] and new.pruning_dims["width"] == 1024
    quick = parse("--quick")
    assert quick.pruning_batch == 1 and quick.pruning_plain is False and quick.pruning_dims["width"] == 1024
    smoke = parse("--smoke")
    assert smoke.quick and smoke.smoke and smoke.pruning_batch == 1 and smoke.pruning_llm_layers == 16
    assert smoke.pruning_dims["width"] == 256 and smoke.pruning_dims["width"] // smoke.pruning_dims["heads"] == 64
    assert smoke.clip_overrides["num_hidden_layers"] >= 2 and smoke.llm_dims["width"] == 256
    assert not quick.smoke and quick.clip_overrides is None and quick.llm_dims is None
    default = parse()
    assert default.pruning_batch == 8 and default.pruning_budgets == [64] and default.pruning_llm_layers == 16
    with pytest.raises(SystemExit):
        parse("--pruning-methods", "fastv,nope")
    with pytest.raises(SystemExit):
        parse("--sections", "nope")


@pytest.mark.parametrize("method", METHODS)
def test_method_config(method):
    label, cfg = method_config(method, 128)
    assert label == ("visionzip_128@L3" if method == "deferred" else f"{method}_128")
    if method == "deferred":
        assert cfg.method == "visionzip" and cfg.prune_layer == 3
        keep = deferred_keep(3, 128, "cpu")  # [3, 576], rows differ, fixed by the seed
        assert keep.shape == (3, 576) and keep.sum(dim=1).tolist() == [128] * 3
        assert not torch.equal(keep[0], keep[1]) and torch.equal(keep, deferred_keep(3, 128, "cpu"))
    else:
        assert cfg.method == method
    with pytest.raises(ValueError):
        method_config("nope", 64)


def test_pruned_generate_v15_is_the_eager_v15_prefill(tiny_models):
    llm = tiny_models[torch.float32]
    embeds = _prompt(3, torch.float32)
    cfg = load_config("sparsevlm_64")
    ours = pruned_generate(llm, embeds, None, torch.tensor([35]), cfg, max_new_tokens=1)
    ref = eager_sparsevlm_prefill(llm, embeds, 35, cfg)
    assert all(torch.equal(a[0], b) for a, b in zip(ours.kept, ref.kept, strict=True))


def test_qwen_scoring_capture_matches_the_eager_block_and_the_section_rows():
    """Section 7 on a tiny Qwen2.5-VL tower: our chunked capture and the official-style eager last block
    give the same scores, keys and embeds (images of different sizes in one forward); the section's rows
    carry every time, ratio, size and check; the table renders."""
    from sparsezip_lmms.bench.qwen_section import (
        SMOKE_QWEN_VISION,
        build_qwen_vision,
        capture_tensor_bytes,
        eager_scoring_forward,
        qwen_section,
    )
    from sparsezip_lmms.qwen.vision import vision_forward

    visual = build_qwen_vision(2, torch.device("cpu"), torch.float32, qk_scale=8.0, **SMOKE_QWEN_VISION)
    attn_class = type(visual.blocks[-1].attn)
    grid = torch.tensor([[1, 8, 8], [1, 4, 6], [1, 6, 4]])
    pixels = torch.randn(64 + 24 + 24, 1176, generator=torch.Generator().manual_seed(5))
    ours = vision_forward(visual, pixels, grid, score=True)
    ref = eager_scoring_forward(visual, pixels, grid)
    assert type(visual.blocks[-1].attn) is attn_class  # the eager module is swapped back
    assert ours.counts == ref.counts == (16, 6, 6)
    assert float(ref.scores.std()) > 0.05  # distinct scores, not a uniform attention
    torch.testing.assert_close(ours.scores, ref.scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.keys, ref.keys, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.embeds, ref.embeds, rtol=1e-4, atol=1e-5)
    sums = [float(s.sum()) for s in ref.scores.split(list(ref.counts))]
    assert sums == pytest.approx([16, 6, 6], rel=1e-5)  # per-image block mask: each image's scores sum to N

    # largest attention tensor: ours one chunk of 2^25 elements at most, eager [H, S, S] float32
    assert capture_tensor_bytes(1024, 16) == (16 * 1024 * 1024 * 4, 16 * 1024 * 1024 * 4)
    assert capture_tensor_bytes(4096, 16) == (16 * 512 * 4096 * 4, 16 * 4096 * 4096 * 4)

    out = qwen_section("cpu", torch.float32, [1, 2], repeats=1, warmup=0, timer=DeviceTimer("cpu"), smoke=True)
    assert out["model"]["fullatt_block_indexes"] == [out["model"]["depth"] - 1] and out["dtype"] == "float32"
    assert [(r["image_px"], r["batch"]) for r in out["rows"]] == [(112, 1), (112, 2)]
    for r in out["rows"]:
        assert r["patches_per_image"] == 64 and r["merged_per_image"] == 16
        assert set(r["times"]) == {"plain", "ours", "eager", "block_sdpa", "block_ours", "block_eager"}
        assert all(t["n"] == 1 for t in r["times"].values())
        assert set(r["ratios"]) == {"ours_vs_plain", "eager_vs_plain", "eager_vs_ours", "block_ours_vs_sdpa", "block_eager_vs_ours"}
        assert r["check"]["scores_allclose"] and r["check"]["scores_max_abs_diff"] < 1e-4
        big = r["memory"]["largest_attention_bytes"]
        assert big == {"ours": 4 * 64 * 64 * 4, "eager": 4 * 64 * 64 * 4} and r["memory"]["cuda_peak_bytes"] is None
    assert [a["image_px"] for a in out["analytic_memory"]] == [448, 896, 1344, 1792]
    assert not _finite_positive(_ratios(out))
    json.dumps(out)

    assert "qwen" in SECTIONS
    text = render({"meta": _meta(), "qwen": out})
    assert "### 7. Qwen2.5-VL scoring capture" in text and "| 112×112 (64) | 2 |" in text
