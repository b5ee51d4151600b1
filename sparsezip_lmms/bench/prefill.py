"""Section 3: LLM prefill of a LLaVA-shaped prompt, 576 visual tokens against each method's budget.

The prompt is ``[system | visual tokens | question + assistant prefix]`` with ``PROMPT_BEFORE`` text
tokens before the image and ``PROMPT_AFTER`` after it (~60 text tokens, as a LLaVA-1.5 prompt with
the Vicuna system message and a POPE-style question). The visual tokens are the projector outputs of
each config's compressed tokens (section 2); a batch is padded to its widest row, and the padded
width is what both the timing and the FLOPs bound use.

Timed: the prefill as ``generate`` runs it, ``LlamaForCausalLM(inputs_embeds, use_cache=True,
logits_to_keep=1)`` (all decoder layers with SDPA, KV cache written, logits of the last position).

FLOPs bound: ``speedup_bound = Σ_layers llm_layer_flops(n_576) / Σ_layers llm_layer_flops(n_method)``
(``sparsezip_lmms.efficiency.flops``; projections, attention scores/weighted sum and SwiGLU MLP; norms,
RoPE, softmax and the LM head left out). A run that only did those matrix products at the same speed
at every length would reach it; ``efficiency = measured speed-up / bound``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from ..config import load_config
from ..efficiency.flops import llm_layer_flops
from ..llava.compat import cache_kwargs
from ..pruning import pruned_generate
from .timing import DeviceTimer, measure, paired_ratio

__all__ = ["PROMPT_AFTER", "PROMPT_BEFORE", "llava_prompt", "llm_prefill", "mlp_rates", "prefill_section"]

PROMPT_BEFORE = 35  # system message + "USER: "
PROMPT_AFTER = 25  # "\n" + question + " ASSISTANT:"
SPARSEVLM_CONFIGS = ("sparsevlm_64", "sparsevlm_128", "sparsevlm_192")


def llava_prompt(visual: torch.Tensor, valid: torch.Tensor, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_embeds [B, P + T + Q, D], attention_mask [B, P + T + Q]) around visual [B, T, D], valid [B, T].

    Invalid visual slots (a narrower image of a padded batch) are masked out.
    """
    b, _, d = visual.shape
    g = torch.Generator().manual_seed(seed)
    before = (torch.randn(1, PROMPT_BEFORE, d, generator=g) * 0.02).to(visual).expand(b, -1, -1)  # [B, P, D]
    after = (torch.randn(1, PROMPT_AFTER, d, generator=g) * 0.02).to(visual).expand(b, -1, -1)  # [B, Q, D]
    embeds = torch.cat([before, visual, after], dim=1)  # [B, P + T + Q, D]
    text_ones = valid.new_ones(b, PROMPT_BEFORE)
    mask = torch.cat([text_ones, valid, valid.new_ones(b, PROMPT_AFTER)], dim=1).long()  # [B, L]
    return embeds, mask


def llm_prefill(llm: nn.Module, embeds: torch.Tensor, mask: torch.Tensor | None):
    """The prefill as ``generate`` runs it: every layer, KV cache written, logits of the last position."""
    cache = DynamicCache(config=llm.config)
    return llm(inputs_embeds=embeds, attention_mask=mask, use_cache=True, logits_to_keep=1, **cache_kwargs(type(llm).forward, cache))


def _bound(n_full: int, n: list[int], layers: int, dims) -> float:
    """FLOPs(576-token prefill) / FLOPs(this prefill); ``n`` = tokens each layer processes."""
    full = layers * llm_layer_flops(n_full, dims.width, dims.mlp)
    return full / sum(llm_layer_flops(k, dims.width, dims.mlp) for k in n)


