"""One pruning decoder for every method that prunes visual tokens inside a LLaMA-family LLM.

SparseVLM v1.5 and v2.0, FastV, and any vision-side selection applied at layer L (deferred pruning) run
here; what differs between them is a small rule object (``compress.in_llm``): which rows score the
visual span, how many tokens stay, what is recycled, how positions continue.

The decoder layers are called one by one (no patching of transformers classes):

* prefill, stage by stage: stage ``s`` runs the layers after the previous pruning layer up to and
  including pruning layer ``s``; the batch is re-padded on the left at the start of every stage because
  every sample keeps its own number of tokens. After the pruning layer, every sample's visual span is
  scored from the attention of a few query rows (post-RoPE queries of those rows against the layer's
  cached keys: SparseVLM's raters, FastV's last prompt token) or takes its given selection (deferred),
  the kept visual tokens stay in order, and the rule's recycled tokens (SparseVLM v1.5) are inserted
  right after them. Positions are renumbered 0..n-1 (v1.5) or stay the original ids (v2.0, FastV).
* decoding: greedy, no pruning; the layers of one stage share one cache length, and each sample places
  its new token at its own cache length of that stage (renumbered positions) or at its unpruned prompt
  length plus the step (original positions).

Every layer keeps its configured attention implementation (sdpa by default): scores are computed from
a handful of rows, never from an L x L attention matrix. A LLaMA pruning layer is run in two halves:
keys and values of every row (its cache), the scores from them, and only then queries, attention output
and MLP for the rows the pruning keeps (system, kept and to-be-recycled visual, text); the dropped rows'
outputs, which the official codes compute and discard, are never computed. Row-wise operations make
this exact (same values as the whole layer, up to float rounding). A single ``DynamicCache`` holds
every layer; layers of different stages simply hold different lengths, and masks are built per stage
with ``create_causal_mask(..., layer_idx=first layer of the stage)``.

Batch semantics: every sample is processed as if it were alone (its own queries, kept and recycled
tokens, positions and per-layer cache lengths); padding only adds masked rows. Random density tie-break
draws come from one ``torch.Generator`` per sample seeded with ``config.seed`` (so a sample draws the
same numbers alone or in a batch), or are replayed from ``recycle_noise``.

See docs/ALGORITHMS.md for each method's rules and their official conventions.
"""

from __future__ import annotations

import logging
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

from ..compress.in_llm import Decision, FastVRule, PruningRule, rope_bias, rule_for_config
from ..compress.sparsevlm_recycle import density_peak_merge, select_raters
from ..config import ConfigError
from .compat import cache_kwargs

logger = logging.getLogger(__name__)

__all__ = ["RECYCLED_ID_BASE", "PrunedOutput", "pruned_generate", "recycled_id_base"]

RECYCLED_ID_BASE = 1000  # recycled token c of stage s (0-based) has identity 1000 * (s + 1) + c


def recycled_id_base(span: int) -> int:
    """The identity base of recycled tokens for a visual span of ``span`` tokens: 1000 (the parity
    sets' convention) for LLaVA-1.5's 576, the next power of ten above longer spans (LLaVA-NeXT)."""
    base = RECYCLED_ID_BASE
    while base <= span:
        base *= 10
    return base


@dataclass
class PrunedOutput:
    """What :func:`pruned_generate` returns. ``T`` = generated tokens, ``N`` = number of decoder layers.

    ``kept[s]`` / ``scores[s]`` / ``positions[l]`` are padded with -1 / NaN / -1 where samples of a batch
    keep different counts. Identities: the visual token's index in the span that entered the LLM (0..575
    for LLaVA-1.5's patches; FastV with ``span: fixed``: position - 35), ``base * (s + 1) + c`` for the
    c-th token recycled at pruning layer s (``base`` = :func:`recycled_id_base` of the span: 1000 for 576).
    """

    sequences: torch.Tensor  # [B, T] greedy token ids
    prefill_logits: torch.Tensor  # [B, V] logits at the last prompt position
    kept: list[torch.Tensor]  # per pruning layer: [B, k_max] identities of the kept visual tokens, in order
    scores: list[torch.Tensor]  # per pruning layer: [B, n_max] score of each visual-span token (NaN: deferred)
    raters: list[torch.Tensor]  # per sample: [n_raters] query rows relative to the first text token
    visual_tokens_per_layer: torch.Tensor  # [B, N] visual tokens after each layer (recycled included)
    equal_tokens: torch.Tensor  # [B] float64, mean over layers of visual_tokens_per_layer
    cache_lengths: torch.Tensor  # [B, N] each layer's own KV length after the prefill (padding excluded)
    decode_positions: torch.Tensor  # [B, T - 1, N] position each layer gave each decoded token
    positions: list[torch.Tensor]  # per layer: [B, n_max] position ids its attention used in the prefill
    heads: list[torch.Tensor | None]  # per pruning layer: [B, h] heads the score used (SparseVLM v2.0), else None
    pruning_layers: tuple[int, ...] = ()  # the layers whose output was pruned
    method: str = ""  # the rule's name


