"""Section 4: our pruning decoder against the eager (official-style) computation, for every in-LLM method.

For each method (SparseVLM v1.5, SparseVLM v2.0, FastV, DART, a deferred VisionZip selection) and budget,
both run the prefill of one LLaVA-shaped prompt (35 + 576 + 25 tokens) with ``max_new_tokens=1`` on
the same random LLaMA; the kept tokens of every pruning layer must be identical (checked here, reported
in the JSON). Ours is also timed on a batch of ``batch`` independent prompts, against ``batch`` times the
eager reference (which handles one prompt at a time, as the official codes do). Optionally the
unpruned SDPA prefill of the same model is timed too, for each method's speed-up against its FLOPs bound.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.llama.modeling_llama import eager_attention_forward

from ..config import load_config
from ..efficiency.flops import llm_layer_flops
from ..pruning import pruned_generate
from .eager_pruning import _causal_mask, eager_pruned_prefill
from .prefill import PROMPT_AFTER, PROMPT_BEFORE, llm_prefill
from .timing import DeviceTimer, measure, paired_ratio

__all__ = [
    "METHODS",
    "attention_cores",
    "attention_model_ratio",
    "compare_kept",
    "deferred_keep",
    "in_llm_section",
    "kept_tokens_agree",
    "method_config",
]

VISUAL = 576  # LLaVA-1.5's patch tokens
METHODS = ("sparsevlm", "sparsevlm2", "fastv", "dart", "deferred")
DEFERRED_BASE, DEFERRED_LAYER = "visionzip", 3  # deferred: visionzip_<budget> with prune_layer 3


def method_config(method: str, budget: int) -> tuple[str, Any]:
    """(label, config) of one method at one budget: ``sparsevlm_64``, ``sparsevlm2_64``, ``fastv_64``, or
    ``visionzip_64`` with ``prune_layer: 3`` (deferred; its selection is :func:`deferred_keep`)."""
    if method == "deferred":
        name = f"{DEFERRED_BASE}_{budget}"
        return f"{name}@L{DEFERRED_LAYER}", load_config(name, {"prune_layer": DEFERRED_LAYER})
    if method not in METHODS:
        raise ValueError(f"unknown in-LLM method {method!r}; choose from {','.join(METHODS)}")
    name = f"{method}_{budget}"
    return name, load_config(name)


def deferred_keep(batch: int, budget: int, device, seed: int = 6) -> torch.Tensor:
    """[B, 576] bool: row b marks ``budget`` patches drawn at random (generator seeded with seed + b)."""
    keep = torch.zeros(batch, VISUAL, dtype=torch.bool)
    for b in range(batch):
        keep[b, torch.randperm(VISUAL, generator=torch.Generator().manual_seed(seed + b))[:budget]] = True
    return keep.to(device)


def _prompts(width: int, batch: int, device, dtype, seed: int = 4) -> torch.Tensor:
    """[B, 35 + 576 + 25, d] independent prompt embeddings (row b from seed + b; random, LLM-embedding scale;
    visual rows larger, as projected CLIP features are)."""
    rows = []
    for b in range(batch):
        g = torch.Generator().manual_seed(seed + b)
        text = torch.randn(1, PROMPT_BEFORE + PROMPT_AFTER, width, generator=g) * 0.02  # [1, 60, d]
        visual = torch.randn(1, VISUAL, width, generator=g) * 0.5  # [1, 576, d]
        rows.append(torch.cat([text[:, :PROMPT_BEFORE], visual, text[:, PROMPT_BEFORE:]], dim=1))
    return torch.cat(rows).to(device, dtype)  # [B, L, d]


def kept_tokens_agree(
    llm: nn.Module, embeds: torch.Tensor, image_start: int, config: Any, visual_keep: torch.Tensor | None = None
) -> dict:
    """Run both implementations once on one prompt (embeds [1, L, d]); report whether every pruning layer
    kept the same tokens (``visual_keep`` [1, 576]: the deferred selection)."""
    start = torch.tensor([image_start], device=embeds.device)
    ours = pruned_generate(llm, embeds, None, start, config, max_new_tokens=1, visual_keep=visual_keep)
    return compare_kept(ours, eager_pruned_prefill(llm, embeds, image_start, config, visual_keep=visual_keep))


def compare_kept(ours, ref, row: int = 0) -> dict:
    """Agreement of row ``row`` of a ``PrunedOutput`` with the eager reference's output (one prompt)."""
    same = [bool(torch.equal(a[row][a[row] >= 0], b)) for a, b in zip(ours.kept, ref.kept, strict=True)]
    heads = [
        bool(torch.equal(a[row][a[row] >= 0], b))
        for a, b in zip(ours.heads, ref.heads, strict=True)
        if a is not None and b is not None
    ]
    scale = ref.prefill_logits.double().abs().max().clamp_min(1e-30)
    out = {
        "kept_identical": all(same),
        "kept_identical_per_layer": same,
        "kept_counts": [int(b.numel()) for b in ref.kept],
        "logits_max_rel_diff": float((ours.prefill_logits[row].double() - ref.prefill_logits.double()).abs().max() / scale),
        "visual_tokens_per_layer": ref.visual_tokens_per_layer,
        "equal_tokens": float(ours.equal_tokens[row]),
    }
    if heads:  # SparseVLM v2.0: the priority heads of every pruning layer
        out["heads_identical"] = all(heads)
    return out


