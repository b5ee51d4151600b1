"""SparseVLM v1.5 prefill computed the way the official code computes it: eager attention, batch 1.

The reference for the speed comparison of section 4. Same algorithm and conventions as
:func:`sparsezip_lmms.llava.sparsevlm_generate` (raters from the raw embeddings, scores = the pruning
layer's softmax attention of the raters over the visual span, mean over heads then raters, top-k kept
in order, the best 30 % of the deleted tokens recycled by density-peak clustering, positions
renumbered after each pruning, one KV-cache slot per layer), but every layer runs eager attention:
``softmax(q kᵀ / √d + mask)`` materialised as a ``[1, H, L, L]`` matrix, which is what a model run
with ``output_attentions=True`` computes, and at the pruning layers the scores are read from that
matrix. One sample at a time (the official code indexes row 0).

The recycling uses the same pure functions (``sparsezip_lmms.compress.sparsevlm_recycle``) and the
same per-sample seeded draws, so the kept and recycled tokens must be identical to ours; only the
attention path differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.models.llama.modeling_llama import (
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from ..compress.sparsevlm_recycle import (
    density_peak_merge,
    keep_count,
    recycle_sizes,
    select_raters,
    topk_keep,
)
from ..llava.sparsevlm import RECYCLED_ID_BASE

__all__ = ["EagerSparseVLMOutput", "eager_sparsevlm_prefill"]


@dataclass
class EagerSparseVLMOutput:
    prefill_logits: torch.Tensor  # [V]
    kept: list[torch.Tensor]  # per pruning layer: [k] identities of the kept visual tokens, in order
    scores: list[torch.Tensor]  # per pruning layer: [n_v] relevance of every visual-span token
    raters: torch.Tensor  # [R] relative to the first text token
    visual_tokens_per_layer: list[int]


def _causal_mask(n: int, like: torch.Tensor) -> torch.Tensor:
    """[1, 1, n, n] additive mask: 0 on and below the diagonal, the dtype's minimum above."""
    mask = torch.full((n, n), torch.finfo(like.dtype).min, dtype=like.dtype, device=like.device)
    return mask.triu(1)[None, None]


