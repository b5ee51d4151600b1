"""SparseVLM v1.5 (the ICML code) inside a transformers 5.x LLaMA decoder: batched, SDPA kept.

The decoder layers are called one by one (no patching of transformers classes):

* prefill, stage by stage: stage ``s`` runs the layers after the previous pruning layer up to and
  including pruning layer ``s``; the batch is re-padded on the left at the start of every stage because
  every sample keeps its own number of tokens. After the pruning layer, every sample's visual span is
  scored by its raters (post-RoPE queries of a few rows against the layer's cached keys), the best
  ``min(schedule[s], n_visual - 1)`` visual tokens are kept in order, and the recycled tokens (density
  peak clusters of the best 30 % of the deleted ones) are inserted right after them.
* decoding: greedy, no pruning; the layers of one stage share one cache length, and each sample places
  its new token at its own cache length of that stage.

Every layer keeps its configured attention implementation (sdpa by default): the rater scores are
computed from a handful of rows, never from an L x L attention matrix. A LLaMA pruning layer is run
in two halves: keys and values of every row (its cache), the rater scores from them, and only then
queries, attention output and MLP for the rows the pruning keeps (system, kept and to-be-recycled
visual, text); the dropped rows' outputs, which the official code computes and discards, are never
computed. Row-wise operations make this exact (same values as the whole layer, up to float rounding). A single ``DynamicCache`` holds
every layer; layers of different stages simply hold different lengths, and masks are built per stage
with ``create_causal_mask(..., layer_idx=first layer of the stage)``.

Batch semantics: every sample is processed as if it were alone (its own raters, kept and recycled tokens,
positions 0..n-1 and per-layer cache lengths); padding only adds masked rows. Random density tie-break
draws come from one ``torch.Generator`` per sample seeded with ``config.seed`` (so a sample draws the
same numbers alone or in a batch), or are replayed from ``recycle_noise``.

See ``docs/ALGORITHMS.md (SparseVLM section)`` for the algorithm and its official conventions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    eager_attention_forward,
    repeat_kv,
    rotate_half,
)

from ..compress.sparsevlm_recycle import density_peak_merge, keep_count, recycle_sizes, select_raters, topk_keep
from ..config import ConfigError
from .compat import cache_kwargs

__all__ = ["RECYCLED_ID_BASE", "SparseVLMOutput", "sparsevlm_generate"]

RECYCLED_ID_BASE = 1000  # recycled token c of stage s (0-based) has identity 1000 * (s + 1) + c


@dataclass
class SparseVLMOutput:
    """What :func:`sparsevlm_generate` returns. ``T`` = max_new_tokens, ``N`` = number of decoder layers.

    ``kept[s]`` / ``scores[s]`` are padded with -1 / NaN where samples of a batch keep different counts
    (k = min(schedule, n_visual - 1) can differ by sample).
    """

    sequences: torch.Tensor  # [B, T] greedy token ids
    prefill_logits: torch.Tensor  # [B, V] logits at the last prompt position
    kept: list[torch.Tensor]  # per pruning layer: [B, k_max] identities of the kept visual tokens, in order
    scores: list[torch.Tensor]  # per pruning layer: [B, n_max] relevance of each visual-span token (before pruning)
    raters: list[torch.Tensor]  # per sample: [n_raters] rater indices relative to the first text token
    visual_tokens_per_layer: torch.Tensor  # [B, N] visual tokens after each layer (recycled included)
    equal_tokens: torch.Tensor  # [B] float64, mean over layers of visual_tokens_per_layer
    cache_lengths: torch.Tensor  # [B, N] each layer's own KV length after the prefill (padding excluded)
    decode_positions: torch.Tensor  # [B, T - 1, N] position each layer gave each decoded token


# --------------------------------------------------------------------------- internal state


@dataclass
class _Sample:
    """One sample's current (unpadded) sequence: [system | visual span | text]."""

    hidden: torch.Tensor  # [n, d]
    v_start: int  # first visual token (system prompt length, never changes)
    v_num: int  # visual tokens now (kept + recycled)
    raters: torch.Tensor  # [R] indices relative to the first text token
    span_ids: torch.Tensor  # [v_num] identity of every visual token
    generator: torch.Generator

    @property
    def text_start(self) -> int:
        return self.v_start + self.v_num

    @property
    def length(self) -> int:
        return self.hidden.shape[0]