@torch.no_grad()
def attention_cores(
    llm: nn.Module, lengths: list[int], repeats: int, warmup: int, timer: DeviceTimer, memo: dict | None = None
) -> dict:
    """The attention core alone (after the projections) of one layer, batch 1, at each of ``lengths``:
    transformers' SDPA path vs its eager path (``[1, H, n, n]`` probabilities materialised). This is
    the only part of a layer where our decoder and the eager reference differ.

    Returns {str(n): {"sdpa": Stat dict, "eager": Stat dict, "eager_core_vs_sdpa_core": ratio}};
    lengths already in ``memo`` (filled here) are not timed again.
    """
    memo = {} if memo is None else memo
    attn = llm.model.layers[0].self_attn
    p = next(llm.parameters())
    heads, kv, hd = llm.config.num_attention_heads, llm.config.num_key_value_heads, attn.head_dim
    for n in sorted(set(lengths) - set(memo), reverse=True):
        g = torch.Generator().manual_seed(5 + n)
        q = torch.randn(1, heads, n, hd, generator=g).to(p)  # [1, H, n, hd]
        k = torch.randn(1, kv, n, hd, generator=g).to(p)  # [1, H_kv, n, hd]
        v = torch.randn(1, kv, n, hd, generator=g).to(p)  # [1, H_kv, n, hd]
        mask = _causal_mask(n, q)  # [1, 1, n, n]
        cases = {
            "sdpa": lambda q=q, k=k, v=v: sdpa_attention_forward(attn, q, k, v, None, scaling=attn.scaling, is_causal=True),
            "eager": lambda q=q, k=k, v=v, m=mask: eager_attention_forward(attn, q, k, v, m, scaling=attn.scaling),
        }
        stats = measure(cases, timer, repeats=max(repeats, 5), warmup=max(warmup, 1))
        memo[n] = {
            "sdpa": stats["sdpa"].to_dict(),
            "eager": stats["eager"].to_dict(),
            "eager_core_vs_sdpa_core": paired_ratio(stats, "eager", "sdpa"),
        }
    return {str(n): memo[n] for n in sorted(set(lengths), reverse=True)}


def attention_model_ratio(cores: dict, n_in: list[int], ours_s: float) -> float:
    """eager / ours if the two differed only by their attention cores: 1 + Σ_layers (eager − sdpa core) / ours."""
    extra = sum(cores[str(n)]["eager"]["median_s"] - cores[str(n)]["sdpa"]["median_s"] for n in n_in)
    return 1.0 + extra / ours_s


