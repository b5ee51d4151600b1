"""Markdown tables and target verdicts from the benchmark's JSON (so a saved JSON can be re-rendered)."""

from __future__ import annotations

import math

__all__ = ["TARGETS", "evaluate_targets", "pruning_section", "render"]

METHOD_LABELS = {"sparsevlm": "SparseVLM v1.5", "sparsevlm2": "SparseVLM v2.0", "fastv": "FastV", "dart": "DART", "deferred": "deferred"}

# (name, description, threshold, "<=" or ">=")
TARGETS = (
    ("scoring_capture", "scoring capture time / plain CLIP forward (LLaVA's SDPA call)", 1.05, "<="),
    ("sparsezip_op", "sparsezip_64 op (text relevance + compress) / plain CLIP forward", 0.02, "<="),
    ("prefill_64", "prefill speed-up at 64 visual tokens / FLOPs-bound speed-up", 0.90, ">="),
    ("sparsevlm_vs_eager", "eager SparseVLM prefill time / ours (budget 64)", 1.5, ">="),
)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}" if seconds < 10 else f"{seconds * 1e3:.0f}"


def _x(value: float) -> str:
    return f"{value:.3f}"


def _pct(value: float) -> str:
    return f"{100 * value:.2f} %"


def _config_values(section: dict | None, config: str, key: str, label: str) -> list[tuple[float, str]]:
    """(row[key], "batch B<label>") for every batch of a section's rows of ``config``."""
    if not section:
        return []
    return [
        (row[key], f"batch {batch}{label}")
        for batch, entry in section["batches"].items()
        for row in entry["rows"]
        if row["config"] == config
    ]


def evaluate_targets(report: dict) -> list[dict]:
    """Each target with the measured value (worst case over the batch sizes run) and met / not met."""
    measured: dict[str, tuple[float, str] | None] = {name: None for name, *_ in TARGETS}
    vision = report.get("vision")
    if vision:
        worst = max(vision["batches"].items(), key=lambda kv: kv[1]["ratios"]["scoring_vs_plain"])
        measured["scoring_capture"] = (worst[1]["ratios"]["scoring_vs_plain"], f"batch {worst[0]}")
    ops = _config_values(report.get("compression"), "sparsezip_64", "ratio_to_clip", "")
    measured["sparsezip_op"] = max(ops) if ops else None
    prefill = _config_values(report.get("prefill"), "visionzip_64", "efficiency_ratio", ", visionzip_64")
    measured["prefill_64"] = min(prefill) if prefill else None
    pruning = pruning_section(report)
    v15 = [r for r in (pruning or {}).get("rows", []) if r["method"] == "sparsevlm" and int(r["budget"]) == 64]
    if v15:
        measured["sparsevlm_vs_eager"] = (v15[0]["ratios"]["eager_vs_ours"], "budget 64, batch 1")
    verdicts = []
    for name, text, threshold, op in TARGETS:
        got = measured[name]
        entry = {"name": name, "description": text, "threshold": threshold, "op": op}
        if got is None:
            entry.update(measured=None, where=None, met=None)
        else:
            value, where = got
            met = value <= threshold if op == "<=" else value >= threshold
            entry.update(measured=value, where=where, met=bool(met))
        verdicts.append(entry)
    return verdicts


def pruning_section(report: dict) -> dict | None:
    """Section 4 of a report: ``report["pruning"]``, or the v1.5-only ``report["sparsevlm"]`` of earlier
    versions (``budgets`` keyed by budget) in the same layout."""
    if "pruning" in report:
        return report["pruning"]
    old = report.get("sparsevlm")
    if not old:
        return None
    rows = [{"config": f"sparsevlm_{b}", "method": "sparsevlm", "budget": int(b), **e} for b, e in old["budgets"].items()]
    return {**{k: v for k, v in old.items() if k != "budgets"}, "methods": ["sparsevlm"], "rows": rows}


