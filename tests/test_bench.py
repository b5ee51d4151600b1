"""``python -m sparsezip_lmms bench``: the --quick smoke run, and the eager SparseVLM reference.

No time threshold is asserted anywhere: timings depend on the machine and its load. The smoke run
checks that every section is produced and that every ratio is a finite positive number.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from sparsezip_lmms.bench.models import LlamaDims, build_llama
from sparsezip_lmms.bench.sparsevlm_eager import eager_sparsevlm_prefill
from sparsezip_lmms.bench.sparsevlm_section import kept_tokens_agree
from sparsezip_lmms.config import load_config
from sparsezip_lmms.llava import sparsevlm_generate

SECTIONS = ("vision", "compression", "prefill", "sparsevlm", "harness")


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


@pytest.mark.e2e
def test_bench_quick_produces_every_section(tmp_path, capsys):
    from sparsezip_lmms.__main__ import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--json", str(out), "--workdir", str(tmp_path / "work")]) == 0
    printed = capsys.readouterr().out
    for title in ("### 1.", "### 2.", "### 3.", "### 4.", "### 5.", "### Targets"):
        assert title in printed
    assert "scoring / plain" in printed and "JSON:" in printed

    report = json.loads(out.read_text())
    for section in SECTIONS:
        assert section in report, section
        assert report[section], section
    assert report["meta"]["quick"] is True
    assert {t["name"] for t in report["targets"]} == {"scoring_capture", "sparsezip_op", "prefill_64", "sparsevlm_vs_eager"}
    assert all(t["measured"] is not None for t in report["targets"])

    ratios = list(_ratios(report))
    assert len(ratios) > 20
    bad = [(where, value) for where, value in ratios if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0)]
    assert not bad, bad

    vision = report["vision"]["batches"]["1"]
    assert set(vision["times"]) == {"plain", "plain_to_m2", "scoring", "official"}
    assert all(v < 1e-3 for v in vision["agreement"].values())  # both captures compute the same inputs
    configs = {row["config"] for row in report["compression"]["batches"]["1"]["rows"]}
    assert {"visionzip_64", "sparsezip_64", "sparsezip_dynamic", "random_64", "pool_64"} <= configs
    assert {"ablations/merge_off", "ablations/text_space_llm", "divprune_64", "cdpruner_64"} <= configs
    selection = {r["config"]: r["selection_ratio_to_clip"] for r in report["compression"]["batches"]["1"]["rows"] if "selection_s" in r}
    assert set(selection) == {f"{m}_{k}" for m in ("divprune", "cdpruner") for k in (64, 128, 192)}
    assert report["sparsevlm"]["budgets"]["64"]["check"]["kept_identical"]
    harness = report["harness"]["batches"]
    assert set(harness) == {"1", "8"} and all(e["timed_samples"] > 0 for e in harness.values())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_eager_sparsevlm_keeps_the_same_tokens_as_ours(dtype):
    """The official-style eager computation (full L x L attention) and our SDPA decoder agree exactly."""
    dims = LlamaDims(width=64, mlp=128, heads=4, kv_heads=2, vocab=512)  # GQA: 2 query heads per KV head
    llm = build_llama(16, dims, torch.device("cpu"), dtype)
    g = torch.Generator().manual_seed(0)
    for budget, seed in ((64, 1), (128, 2), (192, 3)):
        cfg = load_config(f"sparsevlm_{budget}")
        embeds = (torch.randn(1, 35 + 576 + 25, dims.width, generator=g) * 0.5).to(dtype)
        ours = sparsevlm_generate(llm, embeds, None, torch.tensor([35]), cfg, max_new_tokens=1)
        ref = eager_sparsevlm_prefill(llm, embeds, 35, cfg)
        assert len(ref.kept) == 3
        for a, b in zip(ours.kept, ref.kept, strict=True):
            assert torch.equal(a[0], b)
        for a, b in zip(ours.scores, ref.scores, strict=True):
            torch.testing.assert_close(a[0], b.to(a.dtype), rtol=1e-4, atol=1e-7)
        assert ours.visual_tokens_per_layer[0].tolist() == ref.visual_tokens_per_layer
        assert torch.equal(ours.raters[0], ref.raters)
        tol = 1e-6 if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(ours.prefill_logits[0], ref.prefill_logits, rtol=tol, atol=tol)
    report = kept_tokens_agree(llm, embeds, 35, cfg)  # the check the bench reports
    assert report["kept_identical"] and report["kept_counts"] == [int(k.numel()) for k in ref.kept]


def test_eager_sparsevlm_rejects_batches():
    llm = build_llama(16, LlamaDims(64, 128, 4, 4, 512), torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="one prompt"):
        eager_sparsevlm_prefill(llm, torch.zeros(2, 700, 64), 35, load_config("sparsevlm_64"))