def _eager_layer(
    layer: nn.Module,
    hidden: torch.Tensor,  # [1, n, d]
    mask: torch.Tensor,  # [1, 1, n, n]
    cos_sin: tuple[torch.Tensor, torch.Tensor],  # [1, n, hd] each
    cache: DynamicCache,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LLaMA decoder layer with eager attention. Returns (output [1, n, d], probabilities [1, H, n, n])."""
    attn = layer.self_attn
    n = hidden.shape[1]
    x = layer.input_layernorm(hidden)  # [1, n, d]
    q = attn.q_proj(x).view(1, n, -1, attn.head_dim).transpose(1, 2)  # [1, H, n, hd]
    k = attn.k_proj(x).view(1, n, -1, attn.head_dim).transpose(1, 2)  # [1, H_kv, n, hd]
    v = attn.v_proj(x).view(1, n, -1, attn.head_dim).transpose(1, 2)  # [1, H_kv, n, hd]
    q, k = apply_rotary_pos_emb(q, k, *cos_sin)
    k, v = cache.update(k, v, attn.layer_idx)
    context, probs = eager_attention_forward(attn, q, k, v, mask, scaling=attn.scaling)  # [1, n, H, hd], [1, H, n, n]
    hidden = hidden + attn.o_proj(context.reshape(1, n, -1))
    hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return hidden, probs


def _decoder_and_head(language_model: nn.Module) -> tuple[nn.Module, nn.Module]:
    inner = getattr(language_model, "model", language_model)
    decoder = getattr(inner, "language_model", inner)
    return decoder, language_model.lm_head


@torch.no_grad()
def eager_sparsevlm_prefill(
    language_model: nn.Module,
    inputs_embeds: torch.Tensor,  # [1, L, d], no padding
    image_start: int,
    config: Any,
    num_visual_tokens: int = 576,
) -> EagerSparseVLMOutput:
    """SparseVLM prefill of one prompt with eager attention everywhere (see the module docstring)."""
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[0] != 1:
        raise ValueError(f"the eager reference handles one prompt: inputs_embeds [1, L, d], got {tuple(inputs_embeds.shape)}")
    decoder, head = _decoder_and_head(language_model)
    work = torch.promote_types(inputs_embeds.dtype, torch.float32)
    hidden = inputs_embeds[0]  # [L, d]
    v_start, v_num = int(image_start), int(num_visual_tokens)
    raters = select_raters(hidden[v_start : v_start + v_num].to(work), hidden[v_start + v_num :].to(work))
    if raters.numel() == 0:
        raters = torch.arange(hidden.shape[0] - v_start - v_num, device=hidden.device)
    span_ids = torch.arange(v_num, device=hidden.device)  # [n_v]
    generator = torch.Generator(device="cpu").manual_seed(int(config.seed))
    prune_at = {layer: s for s, layer in enumerate(config.pruning_layers)}
    cache = DynamicCache(config=decoder.config)
    kept_out, scores_out, counts = [], [], []

    h = hidden[None]  # [1, n, d]
    mask, cos_sin = _stage_inputs(decoder, h)
    for index, layer in enumerate(decoder.layers):
        h, probs = _eager_layer(layer, h, mask, cos_sin, cache)
        if index in prune_at:
            stage = prune_at[index]
            text_start = v_start + v_num
            rows = text_start + raters  # [R]
            scores = probs[0].to(work).mean(dim=0)[rows, v_start:text_start].mean(dim=0)  # [n_v]
            h, span_ids, kept = _prune(h[0], scores, span_ids, v_start, v_num, stage, config, generator)
            v_num = span_ids.numel()
            kept_out.append(kept)
            scores_out.append(scores)
            mask, cos_sin = _stage_inputs(decoder, h)  # positions renumbered 0..n'-1
        counts.append(v_num)
    logits = head(decoder.norm(h[:, -1:]))[0, -1]  # [V]
    return EagerSparseVLMOutput(logits, kept_out, scores_out, raters, counts)


def _stage_inputs(decoder: nn.Module, h: torch.Tensor):
    """(causal mask [1, 1, n, n], RoPE tables for positions 0..n-1) of the current sequence h [1, n, d]."""
    n = h.shape[1]
    positions = torch.arange(n, device=h.device)[None]  # [1, n]
    return _causal_mask(n, h), decoder.rotary_emb(h, position_ids=positions)


def _prune(
    rows: torch.Tensor,  # [n, d] output of the pruning layer
    scores: torch.Tensor,  # [n_v]
    span_ids: torch.Tensor,  # [n_v]
    v_start: int,
    v_num: int,
    stage: int,
    config: Any,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the best visual tokens in order, insert the recycled ones after them.

    Returns (new sequence [1, n', d], new span identities [n_v'], kept identities [k])."""
    text_start = v_start + v_num
    kept, deleted = topk_keep(scores, keep_count(config.schedule[stage], v_num))  # [k], [n_del]
    visual = rows[v_start:text_start]  # [n_v, d]
    kept_ids = span_ids[kept]
    parts, ids = [rows[:v_start], visual[kept]], [kept_ids]
    if config.recycle and deleted.numel() > 0:
        n_in, clusters = recycle_sizes(deleted.numel(), config.recycle_ratio, config.cluster_divisor)
        order = torch.topk(scores[deleted], n_in).indices  # [n_in] descending score
        x = visual[deleted][order].to(scores.dtype)  # [n_in, d]
        noise = torch.rand(n_in, generator=generator, dtype=torch.float64).to(x)
        merged = density_peak_merge(x, clusters, noise).merged.to(rows.dtype)  # [clusters, d]
        parts.append(merged)
        ids.append(RECYCLED_ID_BASE * (stage + 1) + torch.arange(clusters, device=rows.device))
    parts.append(rows[text_start:])
    return torch.cat(parts)[None], torch.cat(ids), kept_ids