# --------------------------------------------------------------------------- internal state


@dataclass
class _Sample:
    """One sample's current (unpadded) sequence: [system | visual span | text]."""

    hidden: torch.Tensor  # [n, d]
    positions: torch.Tensor  # [n] long, position id of every row
    v_start: int  # first visual token (system prompt length, never changes)
    v_num: int  # visual tokens now (kept + recycled)
    raters: torch.Tensor  # [R] query rows relative to the first text token (empty for deferred pruning)
    span_ids: torch.Tensor  # [v_num] identity of every visual token
    generator: torch.Generator
    prompt_length: int  # unpruned prompt length (where original positions continue when decoding)
    keep: torch.Tensor | None = None  # [v_num] bool, the given selection (deferred pruning)
    recycled_base: int = RECYCLED_ID_BASE  # identities of recycled tokens start here (recycled_id_base)

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
    position_ids: torch.Tensor  # [B, L] each sample's position ids on valid rows, 0 on padding
    pad: list[int]  # padding rows of each sample
    lengths: list[int]  # valid rows of each sample


@dataclass
class _DecodeGroup:
    first: int
    last: int
    key_valid: torch.Tensor  # [B, L_s] bool, grows by one column per decoded token
    next_position: torch.Tensor  # [B] position of the first decoded token in this stage's layers


@dataclass
class _Stats:
    """What the prefill records per sample, for the output."""

    kept: list[torch.Tensor]
    scores: list[torch.Tensor]
    heads: list[torch.Tensor | None]
    positions: list[list[torch.Tensor]]  # per stage, per sample: [n_b]


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


def _check_rule(rule: PruningRule, depth: int, heads: int) -> None:
    layers = list(rule.pruning_layers)
    bad = [layer for layer in layers if not 0 <= layer < depth]
    if bad:
        raise ConfigError(f"pruning layer(s) {bad} do not exist in a model with {depth} layers (0..{depth - 1})")
    if any(b <= a for a, b in pairwise(layers)):
        raise ConfigError(f"pruning layers must be strictly increasing, got {layers}")
    wanted = getattr(rule, "priority_heads", None)
    if wanted is not None and wanted > heads:
        logger.info("SparseVLM v2.0: the model has %d attention heads, fewer than priority_heads=%d: all are used", heads, wanted)


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
    num_visual: Sequence[int],  # [B] visual tokens of each row
    seed: int,
    rule: PruningRule,
    visual_keep: torch.Tensor | None,  # [B, V_max] bool (deferred pruning)
) -> list[_Sample]:
    """Unpad every row, locate its visual span and pick its query rows (SparseVLM: raters from the raw
    embeddings)."""
    valid = attention_mask.detach().to("cpu", torch.bool)  # [B, L] (one transfer: sizes are needed)
    starts = image_start.detach().to("cpu", torch.long).tolist()
    length = valid.shape[1]
    fixed = isinstance(rule, FastVRule) and rule.fixed_span
    samples = []
    for b, (start, count) in enumerate(zip(starts, num_visual, strict=True)):
        if not (0 <= start and start + count <= length and bool(valid[b, start : start + count].all())):
            raise ValueError(
                f"row {b}: the {count} visual tokens from image_start={start} must lie inside the row's unpadded tokens"
            )
        rows = torch.nonzero(valid[b], as_tuple=False).flatten().to(inputs_embeds.device)  # [n_b]
        hidden = inputs_embeds[b].index_select(0, rows)  # [n_b, d]
        v_start = int(valid[b, :start].sum())
        if fixed:  # the official hard-coded span: positions 35..35+575 of the prompt, whatever it holds
            v_start = FastVRule.FIXED_START
            if v_start + count >= hidden.shape[0]:
                raise ValueError(f"row {b}: FastV's fixed span {v_start}..{v_start + count - 1} needs a longer prompt")
        t_start = v_start + count
        if rule.queries != "none" and t_start >= hidden.shape[0]:
            raise ValueError(
                f"row {b}: no text after the image; {rule.name} rates visual tokens with the text that follows the "
                "image (prompts without an image or without text must be run unpruned)"
            )
        if rule.queries == "raters":
            raters = _raters(hidden[v_start:t_start], hidden[t_start:])
        elif rule.queries == "last":
            raters = torch.tensor([hidden.shape[0] - 1 - t_start], device=hidden.device)  # the last prompt token
        else:
            raters = torch.zeros(0, dtype=torch.long, device=hidden.device)
        keep = None
        if rule.queries == "none":
            if visual_keep is None:
                raise ValueError(f"{rule.name} pruning needs visual_keep (the vision-side selection)")
            keep = visual_keep[b, :count].to(hidden.device, torch.bool)  # [count]
        span_ids = torch.arange(count, device=hidden.device)  # [count]
        positions = torch.arange(hidden.shape[0], device=hidden.device)  # [n_b]
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        samples.append(
            _Sample(hidden, positions, v_start, count, raters, span_ids, generator, hidden.shape[0], keep, recycled_id_base(count))
        )
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
    position_ids = torch.zeros(len(samples), width, dtype=torch.long, device=first.device)  # [B, L]
    for b, sample in enumerate(samples):
        hidden[b, pad[b] :] = sample.hidden
        valid[b, pad[b] :] = True
        position_ids[b, pad[b] :] = sample.positions
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


