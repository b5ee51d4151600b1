"""The prefill stages of the pruning decoder.

Stage ``s`` runs the layers after the previous pruning layer up to and including pruning layer ``s``
(:func:`stages`); the batch is re-padded on the left at the start of every stage because every sample
keeps its own number of tokens. After the pruning layer, every sample's visual span is scored from the
attention of a few query rows (post-RoPE queries of those rows against the layer's cached keys:
SparseVLM's raters, FastV's last prompt token) or takes its given selection (deferred), and the rule
decides (:func:`pruning_stage`). The kept visual tokens stay in order, and the rule's recycled tokens
(SparseVLM v1.5) are inserted right after them; positions are renumbered 0..n-1 (v1.5) or stay the
original ids (v2.0, FastV; v1.5 on Qwen2.5-VL's M-RoPE, a recycled token at its density-peak centre's
position) (:func:`apply_pruning`).

Shapes: ``B`` samples, ``L`` padded length, ``d`` hidden size, ``R`` query rows, ``M`` rows the pruning
layer computes (``n_needed`` for one sample), ``v_num`` visual tokens of a sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from ..compress.dtypes import at_least_float32
from ..compress.in_llm import Decision, PruningRule
from ..compress.sparsevlm_recycle import density_peak_merge
from ..efficiency.clock import MethodTimer, method_step
from .attention import follow, keys_and_values, layer_device, layer_rows, query_attention, run_layers, span_scores, splits_rows
from .batch import Padded, Sample, gather_rows, needed_padded_rows, query_rows

__all__ = ["PruningStageResult", "Stage", "apply_pruning", "pruning_stage", "stages"]


@dataclass
class Stage:
    first: int  # first layer
    last: int  # last layer (the pruning layer when ``prune`` is not None)
    prune: int | None  # index into the schedule, None for the final (non-pruning) stage


@dataclass
class PruningStageResult:
    """What a pruning stage decided, one entry per sample."""

    scores: list[torch.Tensor]  # [v_num] score of every visual-span token (NaN without scoring)
    decisions: list[Decision]
    rows: list[torch.Tensor]  # [n_needed] the rows the pruning uses (unpadded indices, ``_needed_rows``)
    outputs: list[torch.Tensor]  # [n_needed, d] the pruning layer's output at ``rows`` (that order)


def stages(pruning_layers: Sequence[int], depth: int) -> list[Stage]:
    """One stage per pruning layer, then the layers after the last one (if any)."""
    result, first = [], 0
    for index, layer in enumerate(pruning_layers):
        result.append(Stage(first, layer, index))
        first = layer + 1
    if first < depth:
        result.append(Stage(first, depth - 1, None))
    return result


def pruning_stage(
    decoder: nn.Module, cache: DynamicCache, samples: Sequence[Sample], padded: Padded, stage: Stage, rule: PruningRule,
    timer: MethodTimer | None = None,
) -> PruningStageResult:  # fmt: skip
    """Run a pruning stage's layers and decide each sample's pruning (``timer``: times the rule's own
    scoring and decisions).

    A LLaMA pruning layer computes its output only at the rows the pruning needs; any other layer type
    runs whole and its output is read at those rows.
    """
    pruning = decoder.layers[stage.last]
    if rule.queries == "states":
        return _states_stage(decoder, cache, samples, padded, stage, rule, timer)
    scoring = rule.queries != "none"
    rows_q = query_rows(samples, padded) if scoring else None  # [B, R]
    split = splits_rows(pruning)  # a LLaMA layer runs on the needed rows; any other type runs whole
    rows_in = None
    if split:
        hidden = padded.hidden  # [B, L, d]
        if stage.first < stage.last:
            hidden, _, _ = run_layers(
                decoder, cache, hidden, padded.valid, padded.position_ids, stage.first, stage.last - 1
            )
        device = layer_device(pruning)
        positions = follow(layer_device(decoder.rotary_emb), padded.position_ids)  # [B, L]
        cos_sin = follow(device, decoder.rotary_emb(hidden, position_ids=positions))  # ([B, L, hd], [B, L, hd])
        hidden = follow(device, hidden)  # [B, L, d] on the pruning layer's device
        normed = pruning.input_layernorm(hidden)  # [B, L, d]
        keys, values = keys_and_values(pruning, cache, normed, cos_sin)  # [B, H_kv, L, hd] x 2
        if scoring:
            rows_in = gather_rows(hidden, rows_q)  # [B, R, d]
    else:
        out, rows_in, cos_sin = run_layers(
            decoder, cache, padded.hidden, padded.valid, padded.position_ids, stage.first, stage.last, rows_q
        )  # [B, L, d], [B, R, d], ([B, L, hd], [B, L, hd])
        keys = cache.layers[stage.last].keys  # [B, H_kv, L, hd]
    if scoring:
        with method_step(timer):
            probs = query_attention(pruning, rows_in, cos_sin, keys, rows_q, padded.valid)  # [B, H, R, L]
            scores, heads = span_scores(rule, pruning, probs, cos_sin, rows_q, samples, padded, decoder.rotary_emb)
            scores = [follow(s.span_ids.device, sc) for s, sc in zip(samples, scores, strict=True)]  # to each sample's device
            heads = [None if h is None else follow(s.span_ids.device, h) for s, h in zip(samples, heads, strict=True)]
            decisions = [rule.decide(stage.prune, sc, h) for sc, h in zip(scores, heads, strict=True)]
    else:
        decisions = [_given_decision(s) for s in samples]
        scores = [torch.full((s.v_num,), float("nan"), device=s.hidden.device) for s in samples]
    rows = [_needed_rows(s, d) for s, d in zip(samples, decisions, strict=True)]
    if not split:
        return PruningStageResult(scores, decisions, rows, [out[b, padded.pad[b] :][r] for b, r in enumerate(rows)])
    out = layer_rows(
        pruning, hidden, normed, cos_sin, keys, values, padded.valid, needed_padded_rows(rows, padded.pad)
    )  # [B, M, d]
    return PruningStageResult(scores, decisions, rows, [out[b, : r.numel()] for b, r in enumerate(rows)])


def _states_stage(
    decoder: nn.Module, cache: DynamicCache, samples: Sequence[Sample], padded: Padded, stage: Stage, rule: PruningRule,
    timer: MethodTimer | None = None,
) -> PruningStageResult:  # fmt: skip
    """A rule that reads the pruning layer's keys and final-normed output at every row (DART): the stage's
    layers run whole, then the rule decides from the layer's cache and ``decoder.norm`` of its output."""
    out, _, _ = run_layers(
        decoder, cache, padded.hidden, padded.valid, padded.position_ids, stage.first, stage.last
    )  # [B, L, d]
    keys = cache.layers[stage.last].keys  # [B, H_kv, L, hd] post-RoPE
    with method_step(timer):
        states = decoder.norm(follow(layer_device(decoder.norm), out))  # [B, L, d]
        starts = [p + s.v_start for p, s in zip(padded.pad, samples, strict=True)]
        decisions, scores = rule.decide_states(keys, states, starts, [s.v_num for s in samples], padded.pad)
    scores = [follow(s.span_ids.device, sc) for s, sc in zip(samples, scores, strict=True)]
    decisions = [
        Decision(*(follow(s.span_ids.device, d.kept, d.recycle_in)), d.clusters, d.heads, d.pivots)
        for s, d in zip(samples, decisions, strict=True)
    ]
    rows = [_needed_rows(s, d) for s, d in zip(samples, decisions, strict=True)]
    return PruningStageResult(scores, decisions, rows, [out[b, padded.pad[b] :][r.to(out.device)] for b, r in enumerate(rows)])