@dataclass
class _Stage:
    first: int  # first layer
    last: int  # last layer (the pruning layer when ``prune`` is not None)
    prune: int | None  # index into the schedule, None for the final (non-pruning) stage


@dataclass
class _Padded:
    hidden: torch.Tensor  # [B, L, d] left padded with zeros
    valid: torch.Tensor  # [B, L] bool
    position_ids: torch.Tensor  # [B, L] 0..n_b-1 on valid rows, 0 on padding
    pad: list[int]  # padding rows of each sample
    lengths: list[int]  # valid rows of each sample


@dataclass
class _DecodeGroup:
    first: int
    last: int
    key_valid: torch.Tensor  # [B, L_s] bool, grows by one column per decoded token
    lengths: torch.Tensor  # [B] valid cache length of each sample in this stage


@dataclass
class _Selection:
    """One sample's pruning decision at a stage (span positions, 0-based within the visual span)."""

    kept: torch.Tensor  # [k] ascending
    recycle_in: torch.Tensor  # [n_in] deleted tokens fed to the recycling, descending score ([0] without)
    clusters: int  # recycled tokens to make (0 without recycling)


# --------------------------------------------------------------------------- setup


def _resolve_modules(language_model: nn.Module, lm_head: nn.Module | None) -> tuple[nn.Module, nn.Module]:
    """(decoder with .layers/.norm/.rotary_emb/.embed_tokens, lm_head) from a LlamaForCausalLM, a
    LlavaForConditionalGeneration, or a bare LlamaModel plus ``lm_head``."""
    if hasattr(language_model, "layers") and hasattr(language_model, "rotary_emb"):
        decoder = language_model
    else:
        inner = getattr(language_model, "model", None)
        if inner is not None and hasattr(inner, "language_model"):
            decoder = inner.language_model
        elif inner is not None and hasattr(inner, "layers"):
            decoder = inner
        else:
            raise TypeError(
                f"expected a LlamaForCausalLM, a LLaVA model or a LlamaModel, got {type(language_model).__name__}"
            )
        if lm_head is None:
            lm_head = getattr(language_model, "lm_head", None)
    if lm_head is None:
        raise ValueError("a bare decoder model needs `lm_head=`")
    return decoder, lm_head


def _check_config(config: Any, depth: int) -> None:
    if getattr(config, "method", None) != "sparsevlm":
        raise ConfigError(f"sparsevlm_generate needs a SparseVLM config (method 'sparsevlm'), got {config!r}")
    layers, schedule = list(config.pruning_layers), list(config.schedule)
    if len(layers) != len(schedule):
        raise ConfigError(f"pruning_layers {layers} and schedule {schedule} must have the same length")
    bad = [layer for layer in layers if not 0 <= layer < depth]
    if bad:
        raise ConfigError(f"pruning_layers {layers}: layer(s) {bad} do not exist in a model with {depth} layers")
    if any(b <= a for a, b in pairwise(layers)):
        raise ConfigError(f"pruning_layers must be strictly increasing, got {layers}")


def _stages(pruning_layers: Sequence[int], depth: int) -> list[_Stage]:
    stages, first = [], 0
    for index, layer in enumerate(pruning_layers):
        stages.append(_Stage(first, layer, index))
        first = layer + 1
    if first < depth:
        stages.append(_Stage(first, depth - 1, None))
    return stages