def _query_rows(samples: Sequence[_Sample], padded: _Padded) -> torch.Tensor:
    """Padded-row index of every query row: [B, R]; sample b's R_b rows come first, the rest point at the
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


def _query_attention(
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
    query = _row_queries(attn, layer.input_layernorm(rows_in), cos_sin, query_rows)  # [B, H, R, hd]
    dtype = _compute_dtype(query.dtype)
    keys = repeat_kv(keys, attn.num_key_value_groups).to(dtype)  # [B, H, L, hd]
    logits = (query.to(dtype) @ keys.transpose(-1, -2)) * attn.scaling  # [B, H, R, L]
    logits = logits.masked_fill(~_row_causal_mask(key_valid, query_rows)[:, None], float("-inf"))
    return logits.softmax(dim=-1)  # [B, H, R, L]


def _span_scores(
    rule: PruningRule,
    layer: nn.Module,
    probs: torch.Tensor,  # [B, H, R, L]
    cos_sin: tuple[torch.Tensor, torch.Tensor],  # [B, L, hd] each
    query_rows: torch.Tensor,  # [B, R]
    samples: Sequence[_Sample],
    padded: _Padded,
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Per sample: the rule's score of every visual-span token [v_num_b], and the heads it used."""
    scores, heads, biases = [], [], []
    for b, sample in enumerate(samples):
        lo = padded.pad[b] + sample.v_start
        count = sample.raters.numel()
        span = probs[b, :, :count, lo : lo + sample.v_num]  # [H, R_b, v_num] (valid query rows first)
        bias = None
        if rule.rope_corrected:
            rows, dtype = query_rows[b, :count], probs.dtype
            cos, sin = cos_sin[0][b].to(dtype), cos_sin[1][b].to(dtype)  # [L, hd]
            bias = rope_bias(cos[rows], sin[rows], cos[lo : lo + sample.v_num], sin[lo : lo + sample.v_num], layer.self_attn.scaling)
            biases.append(bias.min())
        score, used = rule.scores(span, bias)
        scores.append(score)
        heads.append(used)
    if biases:
        _check_rope_bias(torch.stack(biases), samples, layer)
    return scores, heads


def _check_rope_bias(minima: torch.Tensor, samples: Sequence[_Sample], layer: nn.Module) -> None:
    """SparseVLM v2.0 divides attention probabilities by the RoPE-only term: refuse a prompt where it is not
    positive (small head size or RoPE base over long distances), naming the row."""
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


def _given_decision(sample: _Sample) -> Decision:
    """Deferred pruning: keep the span tokens the vision-side selection marked."""
    kept = torch.nonzero(sample.keep, as_tuple=False).flatten()  # [k] ascending (one sync: the size is needed)
    return Decision(kept, kept[:0], 0)


def _needed_rows(sample: _Sample, decision: Decision) -> torch.Tensor:
    """Rows of the pruning layer's output that the pruning uses, [n_needed] (unpadded indices):
    system, kept visual (in order), recycling inputs (descending score), text."""
    device = sample.span_ids.device
    return torch.cat(
        [
            torch.arange(sample.v_start, device=device),
            sample.v_start + decision.kept,
            sample.v_start + decision.recycle_in,
            torch.arange(sample.text_start, sample.length, device=device),
        ]
    )


