"""In-LLM pruning prefills computed the way the official codes compute them: eager attention, batch 1.

The references of the speed comparison of section 4, one per method that prunes visual tokens inside
the LLM (same algorithms and conventions as :func:`sparsezip_lmms.pruning.pruned_generate`):

* SparseVLM v1.5 (``sparsevlm_*``): raters from the raw embeddings, scores = the pruning layer's
  softmax attention of the raters over the visual span, mean over heads then raters, top-k kept in
  order, the best 30 % of the deleted tokens recycled by density-peak clustering, positions renumbered
  0..n-1 after each pruning;
* SparseVLM v2.0 (``sparsevlm2_*``): the raters' probabilities divided by the RoPE-only term computed
  from the layer's rotary tables at the tokens' original position ids, the priority heads of largest
  corrected mass, mean over them then over the raters, top-k kept in order, no recycling, original
  position ids kept (later layers rotate the kept tokens with their original ids);
* FastV (``fastv_*``): layer K-1 runs with its probabilities materialised, the last prompt row averaged
  over heads scores the image span, the ``int(n * R)`` best are kept and the sequence fed to layer K is
  pruned, original position ids;
* DART (``dart_*``): after layer K-1, the official loop on one prompt: layer K-1's cached keys (heads
  concatenated) give the pivots by L1 norm, then each pivot in the official set order keeps the ``T``
  tokens of a Python-set pool least similar to it (cosine on the final-normed states, one host round trip
  per pivot), original position ids;
* deferred (a vision-side config with ``prune_layer: L > 0``): every layer runs eager, the span tokens
  not selected by ``visual_keep`` are dropped at layer L's input, original ids (or renumbered with
  ``prune_positions: contiguous``).

Every layer runs eager attention: ``softmax(q kᵀ / √d + mask)`` materialised as a ``[1, H, n, n]``
matrix, which is what a model run with ``output_attentions=True`` computes, and at a pruning layer the
scores are read from that matrix. One prompt at a time (the official codes index row 0), one KV-cache
slot per layer. The method's parameters are read from the config itself, not from the decoder's rule
objects; only pure functions of ``compress.sparsevlm_recycle`` / ``compress.in_llm`` are shared (rater
selection, top-k, keep counts, recycling with the same per-sample seeded draws), so the kept and
recycled tokens must be identical to ours; the attention path differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.models.llama.modeling_llama import (
    apply_rotary_pos_emb,
    eager_attention_forward,
)

import torch.nn.functional as F

from ..compress.dart import dart_picks, pivot_processing_order
from ..compress.dtypes import at_least_float32
from ..compress.in_llm import fastv_keep_count
from ..methods.registry import method_of
from ..compress.sparsevlm_recycle import (
    density_peak_merge,
    keep_count,
    recycle_sizes,
    select_raters,
    topk_keep,
)
from ..pruning import RECYCLED_ID_BASE

__all__ = [
    "EagerPrunedOutput",
    "EagerSparseVLMOutput",
    "eager_method",
    "eager_pruned_prefill",
    "eager_sparsevlm_prefill",
]

FASTV_FIXED_START = 35  # FastV's official hard-coded image start (``span: fixed``)


@dataclass
class EagerPrunedOutput:
    prefill_logits: torch.Tensor  # [V]
    kept: list[torch.Tensor]  # per pruning layer: [k] identities of the kept visual tokens, in order
    scores: list[torch.Tensor]  # per pruning layer: [n_v] relevance of every visual-span token (NaN: deferred)
    raters: torch.Tensor  # [R] query rows relative to the first text token (empty: deferred)
    visual_tokens_per_layer: list[int]
    heads: list[torch.Tensor | None] = field(default_factory=list)  # per pruning layer: [h] (v2.0), else None
    positions: torch.Tensor | None = None  # [n] position ids the last layer used
    method: str = ""


EagerSparseVLMOutput = EagerPrunedOutput  # the v1.5-only name of earlier versions


def eager_method(config: Any) -> str:
    """"sparsevlm", "sparsevlm2", "fastv", "dart" or "deferred" (a vision-side config with ``prune_layer > 0``)."""
    if method_of(config).stage == "llm":
        return config.method
    if getattr(config, "prune_layer", 0) > 0:
        return "deferred"
    raise ValueError(f"config {config!r} does not prune inside the LLM")


def _pruning_layers(method: str, config: Any) -> tuple[int, ...]:
    """The layers whose output is pruned."""
    if method in ("sparsevlm", "sparsevlm2"):
        return tuple(config.pruning_layers)
    if method in ("fastv", "dart"):
        return (int(config.layer) - 1,)  # scored at K-1, pruned at layer K's input
    return (int(config.prune_layer) - 1,)  # dropped at layer L's input


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


def _stage_inputs(
    decoder: nn.Module, h: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """(causal mask [1, 1, n, n], RoPE tables [1, n, hd] x 2 at ``positions`` [n]) of the sequence h [1, n, d]."""
    return _causal_mask(h.shape[1], h), decoder.rotary_emb(h, position_ids=positions[None])


@torch.no_grad()
def eager_pruned_prefill(
    language_model: nn.Module,
    inputs_embeds: torch.Tensor,  # [1, L, d], no padding
    image_start: int,
    config: Any,
    num_visual_tokens: int = 576,
    visual_keep: torch.Tensor | None = None,  # [V] or [1, V] bool (deferred pruning)
) -> EagerPrunedOutput:
    """The pruned prefill of one prompt with eager attention everywhere (see the module docstring)."""
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[0] != 1:
        raise ValueError(f"the eager reference handles one prompt: inputs_embeds [1, L, d], got {tuple(inputs_embeds.shape)}")
    method = eager_method(config)
    decoder, head = _decoder_and_head(language_model)
    work = at_least_float32(inputs_embeds.dtype)
    hidden = inputs_embeds[0]  # [L, d]
    length = hidden.shape[0]
    fixed = method == "fastv" and getattr(config, "span", "image") == "fixed"
    v_start, v_num = (FASTV_FIXED_START if fixed else int(image_start)), int(num_visual_tokens)
    text_start = v_start + v_num
    keep = None
    if method in ("sparsevlm", "sparsevlm2"):
        raters = select_raters(hidden[v_start:text_start].to(work), hidden[text_start:].to(work))  # [R]
        if raters.numel() == 0:  # no rater selected: every text token rates
            raters = torch.arange(length - text_start, device=hidden.device)
    elif method == "fastv":
        raters = torch.tensor([length - 1 - text_start], device=hidden.device)  # the last prompt token
    elif method == "dart":
        raters = torch.zeros(0, dtype=torch.long, device=hidden.device)
    else:
        if visual_keep is None:
            raise ValueError("deferred pruning needs visual_keep (the vision-side selection)")
        raters = torch.zeros(0, dtype=torch.long, device=hidden.device)
        keep = visual_keep.reshape(-1)[:v_num].to(hidden.device, torch.bool)  # [n_v]
    renumber = method == "sparsevlm" or (method == "deferred" and config.prune_positions == "contiguous")
    span_ids = torch.arange(v_num, device=hidden.device)  # [n_v]
    generator = torch.Generator(device="cpu").manual_seed(int(getattr(config, "seed", 0)))
    prune_at = {layer: s for s, layer in enumerate(_pruning_layers(method, config))}
    cache = DynamicCache(config=decoder.config)
    kept_out, scores_out, heads_out, counts = [], [], [], []

    h = hidden[None]  # [1, n, d]
    positions = torch.arange(length, device=hidden.device)  # [n] position ids
    mask, cos_sin = _stage_inputs(decoder, h, positions)
    for index, layer in enumerate(decoder.layers):
        used = positions  # [n] the ids this layer rotates with
        h, probs = _eager_layer(layer, h, mask, cos_sin, cache)
        if index in prune_at:
            stage = prune_at[index]
            text_start = v_start + v_num
            if method == "deferred":
                scores, heads = torch.full((v_num,), float("nan"), device=h.device), None
                kept = torch.nonzero(keep, as_tuple=False).flatten()  # [k] the given selection
                keep = keep[kept]
            elif method == "dart":
                kept, scores = _dart_kept(config, cache.layers[index].keys, decoder.norm(h)[0], v_start, v_num)
                heads = None
            else:
                rows = text_start + raters  # [R] sequence rows of the query tokens
                scores, heads = _scores(method, config, probs[0], cos_sin, layer, rows, v_start, text_start)
            if method == "sparsevlm":
                h, span_ids, kept_ids = _prune_and_recycle(h[0], scores, span_ids, v_start, v_num, stage, config, generator)
            else:
                if method not in ("deferred", "dart"):
                    k = fastv_keep_count(v_num, float(config.ratio)) if method == "fastv" else keep_count(config.schedule[stage], v_num)
                    kept, _ = topk_keep(scores, k)  # [k] ascending
                rows_kept = torch.cat(
                    [torch.arange(v_start, device=h.device), v_start + kept, torch.arange(text_start, h.shape[1], device=h.device)]
                )  # [n'] sequence rows that continue
                h, positions = h[:, rows_kept], positions[rows_kept]  # [1, n', d], [n'] original ids
                kept_ids = span_ids[kept]
                span_ids = kept_ids
            if renumber:
                positions = torch.arange(h.shape[1], device=h.device)  # [n'] 0..n'-1 again
            v_num = span_ids.numel()
            kept_out.append(kept_ids)
            scores_out.append(scores)
            heads_out.append(heads)
            mask, cos_sin = _stage_inputs(decoder, h, positions)
        counts.append(v_num)
    logits = head(decoder.norm(h[:, -1:]))[0, -1]  # [V]
    return EagerPrunedOutput(logits, kept_out, scores_out, raters, counts, heads_out, used, method)


def _dart_kept(
    config: Any,
    keys: torch.Tensor,  # [1, H_kv, n, hd] layer K-1's post-RoPE keys
    states: torch.Tensor,  # [n, d] final-normed output of layer K-1
    v_start: int,
    v_num: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DART's selection the way the official code makes it (Python sets and lists, one pivot at a time):
    (kept span positions [k] ascending, L1 key norm of every span token [n_v])."""
    work = at_least_float32(states.dtype)
    n = keys.shape[2]
    flat = keys[0].transpose(0, 1).reshape(n, -1).to(work)  # [n, H_kv * hd] heads concatenated
    image_norms = flat[v_start : v_start + v_num].abs().sum(dim=-1)  # [n_v]
    text_norms = flat[v_start + v_num :].abs().sum(dim=-1)  # [n_t]
    image_pivots = (image_norms.topk(config.pivot_image).indices + v_start).tolist()
    text_pivots = (text_norms.topk(config.pivot_text).indices + v_start + v_num).tolist()
    picks = dart_picks(v_num, config.pivot_image, config.pivot_text, config.max_tokens, config.reduction_ratio)
    h = states.to(work)  # [n, d]
    kept = set(image_pivots)
    pool = set(range(v_start, v_start + v_num)) - kept
    for pivot in pivot_processing_order(image_pivots, text_pivots, config.pivot_order):
        candidates = sorted(pool)
        dissimilarity = -F.cosine_similarity(h[pivot], h[candidates], dim=-1)  # [|pool|]
        chosen = [candidates[i] for i in dissimilarity.topk(picks).indices.tolist()]
        kept.update(chosen)
        pool.difference_update(chosen)
    return torch.tensor(sorted(kept), device=states.device) - v_start, image_norms