@torch.no_grad()
def prefill_section(
    llm: nn.Module,
    projector: nn.Module,
    compressed: dict[int, dict],
    dims,
    repeats: int,
    warmup: int,
    timer: DeviceTimer,
    with_sparsevlm: bool,
    configs: tuple[str, ...] | None = None,
) -> dict:
    """Prefill times per distinct prompt length, each config mapped to its length, ratios paired."""
    layers = llm.config.num_hidden_layers
    out: dict = {"layers": layers, "dims": dims.describe(), "prompt_text_tokens": PROMPT_BEFORE + PROMPT_AFTER, "batches": {}}
    for batch, results in compressed.items():
        results = {k: v for k, v in results.items() if configs is None or k in configs or k == "keep_all"}
        prompts: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        width_of: dict[str, int] = {}
        for name, comp in results.items():
            visual = projector(comp.tokens)  # [B, T, D]
            embeds, mask = llava_prompt(visual, comp.valid)
            width = int(comp.tokens.shape[1])
            width_of[name] = width
            key = f"T={width}"
            if key not in prompts:  # one timing per distinct width; the mask only matters with padding
                prompts[key] = (embeds, None if bool(comp.valid.all()) else mask)
        full_key = f"T={width_of['keep_all']}"
        cases = {key: (lambda e=e, m=m: llm_prefill(llm, e, m)) for key, (e, m) in prompts.items()}
        svlm_inputs = {}
        if with_sparsevlm:
            visual = projector(results["keep_all"].tokens)  # [B, 576, D]
            embeds, _ = llava_prompt(visual, results["keep_all"].valid)
            start = torch.full((embeds.shape[0],), PROMPT_BEFORE, dtype=torch.long, device=embeds.device)
            for name in SPARSEVLM_CONFIGS:
                cfg = load_config(name)
                svlm_inputs[name] = (embeds, start, cfg)
                cases[name] = lambda e=embeds, s=start, c=cfg: pruned_generate(llm, e, None, s, c, max_new_tokens=1)
        stats = measure(cases, timer, repeats=repeats, warmup=warmup)
        n_full = width_of["keep_all"] + PROMPT_BEFORE + PROMPT_AFTER
        text = PROMPT_BEFORE + PROMPT_AFTER
        rates = mlp_rates(llm, batch, sorted({w + text for w in width_of.values()}), repeats, warmup, timer)
        rows = []
        for name, width in width_of.items():
            key = f"T={width}"
            n = width + text
            measured = paired_ratio(stats, full_key, key)
            bound = _bound(n_full, [n] * layers, layers, dims)
            row = _row(name, width, n, stats[key], measured, bound)
            gemm = rates[n]["macs_per_s"] / rates[n_full]["macs_per_s"]
            row.update(
                {
                    "gemm_rate_vs_full": gemm,
                    "speedup_bound_at_gemm_rate": bound * gemm,
                    "efficiency_ratio_vs_gemm_bound": measured / (bound * gemm),
                }
            )
            rows.append(row)
        for name, (embeds, start, cfg) in svlm_inputs.items():
            res = stats[name].last
            per_layer = (res.visual_tokens_per_layer[0] - 576 + n_full).tolist()  # tokens after each layer
            # a layer processes what its predecessor left: the input of layer i is the output count of i-1
            n_in = [n_full] + per_layer[:-1]
            measured = paired_ratio(stats, full_key, name)
            bound = _bound(n_full, n_in, layers, dims)
            rows.append(_row(name, float(res.equal_tokens[0]), n_in[-1], stats[name], measured, bound))
        for stat in stats.values():
            stat.last = None
        out["batches"][str(batch)] = {
            "times": {key: stat.to_dict() for key, stat in stats.items()},
            "mlp_rates": {str(n): r for n, r in rates.items()},
            "rows": rows,
        }
    return out


def mlp_rates(llm: nn.Module, batch: int, lengths: list[int], repeats: int, warmup: int, timer: DeviceTimer) -> dict:
    """Multiply-adds per second of one decoder layer's MLP (3·n·d·m, 2/3 of a layer's FLOPs) at each length.

    The FLOPs bound assumes the same rate at every length; this measures how far the matrix products
    themselves (the BLAS / GPU kernels, not this package) depart from that at small n.
    """
    mlp = llm.model.layers[0].mlp
    p = next(llm.parameters())
    d, m = llm.config.hidden_size, llm.config.intermediate_size
    g = torch.Generator().manual_seed(6)
    inputs = {n: (torch.randn(batch, n, d, generator=g) * 0.5).to(p) for n in lengths}  # [B, n, d]
    stats = measure({n: (lambda x=x: mlp(x)) for n, x in inputs.items()}, timer, repeats=repeats, warmup=warmup)
    return {
        n: {"mlp": stats[n].to_dict(), "macs_per_s": 3 * batch * n * d * m / stats[n].median} for n in lengths
    }


def _row(name: str, visual_tokens, prompt_tokens: int, stat, measured: float, bound: float) -> dict:
    return {
        "config": name,
        "visual_tokens": visual_tokens,
        "prompt_tokens": prompt_tokens,
        "prefill": stat.to_dict(),
        "speedup_measured": measured,
        "speedup_bound": bound,
        "efficiency_ratio": measured / bound,
    }