def _apply_pruning(
    sample: _Sample,
    b: int,
    out_rows: torch.Tensor,  # [n_needed, d] the pruning layer's output at ``_needed_rows`` (that order)
    needed: torch.Tensor,  # [n_needed] those rows (unpadded indices)
    decision: Decision,
    stage: int,
    recycle_noise: Sequence[torch.Tensor] | None,
    original_positions: bool,
) -> torch.Tensor:
    """New sequence [system | kept | recycled | text] and its positions; returns the kept identities [k]."""
    k, n_in = decision.kept.numel(), decision.recycle_in.numel()
    kept_end = sample.v_start + k
    kept_ids = sample.span_ids[decision.kept]  # [k]
    parts, ids = [out_rows[:kept_end]], [kept_ids]
    if decision.clusters > 0:
        if original_positions:
            raise ValueError("recycled tokens have no original position: recycling needs renumbered positions")
        x = out_rows[kept_end : kept_end + n_in]  # [n_in, d]
        work = x.to(_compute_dtype(x.dtype))
        noise = _noise(sample, b, stage, n_in, recycle_noise, work)
        merged = density_peak_merge(work, decision.clusters, noise).merged.to(x.dtype)  # [clusters, d]
        parts.append(merged)
        ids.append(sample.recycled_base * (stage + 1) + torch.arange(merged.shape[0], device=kept_ids.device))
    parts.append(out_rows[kept_end + n_in :])
    sample.hidden = torch.cat(parts, dim=0)  # [n', d]
    if original_positions:
        sample.positions = sample.positions[needed]  # [n'] (no recycled rows)
    else:
        sample.positions = torch.arange(sample.hidden.shape[0], device=sample.hidden.device)  # [n']
    sample.span_ids = torch.cat(ids)  # [v_num']
    sample.v_num = sample.span_ids.numel()
    if sample.keep is not None:
        sample.keep = sample.keep[decision.kept]
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
    decoder: nn.Module, cache: DynamicCache, samples: Sequence[_Sample], padded: _Padded, stage: _Stage, rule: PruningRule
) -> tuple[list[torch.Tensor], list[Decision], list[torch.Tensor], list[torch.Tensor]]:
    """Run a pruning stage's layers and decide each sample's pruning.

    Returns per sample: span scores [v_num] (NaN without scoring), the decision, the rows it needs
    (``_needed_rows``) and the pruning layer's output at them [n_needed, d] (in that order).
    """
    pruning = decoder.layers[stage.last]
    scoring = rule.queries != "none"
    query_rows = _query_rows(samples, padded) if scoring else None  # [B, R]
    split = _splits_rows(pruning)  # a LLaMA layer runs on the needed rows; any other type runs whole
    rows_in = None
    if split:
        hidden = padded.hidden  # [B, L, d]
        if stage.first < stage.last:
            hidden, _, _ = _run_layers(
                decoder, cache, hidden, padded.valid, padded.position_ids, stage.first, stage.last - 1
            )
        cos_sin = decoder.rotary_emb(hidden, position_ids=padded.position_ids)  # ([B, L, hd], [B, L, hd])
        normed = pruning.input_layernorm(hidden)  # [B, L, d]
        keys, values = _keys_and_values(pruning, cache, normed, cos_sin)  # [B, H_kv, L, hd] x 2
        if scoring:
            rows_in = _gather_rows(hidden, query_rows)  # [B, R, d]
    else:
        out, rows_in, cos_sin = _run_layers(
            decoder, cache, padded.hidden, padded.valid, padded.position_ids, stage.first, stage.last, query_rows
        )
        keys = cache.layers[stage.last].keys
    if scoring:
        probs = _query_attention(pruning, rows_in, cos_sin, keys, query_rows, padded.valid)  # [B, H, R, L]
        scores, heads = _span_scores(rule, pruning, probs, cos_sin, query_rows, samples, padded)
        decisions = [rule.decide(stage.prune, sc, h) for sc, h in zip(scores, heads, strict=True)]
    else:
        decisions = [_given_decision(s) for s in samples]
        scores = [torch.full((s.v_num,), float("nan"), device=s.hidden.device) for s in samples]
    rows = [_needed_rows(s, d) for s, d in zip(samples, decisions, strict=True)]
    if not split:
        return scores, decisions, rows, [out[b, padded.pad[b] :][r] for b, r in enumerate(rows)]
    out = _layer_rows(
        pruning, hidden, normed, cos_sin, keys, values, padded.valid, _needed_padded_rows(rows, padded.pad)
    )  # [B, M, d]
    return scores, decisions, rows, [out[b, : r.numel()] for b, r in enumerate(rows)]


