"""LLaMA attention on a subset of rows: the pruning layer's scores and output without an L x L matrix.

Every layer keeps its configured attention implementation (sdpa by default): scores are computed from
a handful of rows, never from an L x L attention matrix. A LLaMA pruning layer is run in two halves:
keys and values of every row (its cache, :func:`keys_and_values`), the scores from them
(:func:`query_attention`, :func:`span_scores`), and only then queries, attention output and MLP for the
rows the pruning keeps (:func:`layer_rows`). Row-wise operations make this exact (same values as the
whole layer, up to float rounding).

Shapes: ``B`` samples, ``L`` padded keys, ``q`` input rows, ``R`` query rows, ``M`` computed rows,
``H`` / ``H_kv`` query / key-value heads, ``hd`` head size, ``d`` hidden size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import create_causal_mask
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    eager_attention_forward,
    rotate_half,
)

from ..compress.dtypes import at_least_float32
from ..compress.in_llm import PruningRule, rope_bias
from ..llava.compat import cache_kwargs
from .batch import Padded, Sample, gather_rows

__all__ = ["follow", "keys_and_values", "layer_device", "layer_rows", "query_attention", "run_layers", "span_scores", "splits_rows"]


def layer_device(module: nn.Module) -> torch.device:
    """The device of a module's weights: with ``device_map`` over several devices each decoder layer lives
    on one of them."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def follow(device: torch.device, *tensors):
    """The placement rule of every computation this package runs on a layer's own submodules (the layers
    themselves move their inputs through accelerate's hooks): its tensors go to the layer's device (a no-op
    on one device). Tuples (``cos_sin``) are moved whole; None stays None."""
    moved = tuple(
        None if t is None else tuple(x.to(device) for x in t) if isinstance(t, tuple) else t.to(device) for t in tensors
    )
    return moved if len(moved) > 1 else moved[0]


def run_layers(
    decoder: nn.Module,
    cache: DynamicCache,
    hidden: torch.Tensor,  # [B, q, d]
    key_valid: torch.Tensor,  # [B, kv] bool, kv = cached + q
    position_ids: torch.Tensor,  # [B, q], or [3, B, q] (M-RoPE's t, h, w rows)
    first: int,
    last: int,
    capture: torch.Tensor | None = None,  # [B, R] rows of the last layer's input to return
    mask: Any = None,  # the layers' attention mask, when the caller made it (decoding: decode_step_mask)
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]:
    """Run layers first..last (inclusive) with the stage's own mask and positions.

    Returns (output [B, q, d], captured input rows [B, R, d] of layer ``last`` or None, (cos, sin) [B, q, hd]).
    """
    if mask is None:
        mask = create_causal_mask(
            config=decoder.config,
            inputs_embeds=hidden,
            attention_mask=key_valid,
            position_ids=position_ids if position_ids.dim() == 2 else position_ids[0],  # M-RoPE: [3, B, q]
            layer_idx=first,
            **cache_kwargs(create_causal_mask, cache),
        )
    cos_sin = decoder.rotary_emb(hidden, position_ids=position_ids)  # ([B, q, hd], [B, q, hd])
    captured = None
    for index in range(first, last + 1):
        if index == last and capture is not None:
            captured = gather_rows(hidden, capture)  # [B, R, d]
        layer = decoder.layers[index]
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=True,
            position_embeddings=cos_sin,
            **cache_kwargs(type(layer).forward, cache),
        )  # [B, q, d]
    return hidden, captured, cos_sin


def splits_rows(layer: nn.Module) -> bool:
    """Whether the pruning layer can run on a subset of its rows: a transformers LLaMA decoder layer."""
    return isinstance(layer, LlamaDecoderLayer)


# --------------------------------------------------------------------------- queries and scores


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, n, hd] rotated with per-row tables cos, sin [B, n, hd]."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def _row_queries(
    attn: nn.Module,
    normed_rows: torch.Tensor,  # [B, M, d] input_layernorm output at ``rows``
    cos_sin: tuple[torch.Tensor, torch.Tensor],  # [B, L, hd] each
    rows: torch.Tensor,  # [B, M] padded-row indices
) -> torch.Tensor:
    """Post-RoPE queries of the given rows: [B, H, M, hd]."""
    batch, count, _ = normed_rows.shape
    query = attn.q_proj(normed_rows).view(batch, count, -1, attn.head_dim).transpose(1, 2)  # [B, H, M, hd]
    return _rope(query, gather_rows(cos_sin[0], rows), gather_rows(cos_sin[1], rows))