@torch.no_grad()
def in_llm_section(
    llm: nn.Module,
    dims,
    budgets: list[int],
    repeats: int,
    warmup: int,
    timer: DeviceTimer,
    with_plain: bool,
    batch: int = 1,
    methods: tuple[str, ...] | list[str] = METHODS,
) -> dict:
    """Every (method, budget): ours and the eager reference at batch 1, ours at ``batch``, paired ratios."""
    layers = llm.config.num_hidden_layers
    p = next(llm.parameters())
    prompts = _prompts(dims.width, max(batch, 1), p.device, p.dtype)  # [B, L, d]
    embeds = prompts[:1]  # [1, L, d] the batch-1 prompt
    start = torch.tensor([PROMPT_BEFORE], device=p.device)  # [1]
    starts = start.expand(batch).contiguous()  # [B]
    n_full = embeds.shape[1]
    out: dict = {
        "layers": layers,
        "dims": dims.describe(),
        "prompt_tokens": n_full,
        "visual_tokens": VISUAL,
        "batch": batch,
        "methods": list(methods),
        "budgets": list(budgets),
        "rows": [],
    }
    memo: dict = {}
    for method in methods:
        for budget in budgets:
            label, cfg = method_config(method, budget)
            keep = deferred_keep(max(batch, 1), budget, p.device) if method == "deferred" else None  # [B, 576]
            keep1 = None if keep is None else keep[:1]  # [1, 576]
            cases = {
                "ours": lambda c=cfg, k=keep1: pruned_generate(llm, embeds, None, start, c, 1, visual_keep=k),
                "eager": lambda c=cfg, k=keep1: eager_pruned_prefill(llm, embeds, PROMPT_BEFORE, c, visual_keep=k),
            }
            if with_plain:
                cases["plain"] = lambda: llm_prefill(llm, embeds, None)
            if batch > 1:
                cases[f"ours_b{batch}"] = lambda c=cfg, k=keep: pruned_generate(llm, prompts, None, starts, c, 1, visual_keep=k)
            stats = measure(cases, timer, repeats=repeats, warmup=warmup)
            ours = stats["ours"].last
            check = compare_kept(ours, stats["eager"].last)  # the last timed runs
            if batch > 1:  # row 0 of the batch is the batch-1 prompt: batching must not change what it keeps
                check["batch_row0_kept_identical"] = compare_kept(stats[f"ours_b{batch}"].last, stats["eager"].last)["kept_identical"]
            for stat in stats.values():
                stat.last = None
            counts = [n_full - VISUAL + v for v in check["visual_tokens_per_layer"]]  # tokens after each layer
            n_in = [n_full] + counts[:-1]  # tokens each layer processes
            cores = attention_cores(llm, n_in, repeats, warmup, timer, memo)
            entry = {
                "config": label,
                "method": method,
                "budget": budget,
                "pruning_layers": list(ours.pruning_layers),
                "times": {k: s.to_dict() for k, s in stats.items()},
                "tokens_per_layer": n_in,
                "ratios": {
                    "eager_vs_ours": paired_ratio(stats, "eager", "ours"),
                    "eager_vs_ours_attention_model": attention_model_ratio(cores, n_in, stats["ours"].median),
                },
                "attention_cores": cores,
                "check": check,
            }
            if method in ("sparsevlm", "sparsevlm2"):
                entry["schedule"] = list(cfg.schedule)
            if batch > 1:  # throughput: the eager reference handles one prompt at a time
                entry["ratios"][f"eager_x{batch}_vs_ours_b{batch}"] = batch * paired_ratio(stats, "eager", f"ours_b{batch}")
            if with_plain:
                full = layers * llm_layer_flops(n_full, dims.width, dims.mlp)
                bound = full / sum(llm_layer_flops(n, dims.width, dims.mlp) for n in n_in)
                measured = paired_ratio(stats, "plain", "ours")
                entry["ratios"].update(
                    {"speedup_vs_plain": measured, "speedup_bound": bound, "efficiency_ratio": measured / bound}
                )
            out["rows"].append(entry)
    return out