def eager_sparsevlm_prefill(
    language_model: nn.Module,
    inputs_embeds: torch.Tensor,  # [1, L, d], no padding
    image_start: int,
    config: Any,
    num_visual_tokens: int = 576,
) -> EagerPrunedOutput:
    """SparseVLM v1.5 prefill of one prompt with eager attention everywhere (:func:`eager_pruned_prefill`)."""
    if getattr(config, "method", None) != "sparsevlm":
        raise ValueError(f"eager_sparsevlm_prefill needs a SparseVLM v1.5 config, got {config!r}")
    return eager_pruned_prefill(language_model, inputs_embeds, image_start, config, num_visual_tokens)


def _scores(
    method: str,
    config: Any,
    probs: torch.Tensor,  # [H, n, n] the pruning layer's attention probabilities (model dtype)
    cos_sin: tuple[torch.Tensor, torch.Tensor],  # [1, n, hd] each, at the rows' position ids
    layer: nn.Module,
    rows: torch.Tensor,  # [R] query rows
    v_start: int,
    text_start: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(score of every visual-span token [n_v], priority heads [h] or None) read from the full matrix."""
    span = probs[:, rows, v_start:text_start]  # [H, R, n_v]
    span = span.to(at_least_float32(span.dtype))  # scores in at least float32
    if method != "sparsevlm2":  # v1.5 raters, FastV's last row: mean over heads, then over the rows
        return span.mean(dim=0).mean(dim=0), None
    bias = _rope_only_term(cos_sin, rows, v_start, text_start, layer.self_attn.scaling, span.dtype)  # [R, n_v]
    if not bool((bias > 0).all()):
        raise ValueError("SparseVLM v2.0: the RoPE-only term is not positive for this model and prompt length")
    corrected = span / bias[None]  # [H, R, n_v]
    mass = corrected.sum(dim=(1, 2))  # [H]
    heads = torch.topk(mass, min(int(config.priority_heads), mass.shape[0])).indices  # [h] descending mass
    return corrected[heads].mean(dim=0).mean(dim=0), heads


def _rope_only_term(
    cos_sin: tuple[torch.Tensor, torch.Tensor],  # [1, n, hd] each
    rows: torch.Tensor,  # [R]
    v_start: int,
    text_start: int,
    scaling: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    """[R, n_v]: an all-ones query and key rotated with the layer's tables, their scaled dot product."""
    cos, sin = (t.to(dtype) for t in cos_sin)  # [1, n, hd]
    ones = torch.ones(1, 1, *cos.shape[1:], dtype=dtype, device=cos.device)  # [1, 1, n, hd]
    q1, k1 = apply_rotary_pos_emb(ones, ones, cos, sin)  # [1, 1, n, hd] each
    return (q1[0, 0, rows] @ k1[0, 0, v_start:text_start].transpose(0, 1)) * scaling  # [R, n_v]


def _prune_and_recycle(
    rows: torch.Tensor,  # [n, d] output of the pruning layer
    scores: torch.Tensor,  # [n_v]
    span_ids: torch.Tensor,  # [n_v]
    v_start: int,
    v_num: int,
    stage: int,
    config: Any,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SparseVLM v1.5: keep the best visual tokens in order, insert the recycled ones after them.

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