def _split_samples(
    inputs_embeds: torch.Tensor,  # [B, L, d]
    attention_mask: torch.Tensor,  # [B, L]
    image_start: torch.Tensor,  # [B]
    num_visual: int,
    seed: int,
) -> list[_Sample]:
    """Unpad every row, locate its visual span and pick its raters from the raw embeddings."""
    valid = attention_mask.detach().to("cpu", torch.bool)  # [B, L] (one transfer: sizes are needed)
    starts = image_start.detach().to("cpu", torch.long).tolist()
    length = valid.shape[1]
    samples = []
    for b, start in enumerate(starts):
        if not (0 <= start and start + num_visual <= length and bool(valid[b, start : start + num_visual].all())):
            raise ValueError(
                f"row {b}: the {num_visual} visual tokens from image_start={start} must lie inside the row's "
                "unpadded tokens"
            )
        rows = torch.nonzero(valid[b], as_tuple=False).flatten().to(inputs_embeds.device)  # [n_b]
        hidden = inputs_embeds[b].index_select(0, rows)  # [n_b, d]
        v_start = int(valid[b, :start].sum())
        t_start = v_start + num_visual
        if t_start >= hidden.shape[0]:
            raise ValueError(
                f"row {b}: no text after the image; SparseVLM rates visual tokens with the text that follows the "
                "image (prompts without an image or without text must be run without SparseVLM)"
            )
        raters = _raters(hidden[v_start:t_start], hidden[t_start:])
        span_ids = torch.arange(num_visual, device=hidden.device)  # [576]
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        samples.append(_Sample(hidden, v_start, num_visual, raters, span_ids, generator))
    return samples


def _raters(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Official rule on the raw embeddings; when it selects nobody (all text relevances equal, e.g. a single
    text token, where the official code would average over an empty set) every text token rates."""
    dtype = _compute_dtype(visual.dtype)
    raters = select_raters(visual.to(dtype), text.to(dtype))  # [R]
    if raters.numel() == 0:
        raters = torch.arange(text.shape[0], device=text.device)
    return raters


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scores and clustering run in at least float32 (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


# --------------------------------------------------------------------------- padding and layers


def _pad_left(samples: Sequence[_Sample]) -> _Padded:
    lengths = [s.length for s in samples]
    width = max(lengths)
    first = samples[0].hidden
    hidden = first.new_zeros(len(samples), width, first.shape[-1])  # [B, L, d]
    valid = torch.zeros(len(samples), width, dtype=torch.bool, device=first.device)  # [B, L]
    pad = [width - n for n in lengths]
    for b, sample in enumerate(samples):
        hidden[b, pad[b] :] = sample.hidden
        valid[b, pad[b] :] = True
    offsets = torch.tensor(pad, device=first.device)[:, None]  # [B, 1]
    position_ids = (torch.arange(width, device=first.device)[None, :] - offsets).clamp(min=0)  # [B, L]
    return _Padded(hidden, valid, position_ids, pad, lengths)


def _run_layers(
    decoder: nn.Module,
    cache: DynamicCache,
    hidden: torch.Tensor,  # [B, q, d]
    key_valid: torch.Tensor,  # [B, kv] bool, kv = cached + q
    position_ids: torch.Tensor,  # [B, q]
    first: int,
    last: int,
    capture: torch.Tensor | None = None,  # [B, R] rows of the last layer's input to return
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]:
    """Run layers first..last (inclusive) with the stage's own mask and positions.

    Returns (output [B, q, d], captured input rows [B, R, d] of layer ``last`` or None, (cos, sin) [B, q, hd]).
    """
    mask = create_causal_mask(
        config=decoder.config,
        inputs_embeds=hidden,
        attention_mask=key_valid,
        position_ids=position_ids,
        layer_idx=first,
        **cache_kwargs(create_causal_mask, cache),
    )
    cos_sin = decoder.rotary_emb(hidden, position_ids=position_ids)  # ([B, q, hd], [B, q, hd])
    captured = None
    for index in range(first, last + 1):
        if index == last and capture is not None:
            captured = _gather_rows(hidden, capture)  # [B, R, d]
        layer = decoder.layers[index]
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=True,
            position_embeddings=cos_sin,
            **cache_kwargs(type(layer).forward, cache),
        )
    return hidden, captured, cos_sin


def _gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x [B, L, D], rows [B, R] -> [B, R, D]."""
    return x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1]))