# --------------------------------------------------------------------------- main loop


def _visual_counts(num_visual_tokens: int | Sequence[int] | torch.Tensor, batch: int) -> list[int]:
    if isinstance(num_visual_tokens, torch.Tensor):
        counts = num_visual_tokens.detach().to("cpu").flatten().tolist()
    elif isinstance(num_visual_tokens, int):
        counts = [num_visual_tokens] * batch
    else:
        counts = [int(c) for c in num_visual_tokens]
    if len(counts) != batch:
        raise ValueError(f"num_visual_tokens needs one count per row ({batch}), got {len(counts)}")
    if any(int(c) < 1 for c in counts):
        raise ValueError("num_visual_tokens must be >= 1 (prompts without an image are run unpruned)")
    return [int(c) for c in counts]


def _validate_inputs(inputs_embeds, attention_mask, image_start, max_new_tokens, recycle_noise, n_prune, visual_keep):
    if inputs_embeds.dim() != 3:
        raise ValueError(f"inputs_embeds must be [B, L, d], got shape {tuple(inputs_embeds.shape)}")
    batch, length = inputs_embeds.shape[:2]
    if attention_mask is not None and tuple(attention_mask.shape) != (batch, length):
        raise ValueError(f"attention_mask must be [{batch}, {length}], got {tuple(attention_mask.shape)}")
    if tuple(image_start.shape) != (batch,):
        raise ValueError(f"image_start must be [{batch}], got {tuple(image_start.shape)}")
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if recycle_noise is not None:
        if len(recycle_noise) != n_prune:
            raise ValueError(f"recycle_noise needs one tensor per pruning layer ({n_prune}), got {len(recycle_noise)}")
        for s, noise in enumerate(recycle_noise):
            if noise.dim() != 2 or noise.shape[0] != batch:
                raise ValueError(f"recycle_noise[{s}] must be [{batch}, n], got {tuple(noise.shape)}")
    if visual_keep is not None and (visual_keep.dim() != 2 or visual_keep.shape[0] != batch):
        raise ValueError(f"visual_keep must be [{batch}, V], got {tuple(visual_keep.shape)}")