def _render_pruning(s: dict) -> str:
    batch = s.get("batch", 1)
    rows = []
    for e in s["rows"]:
        t, r, c = e["times"], e["ratios"], e["check"]
        row = [METHOD_LABELS.get(e["method"], e["method"]), f"`{e['config']}`", str(e["pruning_layers"]),
               " / ".join(str(k) for k in c["kept_counts"]), _ms(t["ours"]["median_s"]), _ms(t["eager"]["median_s"]),
               _x(r["eager_vs_ours"]), "yes" if c["kept_identical"] else "NO", f"{c['equal_tokens']:.2f}",
               _x(r["speedup_vs_plain"]) if "speedup_vs_plain" in r else "—",
               _x(r["efficiency_ratio"]) if "efficiency_ratio" in r else "—"]  # fmt: skip
        if batch > 1:
            row += [_ms(t[f"ours_b{batch}"]["median_s"]), _x(r[f"eager_x{batch}_vs_ours_b{batch}"])]
        rows.append(row)
    header = ["method", "config", "pruned after layers", "kept per pruning", "ours ms", "eager ms", "eager / ours",
              "same kept tokens", "equal tokens", "speed-up vs unpruned", "speed-up / bound"]  # fmt: skip
    if batch > 1:
        header += [f"ours at batch {batch} ms", f"{batch} × eager / ours at batch {batch}"]
    cores: dict = {}
    for e in s["rows"]:
        cores.update(e["attention_cores"])
    core_text = "; ".join(
        f"{n} tokens: SDPA {_ms(c['sdpa']['median_s'])} ms, eager {_ms(c['eager']['median_s'])} ms "
        f"({_x(c['eager_core_vs_sdpa_core'])})"
        for n, c in sorted(cores.items(), key=lambda kv: -int(kv[0]))
    )
    models = ", ".join(f"{e['config']}: {_x(e['ratios']['eager_vs_ours_attention_model'])}" for e in s["rows"])
    return (
        f"### 4. In-LLM pruning prefill (max_new_tokens=1, batch 1{f' and {batch}' if batch > 1 else ''}), "
        f"{s['layers']} layers ({s['dims']}), {s['prompt_tokens']}-token prompt\n\n"
        + _table(header, rows)
        + f"\n\nAttention core alone, one layer (eager / SDPA): {core_text}. eager / ours if only the attention "
        f"cores differed (1 + Σ_layers (eager − SDPA core at the layer's length) / ours): {models}"
    )


def _mib(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**20:.1f}"