# --------------------------------------------------------------------------- scoring


def _rater_rows(samples: Sequence[_Sample], padded: _Padded) -> torch.Tensor:
    """Padded-row index of every rater: [B, R]; sample b's R_b raters come first, the rest point at the
    last row (computed, then ignored)."""
    count = max(s.raters.numel() for s in samples)
    width = padded.hidden.shape[1]
    rows = torch.full((len(samples), count), width - 1, dtype=torch.long, device=padded.hidden.device)  # [B, R]
    for b, sample in enumerate(samples):
        rows[b, : sample.raters.numel()] = sample.raters + (padded.pad[b] + sample.text_start)
    return rows


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
    return _rope(query, _gather_rows(cos_sin[0], rows), _gather_rows(cos_sin[1], rows))


def _row_causal_mask(key_valid: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """[B, M, L] bool: row ``rows[b, m]`` may attend to key j (valid and not after it)."""
    positions = torch.arange(key_valid.shape[1], device=key_valid.device)  # [L]
    return key_valid[:, None, :] & (positions[None, None, :] <= rows[..., None])


def _rater_attention(
    layer: nn.Module,
    rows_in: torch.Tensor,  # [B, R, d] input of the layer at the rater rows
    cos_sin: tuple[torch.Tensor, torch.Tensor],  # [B, L, hd] each
    keys: torch.Tensor,  # [B, H_kv, L, hd] post-RoPE keys of the layer (its cache)
    rater_rows: torch.Tensor,  # [B, R]
    key_valid: torch.Tensor,  # [B, L]
) -> torch.Tensor:
    """Head-mean attention probabilities of the rater rows over all keys (causal): [B, R, L]."""
    attn = layer.self_attn
    query = _row_queries(attn, layer.input_layernorm(rows_in), cos_sin, rater_rows)  # [B, H, R, hd]
    dtype = _compute_dtype(query.dtype)
    keys = repeat_kv(keys, attn.num_key_value_groups).to(dtype)  # [B, H, L, hd]
    logits = (query.to(dtype) @ keys.transpose(-1, -2)) * attn.scaling  # [B, H, R, L]
    logits = logits.masked_fill(~_row_causal_mask(key_valid, rater_rows)[:, None], float("-inf"))
    return logits.softmax(dim=-1).mean(dim=1)  # [B, R, L]


def _span_scores(
    probs: torch.Tensor,  # [B, R, L]
    samples: Sequence[_Sample],
    padded: _Padded,
) -> list[torch.Tensor]:
    """Per sample: mean over its raters of the probabilities on its visual span -> [v_num_b]."""
    scores = []
    for b, sample in enumerate(samples):
        lo = padded.pad[b] + sample.v_start
        span = probs[b, : sample.raters.numel(), lo : lo + sample.v_num]  # [R_b, v_num] (valid raters first)
        scores.append(span.mean(dim=0))
    return scores


# --------------------------------------------------------------------------- pruning and recycling


def _noise(
    sample: _Sample, b: int, stage: int, count: int, recycle_noise: Sequence[torch.Tensor] | None, like: torch.Tensor
) -> torch.Tensor:
    """[count] uniform draws for the density tie-break: replayed, or from the sample's generator."""
    if recycle_noise is None:
        draws = torch.rand(count, generator=sample.generator, dtype=torch.float64)
    else:
        row = recycle_noise[stage][b]
        if row.shape[0] < count:
            raise ValueError(f"recycle_noise[{stage}] row {b} has {row.shape[0]} values, the recycling needs {count}")
        draws = row[:count]
    return draws.to(device=like.device, dtype=like.dtype)


def _select(sample: _Sample, scores: torch.Tensor, stage: int, config: Any) -> _Selection:
    """Kept span positions (best ``min(schedule, n_visual - 1)``, in order) and the recycling's inputs:
    the best ``recycle_ratio`` of the deleted ones, descending score."""
    k = keep_count(config.schedule[stage], sample.v_num)
    kept, deleted = topk_keep(scores, k)  # [k], [n_del] ascending span positions
    recycle_in, clusters = deleted[:0], 0
    if config.recycle and deleted.numel() > 0:
        n_in, clusters = recycle_sizes(deleted.numel(), config.recycle_ratio, config.cluster_divisor)
        recycle_in = deleted[torch.topk(scores[deleted], n_in).indices]  # [n_in] descending score
    return _Selection(kept, recycle_in, clusters)


def _needed_rows(sample: _Sample, selection: _Selection) -> torch.Tensor:
    """Rows of the pruning layer's output that the pruning uses, [n_needed] (unpadded indices):
    system, kept visual (in order), recycling inputs (descending score), text."""
    device = sample.span_ids.device
    return torch.cat(
        [
            torch.arange(sample.v_start, device=device),
            sample.v_start + selection.kept,
            sample.v_start + selection.recycle_in,
            torch.arange(sample.text_start, sample.length, device=device),
        ]
    )


def _apply_pruning(
    sample: _Sample,
    b: int,
    out_rows: torch.Tensor,  # [n_needed, d] the pruning layer's output at ``_needed_rows`` (that order)
    selection: _Selection,
    stage: int,
    recycle_noise: Sequence[torch.Tensor] | None,
) -> torch.Tensor:
    """New sequence [system | kept | recycled | text]; returns the kept identities [k]."""
    k, n_in = selection.kept.numel(), selection.recycle_in.numel()
    kept_end = sample.v_start + k
    kept_ids = sample.span_ids[selection.kept]  # [k]
    parts, ids = [out_rows[:kept_end]], [kept_ids]
    if selection.clusters > 0:
        x = out_rows[kept_end : kept_end + n_in]  # [n_in, d]
        work = x.to(_compute_dtype(x.dtype))
        noise = _noise(sample, b, stage, n_in, recycle_noise, work)
        merged = density_peak_merge(work, selection.clusters, noise).merged.to(x.dtype)  # [clusters, d]
        parts.append(merged)
        ids.append(RECYCLED_ID_BASE * (stage + 1) + torch.arange(merged.shape[0], device=kept_ids.device))
    parts.append(out_rows[kept_end + n_in :])
    sample.hidden = torch.cat(parts, dim=0)  # [n', d]
    sample.span_ids = torch.cat(ids)  # [v_num']
    sample.v_num = sample.span_ids.numel()
    return kept_ids


# --------------------------------------------------------------------------- the pruning layer


def _splits_rows(layer: nn.Module) -> bool:
    """Whether the pruning layer can run on a subset of its rows: a transformers LLaMA decoder layer."""
    return isinstance(layer, LlamaDecoderLayer)


def _keys_and_values(
    layer: nn.Module,
    cache: DynamicCache,
    normed: torch.Tensor,  # [B, L, d] input_layernorm output
    cos_sin: tuple[torch.Tensor, torch.Tensor],  # [B, L, hd] each
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's post-RoPE keys and values of every row, stored in its cache: ([B, H_kv, L, hd] x 2)."""
    attn = layer.self_attn
    batch, length, _ = normed.shape
    keys = attn.k_proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)  # [B, H_kv, L, hd]
    values = attn.v_proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)  # [B, H_kv, L, hd]
    return cache.update(_rope(keys, *cos_sin), values, attn.layer_idx)


