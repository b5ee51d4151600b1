"""Section 4: our SparseVLM pruning decoder against the eager (official-style) computation.

Both run the prefill of one LLaVA-shaped prompt (35 + 576 + 25 tokens) with ``max_new_tokens=1``
on the same random LLaMA; the kept tokens of every pruning layer must be identical (checked here,
reported in the JSON). Optionally the unpruned SDPA prefill of the same model is timed too, for
SparseVLM's own speed-up against its FLOPs bound.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.llama.modeling_llama import eager_attention_forward

from ..config import load_config
from ..efficiency.flops import llm_layer_flops
from ..llava import sparsevlm_generate
from .prefill import PROMPT_AFTER, PROMPT_BEFORE, llm_prefill
from .sparsevlm_eager import _causal_mask, eager_sparsevlm_prefill
from .timing import DeviceTimer, measure, paired_ratio

__all__ = ["attention_cores", "attention_model_ratio", "compare_kept", "kept_tokens_agree", "sparsevlm_section"]


def _prompt(width: int, device, dtype, seed: int = 4) -> torch.Tensor:
    """[1, 35 + 576 + 25, d] prompt embeddings (random, LLM-embedding scale; visual rows larger, as projected
    CLIP features are)."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(1, PROMPT_BEFORE + PROMPT_AFTER, width, generator=g) * 0.02
    visual = torch.randn(1, 576, width, generator=g) * 0.5
    embeds = torch.cat([text[:, :PROMPT_BEFORE], visual, text[:, PROMPT_BEFORE:]], dim=1)
    return embeds.to(device, dtype)


def kept_tokens_agree(llm: nn.Module, embeds: torch.Tensor, image_start: int, config) -> dict:
    """Run both implementations once; report whether every pruning layer kept the same tokens."""
    ours = sparsevlm_generate(llm, embeds, None, torch.tensor([image_start], device=embeds.device), config, max_new_tokens=1)
    return compare_kept(ours, eager_sparsevlm_prefill(llm, embeds, image_start, config))


def compare_kept(ours, ref) -> dict:
    """Agreement of a ``SparseVLMOutput`` (batch 1) with the eager reference's output."""
    same = [bool(torch.equal(a[0][a[0] >= 0], b)) for a, b in zip(ours.kept, ref.kept, strict=True)]
    scale = ref.prefill_logits.double().abs().max().clamp_min(1e-30)
    return {
        "kept_identical": all(same),
        "kept_identical_per_layer": same,
        "kept_counts": [int(b.numel()) for b in ref.kept],
        "logits_max_rel_diff": float((ours.prefill_logits[0].double() - ref.prefill_logits.double()).abs().max() / scale),
        "visual_tokens_per_layer": ref.visual_tokens_per_layer,
        "equal_tokens": float(ours.equal_tokens[0]),
    }


@torch.no_grad()
def attention_cores(llm: nn.Module, lengths: list[int], repeats: int, warmup: int, timer: DeviceTimer) -> dict:
    """The attention core alone (after the projections) of one layer, batch 1, at each of ``lengths``:
    transformers' SDPA path vs its eager path (``[1, H, n, n]`` probabilities materialised). This is
    the only part of a layer where our decoder and the eager reference differ.

    Returns {str(n): {"sdpa": Stat dict, "eager": Stat dict, "eager_core_vs_sdpa_core": ratio}}.
    """
    attn = llm.model.layers[0].self_attn
    p = next(llm.parameters())
    g = torch.Generator().manual_seed(5)
    heads, kv, hd = llm.config.num_attention_heads, llm.config.num_key_value_heads, attn.head_dim
    out = {}
    for n in sorted(set(lengths), reverse=True):
        q = torch.randn(1, heads, n, hd, generator=g).to(p)  # [1, H, n, hd]
        k = torch.randn(1, kv, n, hd, generator=g).to(p)  # [1, H_kv, n, hd]
        v = torch.randn(1, kv, n, hd, generator=g).to(p)  # [1, H_kv, n, hd]
        mask = _causal_mask(n, q)  # [1, 1, n, n]
        cases = {
            "sdpa": lambda q=q, k=k, v=v: sdpa_attention_forward(attn, q, k, v, None, scaling=attn.scaling, is_causal=True),
            "eager": lambda q=q, k=k, v=v, m=mask: eager_attention_forward(attn, q, k, v, m, scaling=attn.scaling),
        }
        stats = measure(cases, timer, repeats=max(repeats, 5), warmup=max(warmup, 1))
        out[str(n)] = {
            "sdpa": stats["sdpa"].to_dict(),
            "eager": stats["eager"].to_dict(),
            "eager_core_vs_sdpa_core": paired_ratio(stats, "eager", "sdpa"),
        }
    return out