def _render_qwen(q: dict) -> str:
    m = q["model"]
    rows = []
    for e in q["rows"]:
        t, r, mem = e["times"], e["ratios"], e["memory"]
        big, peak = mem["largest_attention_bytes"], mem.get("cuda_peak_bytes") or {}
        rows.append(
            [f"{e['image_px']}×{e['image_px']} ({e['patches_per_image']})", str(e["batch"]), _ms(t["plain"]["median_s"]),
             _ms(t["ours"]["median_s"]), _ms(t["eager"]["median_s"]), _x(r["ours_vs_plain"]), _x(r["eager_vs_ours"]),
             _ms(t["block_sdpa"]["median_s"]), _ms(t["block_ours"]["median_s"]), _ms(t["block_eager"]["median_s"]),
             _x(r["block_eager_vs_ours"]), f"{_mib(big['ours'])} / {_mib(big['eager'])}",
             f"{_mib(peak.get('ours'))} / {_mib(peak.get('eager'))}", f"{e['check']['scores_max_abs_diff']:.1e}"]
        )  # fmt: skip
    sizes = "; ".join(
        f"{a['image_px']} px ({a['patches']} patches): {_mib(a['ours_bytes'])} vs {_mib(a['eager_bytes'])} MiB"
        for a in q.get("analytic_memory", [])
    )
    skipped = "".join(f" Skipped {s['image_px']} px: {s['why']}." for s in q.get("skipped", []))
    return (
        f"### 7. Qwen2.5-VL scoring capture (VisionZip), vision tower of {m['depth']} blocks (hidden "
        f"{m['hidden_size']}, {m['num_heads']} heads, full attention at {m['fullatt_block_indexes']}), {q['dtype']}\n\n"
        + _table(["image (patches)", "batch", "no scores ms", "ours ms", "eager ms", "ours / no scores", "eager / ours",
                  "last block SDPA ms", "SDPA + our capture ms", "eager block ms", "block eager / ours",
                  "largest attention MiB ours / eager", "CUDA peak MiB ours / eager", "max |Δ score|"], rows)
        + f"\n\nLargest attention tensor per image (analytic, ours / eager): {sizes}.{skipped}"
    )  # fmt: skip


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render(report: dict) -> str:
    parts = []
    meta = report["meta"]
    parts.append(
        f"sparsezip-lmms bench — device {meta['device']} ({meta['device_name']}), {meta['dtype']}, "
        f"torch {meta['torch']}, transformers {meta['transformers']}, {meta['threads']} threads"
        f"{', SMOKE (tiny widths: code paths only, the timings mean nothing)' if meta.get('smoke') else ', quick' if meta['quick'] else ''}; medians over {meta['settings']['repeats']} timed repeats "
        f"(vision), after {meta['settings']['warmup']} warm-up"
    )
    if "vision" in report:
        rows = []
        for batch, e in report["vision"]["batches"].items():
            t, r = e["times"], e["ratios"]
            rows.append(
                [batch, _ms(t["plain"]["median_s"]), _ms(t["plain_to_m2"]["median_s"]), _ms(t["scoring"]["median_s"]),
                 _ms(t["official"]["median_s"]), _x(r["scoring_vs_plain"]), _x(r["scoring_vs_plain_to_m2"]),
                 _x(r["official_vs_plain"]), _x(r["official_vs_scoring"])]
            )  # fmt: skip
        parts.append(
            "### 1. CLIP-L/336 vision tower (ms)\n\n"
            + _table(
                ["batch", "plain (LLaVA, 24 layers)", "plain to −2 (23)", "scoring_inputs", "official capture (eager)",
                 "scoring / plain", "scoring / plain to −2", "official / plain", "official / scoring"],
                rows,
            )
        )
    if "compression" in report:
        for batch, e in report["compression"]["batches"].items():
            rows = [
                [r["config"], r["method"], f"{r['tokens_mean']:.1f}", _ms(r["op"]["median_s"]),
                 _ms(r["text_relevance_s"]), _pct(r["ratio_to_clip"]), _pct(r["flops_share_of_clip"]),
                 "—" if r.get("selection_s") is None else f"{_ms(r['selection_s'])} ({_pct(r['selection_ratio_to_clip'])})"]
                for r in e["rows"]
            ]  # fmt: skip
            parts.append(
                f"### 2. Compression ops, batch {batch} (CLIP forward {_ms(e['clip_forward_s'])} ms)\n\n"
                + _table(["config", "method", "tokens (mean)", "op ms", "of which text ms", "op / CLIP forward",
                         "op FLOPs / CLIP FLOPs", "selection alone ms (/ CLIP)"], rows)
            )
    if "prefill" in report:
        p = report["prefill"]
        for batch, e in p["batches"].items():
            rows = [
                [r["config"], f"{r['visual_tokens']:.1f}" if isinstance(r["visual_tokens"], float) else str(r["visual_tokens"]),
                 _ms(r["prefill"]["median_s"]), _x(r["speedup_measured"]), _x(r["speedup_bound"]),
                 _x(r["efficiency_ratio"]), _x(r["gemm_rate_vs_full"]) if "gemm_rate_vs_full" in r else "—",
                 _x(r["efficiency_ratio_vs_gemm_bound"]) if "efficiency_ratio_vs_gemm_bound" in r else "—"]
                for r in e["rows"]
            ]  # fmt: skip
            parts.append(
                f"### 3. LLM prefill, {p['layers']} LLaMA layers ({p['dims']}), batch {batch}, "
                f"+{p['prompt_text_tokens']} text tokens\n\n"
                + _table(["config", "visual tokens", "prefill ms", "speed-up", "FLOPs bound", "speed-up / bound",
                         "MLP GEMM rate vs 576", "speed-up / (bound × GEMM rate)"], rows)
            )
    if "next" in report:
        n = report["next"]
        rows = [
            [r["config"], str(r["visual_tokens"]), _x(r["vision_ratio_to_clip"]), _ms(r["prefill_median_s"]),
             _x(r["prefill_speedup"]), _x(r["speedup_bound"]), _x(r["efficiency_ratio"])]
            for r in n["rows"]
        ]  # fmt: skip
        parts.append(
            f"### 6. LLaVA-NeXT-shaped inputs, {n['crops_per_image']} crops per image, batch {n['batch']}, "
            f"{n['layers']} LLaMA layers ({n['dims']})\n\n"
            + _table(["config", "visual tokens", "vision side / CLIP on the crops", "prefill ms", "prefill speed-up",
                     "FLOPs bound", "speed-up / bound"], rows)
        )
    pruning = pruning_section(report)
    if pruning:
        parts.append(_render_pruning(pruning))
    if "qwen" in report:
        parts.append(_render_qwen(report["qwen"]))
    if "harness" in report:
        h = report["harness"]
        if h.get("skipped"):
            parts.append(f"### 5. lmms-eval end to end: skipped ({h['skipped']})")
        else:
            rows = [
                [b, str(e["samples"]), str(e["timed_samples"]), f"{e['samples_per_s']:.2f}", f"{e['wall_s']:.1f}",
                 f"{e['wall_samples_per_s']:.2f}"]
                for b, e in h["batches"].items()
            ]  # fmt: skip
            ratios = ", ".join(f"{k} = {_x(v)}" for k, v in h["ratios"].items())
            parts.append(
                f"### 5. lmms-eval end to end, tiny checkpoint, {h['model']} {h['config']}, tasks {','.join(h['tasks'])}, "
                f"max_new_tokens={h['max_new_tokens']}\n\n"
                + _table(["batch", "samples", "timed", "samples/s (model)", "CLI wall s", "samples/s (wall)"], rows)
                + f"\n\n{ratios}"
            )
    verdicts = report.get("targets") or evaluate_targets(report)
    rows = []
    for v in verdicts:
        limit = _pct(v["threshold"]) if v["name"] == "sparsezip_op" else str(v["threshold"])
        if v["measured"] is None:
            rows.append([v["description"], f"{v['op']} {limit}", "—", "not measured"])
        else:
            shown = _pct(v["measured"]) if v["name"] == "sparsezip_op" else _x(v["measured"])
            rows.append([v["description"], f"{v['op']} {limit}", f"{shown} ({v['where']})", "met" if v["met"] else "NOT met"])
    parts.append("### Targets\n\n" + _table(["target", "threshold", "measured", "verdict"], rows))
    return "\n\n".join(parts) + "\n"


def finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0