def _layer_rows(
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
    batch, count = rows.shape
    query = _row_queries(attn, _gather_rows(normed, rows), cos_sin, rows)  # [B, H, M, hd]
    allowed = _row_causal_mask(key_valid, rows)[:, None]  # [B, 1, M, L]
    if attn.config._attn_implementation == "eager":
        mask = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device)
        mask = mask.masked_fill(~allowed, torch.finfo(query.dtype).min)
        context, _ = eager_attention_forward(attn, query, keys, values, mask, scaling=attn.scaling)
    else:  # sdpa, and the flash kernels (which take no per-row mask) through sdpa
        context, _ = sdpa_attention_forward(attn, query, keys, values, allowed, scaling=attn.scaling, is_causal=False)
    hidden = _gather_rows(hidden, rows) + attn.o_proj(context.reshape(batch, count, -1))  # [B, M, d]
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


def _needed_padded_rows(needed: Sequence[torch.Tensor], pad: Sequence[int]) -> torch.Tensor:
    """[B, M] padded-row indices; a sample with fewer rows repeats its last one (computed, then ignored)."""
    width = max(r.numel() for r in needed)
    out = torch.stack([torch.cat([r, r[-1:].expand(width - r.numel())]) for r in needed])  # [B, M]
    return out + torch.tensor(pad, device=out.device)[:, None]