def _row_causal_mask(key_valid: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """[B, M, L] bool: row ``rows[b, m]`` may attend to key j (valid and not after it)."""
    positions = torch.arange(key_valid.shape[1], device=key_valid.device)  # [L]
    return key_valid[:, None, :] & (positions[None, None, :] <= rows[..., None])


def query_attention(
    layer: nn.Module,
    rows_in: torch.Tensor,  # [B, R, d] input of the layer at the query rows
    cos_sin: tuple[torch.Tensor, torch.Tensor],  # [B, L, hd] each
    keys: torch.Tensor,  # [B, H_kv, L, hd] post-RoPE keys of the layer (its cache)
    query_rows: torch.Tensor,  # [B, R]
    key_valid: torch.Tensor,  # [B, L]
) -> torch.Tensor:
    """Attention probabilities of the query rows over all keys, per head (causal, the layer's scaling):
    [B, H, R, L], in at least float32."""
    attn = layer.self_attn
    rows_in, cos_sin, keys, query_rows, key_valid = follow(layer_device(layer), rows_in, cos_sin, keys, query_rows, key_valid)
    query = _row_queries(attn, layer.input_layernorm(rows_in), cos_sin, query_rows)  # [B, H, R, hd]
    logits = row_logits(query, keys) * attn.scaling  # [B, H, R, L]
    logits = logits.masked_fill(~_row_causal_mask(key_valid, query_rows)[:, None], float("-inf"))
    return logits.softmax(dim=-1)  # [B, H, R, L]


KEY_CHUNK_ELEMENTS = 1 << 24  # keys converted to float32 at a time by row_logits (64 MB in float32)


def row_logits(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``query @ keys^T`` in at least float32 for a few query rows: [B, H, R, L].

    query: [B, H, R, hd]; keys: [B, H_kv, L, hd] (grouped-query heads share a key head). The keys are
    neither repeated per query head nor copied to float32 whole: chunks of the key length are converted
    in turn (each logit is the same dot product over hd, so the result does not depend on the chunks)."""
    batch, heads, rows, head_dim = query.shape
    kv_heads, length = keys.shape[1], keys.shape[2]
    dtype = at_least_float32(query.dtype)
    grouped = query.to(dtype).reshape(batch, kv_heads, (heads // kv_heads) * rows, head_dim)  # [B, H_kv, g*R, hd]
    chunk = max(256, KEY_CHUNK_ELEMENTS // max(1, batch * kv_heads * head_dim))
    parts = [
        grouped @ keys[:, :, start : start + chunk].to(dtype).transpose(-1, -2)  # [B, H_kv, g*R, chunk]
        for start in range(0, length, chunk)
    ]
    return torch.cat(parts, dim=-1).reshape(batch, heads, rows, length)  # [B, H, R, L]


def span_scores(
    rule: PruningRule,
    layer: nn.Module,
    probs: torch.Tensor,  # [B, H, R, L]
    cos_sin: tuple[torch.Tensor, torch.Tensor],  # [B, L, hd] each
    query_rows: torch.Tensor,  # [B, R]
    samples: Sequence[Sample],
    padded: Padded,
    rotary: nn.Module | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Per sample: the rule's score of every visual-span token [v_num_b], and the heads it used [h] or None.

    SparseVLM v2.0's RoPE-only term is built from rotary tables in float32: the layer's own ``cos_sin``
    when they are (float32 or float64 models: the same values), else recomputed by ``rotary`` (the
    decoder's ``rotary_emb``) in float32 at the same position ids, instead of the half-precision tables."""
    scores, heads, biases = [], [], []
    query_rows, cos_sin = follow(probs.device, query_rows, cos_sin)
    if rule.rope_corrected and rotary is not None and cos_sin[0].dtype not in (torch.float32, torch.float64):
        work = torch.empty(1, dtype=torch.float32, device=probs.device)
        positions = follow(layer_device(rotary), padded.position_ids)  # [B, L]
        cos_sin = follow(probs.device, tuple(rotary(work, position_ids=positions)))  # [B, L, hd] each, float32
    for b, sample in enumerate(samples):
        lo = padded.pad[b] + sample.v_start
        count = sample.raters.numel()
        span = probs[b, :, :count, lo : lo + sample.v_num]  # [H, R_b, v_num] (valid query rows first)
        bias = None
        if rule.rope_corrected:
            rows, dtype = query_rows[b, :count], probs.dtype
            cos, sin = cos_sin[0][b].to(dtype), cos_sin[1][b].to(dtype)  # [L, hd] in the probabilities' dtype
            cols = slice(lo, lo + sample.v_num)
            bias = rope_bias(cos[rows], sin[rows], cos[cols], sin[cols], layer.self_attn.scaling)  # [R_b, v_num]
            biases.append(bias.min())
        score, used = rule.scores(span, bias)  # [v_num], [h] or None
        scores.append(score)
        heads.append(used)
    if biases:
        _check_rope_bias(torch.stack(biases), samples, layer)
    return scores, heads


def _check_rope_bias(minima: torch.Tensor, samples: Sequence[Sample], layer: nn.Module) -> None:
    """SparseVLM v2.0 divides attention probabilities by the RoPE-only term: refuse a prompt where it is not
    positive (small head size or RoPE base over long distances), naming the row. ``minima``: [B]."""
    bad = torch.nonzero(minima <= 0, as_tuple=False).flatten().tolist()  # one host sync per pruning layer
    if bad:
        config = layer.self_attn.config
        theta = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
        raise ValueError(
            f"SparseVLM v2.0: the RoPE-only term (2/sqrt(d)) * sum_f cos(distance * theta_f) is not positive "
            f"(min {float(minima[bad[0]]):.3g}) between the raters and the visual tokens of row(s) {bad} at layer "
            f"{layer.self_attn.layer_idx} (head_dim {layer.self_attn.head_dim}, rope_theta {theta}, prompt length "
            f"{samples[bad[0]].prompt_length}): its attention correction divides by it, so the scores would be "
            "meaningless; this model and prompt length cannot run SparseVLM v2.0"
        )


# --------------------------------------------------------------------------- the pruning layer in two halves


def keys_and_values(
    layer: nn.Module,
    cache: DynamicCache,
    normed: torch.Tensor,  # [B, L, d] input_layernorm output
    cos_sin: tuple[torch.Tensor, torch.Tensor],  # [B, L, hd] each
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's post-RoPE keys and values of every row, stored in its cache: ([B, H_kv, L, hd] x 2)."""
    attn = layer.self_attn
    normed, cos_sin = follow(layer_device(layer), normed, cos_sin)
    batch, length, _ = normed.shape
    keys = attn.k_proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)  # [B, H_kv, L, hd]
    values = attn.v_proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)  # [B, H_kv, L, hd]
    return cache.update(_rope(keys, *cos_sin), values, attn.layer_idx)


def layer_rows(
    layer: nn.Module,
    hidden: torch.Tensor,  # [B, L, d] layer input
    normed: torch.Tensor,  # [B, L, d] input_layernorm(hidden)
    cos_sin: tuple[torch.Tensor, torch.Tensor],  # [B, L, hd] each
    keys: torch.Tensor,  # [B, H_kv, L, hd]
    values: torch.Tensor,  # [B, H_kv, L, hd]
    key_valid: torch.Tensor,  # [B, L] bool
    rows: torch.Tensor,  # [B, M] padded-row indices to compute
) -> torch.Tensor:
    """The decoder layer's output at ``rows`` only: [B, M, d] (each row attends causally to all keys)."""
    attn = layer.self_attn
    hidden, normed, cos_sin, keys, values, key_valid, rows = follow(
        layer_device(layer), hidden, normed, cos_sin, keys, values, key_valid, rows
    )
    batch, count = rows.shape
    query = _row_queries(attn, gather_rows(normed, rows), cos_sin, rows)  # [B, H, M, hd]
    allowed = _row_causal_mask(key_valid, rows)[:, None]  # [B, 1, M, L]
    if attn.config._attn_implementation == "eager":
        mask = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device)  # [B, 1, M, L]
        mask = mask.masked_fill(~allowed, torch.finfo(query.dtype).min)
        context, _ = eager_attention_forward(attn, query, keys, values, mask, scaling=attn.scaling)  # [B, M, H, hd]
    else:  # sdpa, and the flash kernels (which take no per-row mask) through sdpa
        context, _ = sdpa_attention_forward(attn, query, keys, values, allowed, scaling=attn.scaling, is_causal=False)
    hidden = gather_rows(hidden, rows) + attn.o_proj(context.reshape(batch, count, -1))  # [B, M, d]
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))