# --------------------------------------------------------------------------- decisions


def _given_decision(sample: Sample) -> Decision:
    """Deferred pruning: keep the span tokens the vision-side selection marked."""
    kept = torch.nonzero(sample.keep, as_tuple=False).flatten()  # [k] ascending (one sync: the size is needed)
    return Decision(kept, kept[:0], 0)


def _needed_rows(sample: Sample, decision: Decision) -> torch.Tensor:
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


# --------------------------------------------------------------------------- pruning and recycling


def _noise(
    sample: Sample, b: int, stage: int, count: int, recycle_noise: Sequence[torch.Tensor] | None, like: torch.Tensor
) -> torch.Tensor:
    """[count] uniform draws for the density tie-break: replayed, or from the sample's generator."""
    if recycle_noise is None:
        draws = torch.rand(count, generator=sample.generator, dtype=torch.float64)  # [count]
    else:
        row = recycle_noise[stage][b]  # [n]
        if row.shape[0] < count:
            raise ValueError(f"recycle_noise[{stage}] row {b} has {row.shape[0]} values, the recycling needs {count}")
        draws = row[:count]
    return draws.to(device=like.device, dtype=like.dtype)


def apply_pruning(
    sample: Sample,
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
    rows = needed  # [n'] the rows whose original positions the new sequence takes
    if decision.clusters > 0:
        x = out_rows[kept_end : kept_end + n_in]  # [n_in, d]
        work = x.to(at_least_float32(x.dtype))
        noise = _noise(sample, b, stage, n_in, recycle_noise, work)  # [n_in]
        peaks = density_peak_merge(work, decision.clusters, noise)
        merged = peaks.merged.to(x.dtype)  # [clusters, d]
        parts.append(merged)
        ids.append(sample.recycled_base * (stage + 1) + torch.arange(merged.shape[0], device=kept_ids.device))
        # original positions: a recycled token takes its density-peak centre's position
        centres = needed[kept_end + peaks.centers.to(needed.device)]  # [clusters]
        rows = torch.cat([needed[:kept_end], centres, needed[kept_end + n_in :]])  # [n']
    parts.append(out_rows[kept_end + n_in :])
    sample.hidden = torch.cat(parts, dim=0)  # [n', d]
    if original_positions:
        sample.positions = sample.positions.index_select(-1, rows.to(sample.positions.device))  # [(3,) n']
    elif sample.positions.dim() > 1:
        raise ValueError("renumbered positions 0..n-1 are not defined for multi-row (M-RoPE) positions")
    else:
        sample.positions = torch.arange(sample.hidden.shape[0], device=sample.hidden.device)  # [n']
    sample.span_ids = torch.cat(ids)  # [v_num']
    sample.v_num = sample.span_ids.numel()
    if sample.keep is not None:
        sample.keep = sample.keep[decision.kept]
    return kept_ids