def _pad_stack(rows: Sequence[torch.Tensor], fill: float) -> torch.Tensor:
    """Right-pad 1-D tensors to [B, max_len] with ``fill``."""
    width = max(r.numel() for r in rows)
    out = rows[0].new_full((len(rows), width), fill)
    for b, r in enumerate(rows):
        out[b, : r.numel()] = r
    return out


def _pruning_stage(
    decoder: nn.Module, cache: DynamicCache, samples: Sequence[_Sample], padded: _Padded, stage: _Stage, config: Any
) -> tuple[list[torch.Tensor], list[_Selection], list[torch.Tensor]]:
    """Run a pruning stage's layers and score its visual spans.

    Returns per sample: span scores [v_num], the selection, and the pruning layer's output at
    ``_needed_rows`` [n_needed, d] (in that order).
    """
    pruning = decoder.layers[stage.last]
    rater_rows = _rater_rows(samples, padded)  # [B, R]
    split = _splits_rows(pruning)  # a LLaMA layer runs on the needed rows; any other type runs whole
    if split:
        hidden = padded.hidden  # [B, L, d]
        if stage.first < stage.last:
            hidden, _, _ = _run_layers(
                decoder, cache, hidden, padded.valid, padded.position_ids, stage.first, stage.last - 1
            )
        cos_sin = decoder.rotary_emb(hidden, position_ids=padded.position_ids)  # ([B, L, hd], [B, L, hd])
        normed = pruning.input_layernorm(hidden)  # [B, L, d]
        keys, values = _keys_and_values(pruning, cache, normed, cos_sin)  # [B, H_kv, L, hd] x 2
        rows_in = _gather_rows(hidden, rater_rows)  # [B, R, d]
    else:
        out, rows_in, cos_sin = _run_layers(
            decoder, cache, padded.hidden, padded.valid, padded.position_ids, stage.first, stage.last, rater_rows
        )
        keys = cache.layers[stage.last].keys
    probs = _rater_attention(pruning, rows_in, cos_sin, keys, rater_rows, padded.valid)  # [B, R, L]
    scores = _span_scores(probs, samples, padded)
    selections = [_select(s, sc, stage.prune, config) for s, sc in zip(samples, scores, strict=True)]
    rows = [_needed_rows(s, sel) for s, sel in zip(samples, selections, strict=True)]
    if not split:
        return scores, selections, [out[b, padded.pad[b] :][r] for b, r in enumerate(rows)]
    out = _layer_rows(
        pruning, hidden, normed, cos_sin, keys, values, padded.valid, _needed_padded_rows(rows, padded.pad)
    )  # [B, M, d]
    return scores, selections, [out[b, : r.numel()] for b, r in enumerate(rows)]


# --------------------------------------------------------------------------- main loop