def attention_model_ratio(cores: dict, n_in: list[int], ours_s: float) -> float:
    """eager / ours if the two differed only by their attention cores: 1 + Σ_layers (eager − sdpa core) / ours."""
    extra = sum(cores[str(n)]["eager"]["median_s"] - cores[str(n)]["sdpa"]["median_s"] for n in n_in)
    return 1.0 + extra / ours_s


@torch.no_grad()
def sparsevlm_section(
    llm: nn.Module,
    dims,
    budgets: list[int],
    repeats: int,
    warmup: int,
    timer: DeviceTimer,
    with_plain: bool,
    batch: int = 1,
) -> dict:
    layers = llm.config.num_hidden_layers
    p = next(llm.parameters())
    embeds = _prompt(dims.width, p.device, p.dtype)
    start = torch.tensor([PROMPT_BEFORE], device=p.device)
    n_full = embeds.shape[1]
    out: dict = {"layers": layers, "dims": dims.describe(), "prompt_tokens": n_full, "batch": batch, "budgets": {}}
    batched = embeds.expand(batch, -1, -1).contiguous()  # [B, L, d] (independent samples)
    starts = start.expand(batch).contiguous()  # [B]
    for budget in budgets:
        cfg = load_config(f"sparsevlm_{budget}")
        cases = {
            "ours": lambda c=cfg: sparsevlm_generate(llm, embeds, None, start, c, max_new_tokens=1),
            "eager": lambda c=cfg: eager_sparsevlm_prefill(llm, embeds, PROMPT_BEFORE, c),
        }
        if with_plain:
            cases["plain"] = lambda: llm_prefill(llm, embeds, None)
        if batch > 1:
            cases[f"ours_b{batch}"] = lambda c=cfg: sparsevlm_generate(llm, batched, None, starts, c, max_new_tokens=1)
        stats = measure(cases, timer, repeats=repeats, warmup=warmup)
        check = compare_kept(stats["ours"].last, stats["eager"].last)  # the last timed runs
        for stat in stats.values():
            stat.last = None
        counts = [n_full - 576 + v for v in check["visual_tokens_per_layer"]]  # tokens after each layer
        n_in = [n_full] + counts[:-1]  # tokens each layer processes
        cores = attention_cores(llm, n_in, repeats, warmup, timer)
        entry = {
            "pruning_layers": list(cfg.pruning_layers),
            "schedule": list(cfg.schedule),
            "times": {k: s.to_dict() for k, s in stats.items()},
            "tokens_per_layer": n_in,
            "ratios": {
                "eager_vs_ours": paired_ratio(stats, "eager", "ours"),
                "eager_vs_ours_attention_model": attention_model_ratio(cores, n_in, stats["ours"].median),
            },
            "attention_cores": cores,
            "check": check,
        }
        if batch > 1:  # throughput: the eager reference handles one prompt at a time
            entry["ratios"][f"eager_x{batch}_vs_ours_b{batch}"] = batch * paired_ratio(stats, "eager", f"ours_b{batch}")
        if with_plain:
            full = layers * llm_layer_flops(n_full, dims.width, dims.mlp)
            bound = full / sum(llm_layer_flops(n, dims.width, dims.mlp) for n in n_in)
            measured = paired_ratio(stats, "plain", "ours")
            entry["ratios"].update(
                {"speedup_vs_plain": measured, "speedup_bound": bound, "efficiency_ratio": measured / bound}
            )
        out["budgets"][str(budget)] = entry
    return out
