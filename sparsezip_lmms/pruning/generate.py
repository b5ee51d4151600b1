""":func:`pruned_generate`: the prefill stage by stage, then greedy decoding.

A single ``DynamicCache`` holds every layer; layers of different stages simply hold different lengths,
and masks are built per stage with ``create_causal_mask(..., layer_idx=first layer of the stage)``.

Shapes: ``B`` samples, ``L`` prompt length, ``d`` hidden size, ``T`` generated tokens, ``N`` decoder
layers, ``V`` vocabulary.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from ..compress.in_llm import PruningRule, check_pruning_layers, rule_for_config
from ..efficiency.clock import method_step
from .attention import run_layers
from .batch import pad_left, pad_stack, split_samples, validate_inputs, visual_counts
from .decode import DecodeGroup, greedy_decode
from .stages import apply_pruning, pruning_stage, stages

logger = logging.getLogger(__name__)

__all__ = ["PrunedOutput", "pruned_generate"]


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
    positions: list[torch.Tensor]  # per layer: [B, n_max] position ids its attention used in the prefill ([3, B, n_max]: M-RoPE)
    heads: list[torch.Tensor | None]  # per pruning layer: [B, h] heads the score used (SparseVLM v2.0), else None
    pivots: list[torch.Tensor | None]  # per pruning layer: [B, P] pivots in processing order (DART), else None
    pruning_layers: tuple[int, ...] = ()  # the layers whose output was pruned
    method: str = ""  # the rule's name
    step_logits: torch.Tensor | None = None  # [B, T - 1, V] each decode step's logits (``return_step_logits``)


@dataclass
class _Stats:
    """What the prefill records per sample, for the output."""

    kept: list[torch.Tensor]  # per pruning layer: [B, k_max]
    scores: list[torch.Tensor]  # per pruning layer: [B, n_max]
    heads: list[torch.Tensor | None]  # per pruning layer: [B, h] or None
    pivots: list[torch.Tensor | None]  # per pruning layer: [B, P] or None
    positions: list[list[torch.Tensor]]  # per stage, per sample: [n_b]


def _stack_steps(step_logits: list[torch.Tensor] | None, prefill_logits: torch.Tensor) -> torch.Tensor | None:
    """[B, T - 1, V] the decode steps' logits (none: [B, 0, V]), or None when they were not asked for."""
    if step_logits is None:
        return None
    if not step_logits:
        return prefill_logits.new_zeros(prefill_logits.shape[0], 0, prefill_logits.shape[1])
    return torch.stack(step_logits, dim=1)


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
    check_pruning_layers(rule.pruning_layers, depth)
    wanted = getattr(rule, "priority_heads", None)
    if wanted is not None and wanted > heads:
        logger.info("SparseVLM v2.0: the model has %d attention heads, fewer than priority_heads=%d: all are used", heads, wanted)


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
    clock: Any | None = None,
    seed: int | None = None,
    family: str = "llava",
    position_ids: torch.Tensor | None = None,
    return_step_logits: bool = False,
    method_timer: Any | None = None,
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
        an empty [B, 0] prompt tensor first, then each step's tokens as a host tensor [B] (a host copy per
        step; the stop condition is then read every step).
    clock: optional ``efficiency.clock.TokenClock``, ticked once per generated token without a host wait.
    seed: the recycling's tie-break draws (SparseVLM v1.5); default: the config's ``seed`` (0 for a rule).
    family: the model family (``methods.FAMILIES``): a rule whose budget differs per family (DART on
        LLaVA-NeXT and Qwen2.5-VL) reads it.
    position_ids: [B, L] or [3, B, L] (M-RoPE) the unpruned prompt's position ids (padding ignored); default
        0..n-1 per row. Original positions are sliced from them and decoding continues at each row's maximum
        + 1 (renumbering rules are refused with multi-row positions).
    return_step_logits: also return each decode step's logits (``step_logits``).
    method_timer: optional ``efficiency.clock.MethodTimer``: times the rule's own scoring, decisions and merging.
    """
    rule = config if isinstance(config, PruningRule) else rule_for_config(config)
    rule = rule.for_family(family)
    seed = getattr(config, "seed", 0) if seed is None else seed
    decoder, head = _resolve_modules(language_model, lm_head)
    depth = len(decoder.layers)
    _check_rule(rule, depth, int(decoder.config.num_attention_heads))
    n_prune = len(rule.pruning_layers)
    validate_inputs(inputs_embeds, attention_mask, image_start, max_new_tokens, recycle_noise, n_prune, visual_keep)
    if attention_mask is None:
        attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device)  # [B, L]
    counts = visual_counts(num_visual_tokens, inputs_embeds.shape[0])  # [B]

    samples = split_samples(inputs_embeds, attention_mask, image_start, counts, seed, rule, visual_keep, position_ids)
    position_rows = 0 if position_ids is None or position_ids.dim() == 2 else int(position_ids.shape[0])
    if position_rows and not rule.original_positions:
        raise ValueError(f"{rule.name} renumbers positions 0..n-1, which is not defined for M-RoPE positions")
    batch = len(samples)
    cache = DynamicCache(config=decoder.config)
    visual_per_layer = torch.zeros(batch, depth, dtype=torch.long)  # [B, N]
    cache_lengths = torch.zeros(batch, depth, dtype=torch.long)  # [B, N]
    stats = _Stats([], [], [], [], [])
    groups: list[DecodeGroup] = []
    stage_of_layer: list[int] = []

    for stage in stages(rule.pruning_layers, depth):
        padded = pad_left(samples)
        lengths = torch.tensor(padded.lengths)  # [B]
        start = torch.tensor([s.next_position for s in samples]) if rule.original_positions else lengths  # [B]
        groups.append(DecodeGroup(stage.first, stage.last, padded.valid, start))
        stats.positions.append([s.positions for s in samples])
        stage_of_layer += [len(groups) - 1] * (stage.last - stage.first + 1)
        cache_lengths[:, stage.first : stage.last + 1] = lengths[:, None]
        visual_per_layer[:, stage.first : stage.last + 1] = torch.tensor([s.v_num for s in samples])[:, None]
        if stage.prune is None:
            out, _, _ = run_layers(
                decoder, cache, padded.hidden, padded.valid, padded.position_ids, stage.first, stage.last
            )  # [B, L, d]
            for b, sample in enumerate(samples):
                sample.hidden = out[b, padded.pad[b] :]  # [n_b, d]
            continue
        result = pruning_stage(decoder, cache, samples, padded, stage, rule, method_timer)
        with method_step(method_timer):  # the rule's own merging/recycling of the pruned tokens
            stage_kept = [
                apply_pruning(
                    sample,
                    b,
                    result.outputs[b],
                    result.rows[b],
                    result.decisions[b],
                    stage.prune,
                    recycle_noise,
                    rule.original_positions,
                )
                for b, sample in enumerate(samples)
            ]  # per sample: [k_b]
        visual_per_layer[:, stage.last] = torch.tensor([s.v_num for s in samples])
        stats.kept.append(pad_stack(stage_kept, -1))
        stats.scores.append(pad_stack(result.scores, float("nan")))
        used = [d.heads for d in result.decisions]
        stats.heads.append(None if any(h is None for h in used) else pad_stack(used, -1))
        pivots = [d.pivots for d in result.decisions]
        stats.pivots.append(None if any(p is None for p in pivots) else pad_stack(pivots, -1))

    last_hidden = torch.stack([s.hidden[-1] for s in samples])[:, None]  # [B, 1, d]
    prefill_logits = head(decoder.norm(last_hidden))[:, -1]  # [B, V]
    if streamer is not None:
        streamer.put(torch.zeros(batch, 0, dtype=torch.long))
    step_logits: list[torch.Tensor] | None = [] if return_step_logits else None
    sequences, decode_positions = greedy_decode(
        decoder, head, cache, groups, prefill_logits, int(max_new_tokens), depth, eos_token_id, streamer, clock,
        position_rows, step_logits,
    )  # [B, T], [B, T - 1, N]  # fmt: skip
    stage_positions = [pad_stack(p, -1) for p in stats.positions]  # per stage: [B, n_max]

    return PrunedOutput(
        sequences=sequences,
        prefill_logits=prefill_logits,
        kept=stats.kept,
        scores=stats.scores,
        raters=[s.raters for s in samples],
        visual_tokens_per_layer=visual_per_layer,
        equal_tokens=visual_per_layer.to(torch.float64).mean(dim=1),
        cache_lengths=cache_lengths,
        decode_positions=decode_positions,
        positions=[stage_positions[g] for g in stage_of_layer],
        heads=stats.heads,
        pivots=stats.pivots,
        pruning_layers=tuple(rule.pruning_layers),
        method=rule.name,
        step_logits=_stack_steps(step_logits, prefill_logits),
    )