def _validate_inputs(
    inputs_embeds, attention_mask, image_start, max_new_tokens, num_visual_tokens, recycle_noise, n_prune
):
    if inputs_embeds.dim() != 3:
        raise ValueError(f"inputs_embeds must be [B, L, d], got shape {tuple(inputs_embeds.shape)}")
    batch, length = inputs_embeds.shape[:2]
    if attention_mask is not None and tuple(attention_mask.shape) != (batch, length):
        raise ValueError(f"attention_mask must be [{batch}, {length}], got {tuple(attention_mask.shape)}")
    if tuple(image_start.shape) != (batch,):
        raise ValueError(f"image_start must be [{batch}], got {tuple(image_start.shape)}")
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if int(num_visual_tokens) < 1:
        raise ValueError("num_visual_tokens must be >= 1 (prompts without an image do not use SparseVLM)")
    if recycle_noise is not None:
        if len(recycle_noise) != n_prune:
            raise ValueError(f"recycle_noise needs one tensor per pruning layer ({n_prune}), got {len(recycle_noise)}")
        for s, noise in enumerate(recycle_noise):
            if noise.dim() != 2 or noise.shape[0] != batch:
                raise ValueError(f"recycle_noise[{s}] must be [{batch}, n], got {tuple(noise.shape)}")


@torch.no_grad()
def sparsevlm_generate(
    language_model: nn.Module,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    image_start: torch.Tensor,
    config: Any,
    max_new_tokens: int,
    recycle_noise: Sequence[torch.Tensor] | None = None,
    *,
    lm_head: nn.Module | None = None,
    num_visual_tokens: int = 576,
    eos_token_id: int | None = None,
    streamer: Any | None = None,
) -> SparseVLMOutput:
    """Greedy generation (exactly ``max_new_tokens`` tokens, no EOS stop) with SparseVLM v1.5 pruning.

    language_model: a ``LlamaForCausalLM``, a ``LlavaForConditionalGeneration`` (its language model and
        head are used), or a ``LlamaModel`` together with ``lm_head=``.
    inputs_embeds: [B, L, d] prompts with the visual features spliced in; attention_mask: [B, L] (1 = token,
        0 = padding, any side; None = no padding); image_start: [B] index of each row's first visual token.
    config: a SparseVLM config (``load_config("sparsevlm_64")``).
    recycle_noise: optional, one [B, n] tensor per pruning layer replacing the uniform density tie-break
        draws (row b uses its first n_in values, n_in = tokens fed to that stage's clustering).
    eos_token_id: optional; decoding stops early once every row has produced it (rows that finished
        first repeat it), so ``sequences`` may be shorter than ``max_new_tokens``. Without it decoding
        runs exactly ``max_new_tokens`` steps.
    streamer: optional object with ``put(tensor)`` / ``end()`` (a transformers streamer): it receives
        an empty [B, 0] prompt tensor first, then each step's tokens as a host tensor [B].
    """
    decoder, head = _resolve_modules(language_model, lm_head)
    depth = len(decoder.layers)
    _check_config(config, depth)
    n_prune = len(config.pruning_layers)
    _validate_inputs(
        inputs_embeds, attention_mask, image_start, max_new_tokens, num_visual_tokens, recycle_noise, n_prune
    )
    if attention_mask is None:
        attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device)

    samples = _split_samples(inputs_embeds, attention_mask, image_start, num_visual_tokens, config.seed)
    batch = len(samples)
    cache = DynamicCache(config=decoder.config)
    visual_counts = torch.zeros(batch, depth, dtype=torch.long)  # [B, N]
    cache_lengths = torch.zeros(batch, depth, dtype=torch.long)  # [B, N]
    kept: list[torch.Tensor] = []
    scores_out: list[torch.Tensor] = []
    groups: list[_DecodeGroup] = []

    for stage in _stages(config.pruning_layers, depth):
        padded = _pad_left(samples)
        groups.append(_DecodeGroup(stage.first, stage.last, padded.valid, torch.tensor(padded.lengths)))
        cache_lengths[:, stage.first : stage.last + 1] = torch.tensor(padded.lengths)[:, None]
        visual_counts[:, stage.first : stage.last + 1] = torch.tensor([s.v_num for s in samples])[:, None]
        if stage.prune is None:
            out, _, _ = _run_layers(
                decoder, cache, padded.hidden, padded.valid, padded.position_ids, stage.first, stage.last
            )
            for b, sample in enumerate(samples):
                sample.hidden = out[b, padded.pad[b] :]  # [n_b, d]
            continue
        span_scores, selections, needed_out = _pruning_stage(decoder, cache, samples, padded, stage, config)
        stage_kept = [
            _apply_pruning(sample, b, needed_out[b], selections[b], stage.prune, recycle_noise)
            for b, sample in enumerate(samples)
        ]
        visual_counts[:, stage.last] = torch.tensor([s.v_num for s in samples])
        kept.append(_pad_stack(stage_kept, -1))
        scores_out.append(_pad_stack(span_scores, float("nan")))

    last_hidden = torch.stack([s.hidden[-1] for s in samples])[:, None]  # [B, 1, d]
    prefill_logits = head(decoder.norm(last_hidden))[:, -1]  # [B, V]
    if streamer is not None:
        streamer.put(torch.zeros(batch, 0, dtype=torch.long))
    sequences, decode_positions = _greedy_decode(
        decoder, head, cache, groups, prefill_logits, int(max_new_tokens), depth, eos_token_id, streamer
    )

    return SparseVLMOutput(
        sequences=sequences,
        prefill_logits=prefill_logits,
        kept=kept,
        scores=scores_out,
        raters=[s.raters for s in samples],
        visual_tokens_per_layer=visual_counts,
        equal_tokens=visual_counts.to(torch.float64).mean(dim=1),
        cache_lengths=cache_lengths,
        decode_positions=decode_positions,
    )