@torch.no_grad()
def pruned_generate(
    language_model: nn.Module,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    image_start: torch.Tensor,
    config: Any,
    max_new_tokens: int,
    recycle_noise: Sequence[torch.Tensor] | None = None,
    *,
    lm_head: nn.Module | None = None,
    num_visual_tokens: int | Sequence[int] | torch.Tensor = 576,
    visual_keep: torch.Tensor | None = None,
    eos_token_id: int | None = None,
    streamer: Any | None = None,
    seed: int | None = None,
) -> PrunedOutput:
    """Greedy generation (``max_new_tokens`` tokens) with in-LLM pruning of the visual tokens.

    language_model: a ``LlamaForCausalLM``, a ``LlavaForConditionalGeneration`` (its language model and
        head are used), or a ``LlamaModel`` together with ``lm_head=``.
    inputs_embeds: [B, L, d] prompts with the visual features spliced in; attention_mask: [B, L] (1 = token,
        0 = padding, any side; None = no padding); image_start: [B] index of each row's first visual token.
    config: the method: ``load_config("sparsevlm_64")``, ``"sparsevlm2_64"``, ``"fastv_64"``, or a
        vision-side config with ``prune_layer: L > 0`` (then ``visual_keep`` is required); or a
        :class:`~sparsezip_lmms.compress.in_llm.PruningRule` directly.
    recycle_noise: optional (SparseVLM v1.5), one [B, n] tensor per pruning layer replacing the uniform
        density tie-break draws (row b uses its first n_in values, n_in = tokens fed to that stage's clustering).
    num_visual_tokens: visual tokens per row, one int or [B] (rows may differ).
    visual_keep: [B, V >= max count] bool, deferred pruning: the span tokens that stay from layer L on.
    eos_token_id: optional; decoding stops early once every row has produced it (rows that finished
        first repeat it), so ``sequences`` may be shorter than ``max_new_tokens``. Without it decoding
        runs exactly ``max_new_tokens`` steps.
    streamer: optional object with ``put(tensor)`` / ``end()`` (a transformers streamer): it receives
        an empty [B, 0] prompt tensor first, then each step's tokens as a host tensor [B].
    seed: the recycling's tie-break draws (SparseVLM v1.5); default: the config's ``seed`` (0 for a rule).
    """
    rule = config if isinstance(config, PruningRule) else rule_for_config(config)
    seed = getattr(config, "seed", 0) if seed is None else seed
    decoder, head = _resolve_modules(language_model, lm_head)
    depth = len(decoder.layers)
    _check_rule(rule, depth, int(decoder.config.num_attention_heads))
    n_prune = len(rule.pruning_layers)
    _validate_inputs(inputs_embeds, attention_mask, image_start, max_new_tokens, recycle_noise, n_prune, visual_keep)
    if attention_mask is None:
        attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device)
    counts = _visual_counts(num_visual_tokens, inputs_embeds.shape[0])

    samples = _split_samples(inputs_embeds, attention_mask, image_start, counts, seed, rule, visual_keep)
    batch = len(samples)
    cache = DynamicCache(config=decoder.config)
    visual_counts = torch.zeros(batch, depth, dtype=torch.long)  # [B, N]
    cache_lengths = torch.zeros(batch, depth, dtype=torch.long)  # [B, N]
    stats = _Stats([], [], [], [])
    groups: list[_DecodeGroup] = []
    stage_of_layer: list[int] = []

    for stage in _stages(rule.pruning_layers, depth):
        padded = _pad_left(samples)
        lengths = torch.tensor(padded.lengths)  # [B]
        start = torch.tensor([s.prompt_length for s in samples]) if rule.original_positions else lengths
        groups.append(_DecodeGroup(stage.first, stage.last, padded.valid, start))
        stats.positions.append([s.positions for s in samples])
        stage_of_layer += [len(groups) - 1] * (stage.last - stage.first + 1)
        cache_lengths[:, stage.first : stage.last + 1] = lengths[:, None]
        visual_counts[:, stage.first : stage.last + 1] = torch.tensor([s.v_num for s in samples])[:, None]
        if stage.prune is None:
            out, _, _ = _run_layers(
                decoder, cache, padded.hidden, padded.valid, padded.position_ids, stage.first, stage.last
            )
            for b, sample in enumerate(samples):
                sample.hidden = out[b, padded.pad[b] :]  # [n_b, d]
            continue
        span_scores, decisions, needed, needed_out = _pruning_stage(decoder, cache, samples, padded, stage, rule)
        stage_kept = [
            _apply_pruning(
                sample, b, needed_out[b], needed[b], decisions[b], stage.prune, recycle_noise, rule.original_positions
            )
            for b, sample in enumerate(samples)
        ]
        visual_counts[:, stage.last] = torch.tensor([s.v_num for s in samples])
        stats.kept.append(_pad_stack(stage_kept, -1))
        stats.scores.append(_pad_stack(span_scores, float("nan")))
        used = [d.heads for d in decisions]
        stats.heads.append(None if any(h is None for h in used) else _pad_stack(used, -1))

    last_hidden = torch.stack([s.hidden[-1] for s in samples])[:, None]  # [B, 1, d]
    prefill_logits = head(decoder.norm(last_hidden))[:, -1]  # [B, V]
    if streamer is not None:
        streamer.put(torch.zeros(batch, 0, dtype=torch.long))
    sequences, decode_positions = _greedy_decode(
        decoder, head, cache, groups, prefill_logits, int(max_new_tokens), depth, eos_token_id, streamer
    )
    stage_positions = [_pad_stack(p, -1) for p in stats.positions]

    return PrunedOutput(
        sequences=sequences,
        prefill_logits=prefill_logits,
        kept=stats.kept,
        scores=stats.scores,
        raters=[s.raters for s in samples],
        visual_tokens_per_layer=visual_counts,
        equal_tokens=visual_counts.to(torch.float64).mean(dim=1),
        cache_lengths=cache_lengths,
        decode_positions=decode_positions,
        positions=[stage_positions[g] for g in stage_of_layer],
        heads=stats.heads,
        pruning_layers=tuple(rule.pruning_layers),
        method=rule.name,
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
            position_ids = (group.next_position + step).to(device)[:, None]  # [B, 1]
            hidden, _, _ = _run_layers(decoder, cache, hidden, group.key_valid, position_ids, group.first, group.last)
            positions[:, step, group.first : group.last + 1] = (group.next_position + step)[:, None]
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