def _greedy_decode(
    decoder: nn.Module,
    head: nn.Module,
    cache: DynamicCache,
    groups: list[_DecodeGroup],
    prefill_logits: torch.Tensor,  # [B, V]
    max_new_tokens: int,
    depth: int,
    eos_token_id: int | None = None,
    streamer: Any | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy steps; every stage group attends to its own cache with its own padding and positions.

    Returns (sequences [B, T], decode positions [B, T - 1, N]); T < max_new_tokens when every row
    reached ``eos_token_id`` early.
    """
    batch = prefill_logits.shape[0]
    device = prefill_logits.device
    tokens = [prefill_logits.argmax(dim=-1)]  # [B]
    positions = torch.zeros(batch, max_new_tokens - 1, depth, dtype=torch.long)  # [B, T-1, N]
    embed = decoder.get_input_embeddings()
    ones = torch.ones(batch, 1, dtype=torch.bool, device=device)  # [B, 1]
    finished = torch.zeros(batch, dtype=torch.bool, device=device)  # [B]
    steps_done = 0
    for step in range(max_new_tokens - 1):
        if streamer is not None:
            streamer.put(tokens[-1].cpu())
        if eos_token_id is not None:
            finished |= tokens[-1] == eos_token_id
            if bool(finished.all()):
                break
        steps_done = step + 1
        hidden = embed(tokens[-1])[:, None]  # [B, 1, d]
        for group in groups:
            group.key_valid = torch.cat([group.key_valid, ones], dim=1)  # [B, L_s + step + 1]
            position_ids = (group.lengths + step).to(device)[:, None]  # [B, 1] = own cache length
            hidden, _, _ = _run_layers(decoder, cache, hidden, group.key_valid, position_ids, group.first, group.last)
            positions[:, step, group.first : group.last + 1] = (group.lengths + step)[:, None]
        logits = head(decoder.norm(hidden))[:, -1]  # [B, V]
        next_tokens = logits.argmax(dim=-1)  # [B]
        if eos_token_id is not None:
            next_tokens = torch.where(finished, torch.full_like(next_tokens, eos_token_id), next_tokens)
        tokens.append(next_tokens)
    else:
        if streamer is not None:
            streamer.put(tokens[-1].cpu())
    if streamer is not None:
        streamer.end()
    return torch.stack(tokens, dim=1), positions[:, :steps_done]
