"""Greedy decoding after a pruned prefill (no pruning), with its state on the device.

The layers of one stage share one cache length, and each sample places its new token at its own cache
length of that stage (renumbered positions) or at its unpruned prompt length plus the step (original
positions). Per step, nothing waits for the device: the key masks are preallocated for every step and
sliced, the positions live on the device, the token clock records device events, and the stop condition
(every row has produced ``eos_token_id``) is read every ``STOP_CHECK_EVERY`` steps; the tokens computed
past the stop are cut afterwards, so the result is the same as checking every step. A ``streamer``
(given by a caller who wants host tokens each step) checks every step instead.

Shapes: ``B`` samples, ``L_s`` a stage's padded cache length, ``T`` generated tokens, ``N`` decoder
layers, ``V`` vocabulary, ``d`` hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from .attention import run_layers

__all__ = ["STOP_CHECK_EVERY", "DecodeGroup", "decode_step_mask", "greedy_decode"]

STOP_CHECK_EVERY = 8  # decode steps between two reads of the stop condition (the loop's only host wait)


@dataclass
class DecodeGroup:
    """The layers of one prefill stage, which share one cache length."""

    first: int
    last: int
    key_valid: torch.Tensor  # [B, L_s] bool: the stage's cache after the prefill
    next_position: torch.Tensor  # [B] position of the first decoded token in this stage's layers


def decode_step_mask(attention: str, key_valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """The 4-D attention mask of one decoded token over a stage's cache, for the layers' attention
    implementation (``sdpa``: boolean, True = attend; ``eager``: additive, 0 or the dtype's minimum);
    None for another implementation, which then builds its own per step (``create_causal_mask``).

    key_valid: [B, K] bool. Returns [B, 1, 1, K]: one query row attends to every valid key (causality is
    trivial for the newest token)."""
    if attention == "sdpa":
        return key_valid[:, None, None, :]
    if attention == "eager":
        blocked = torch.full(key_valid.shape, torch.finfo(dtype).min, dtype=dtype, device=key_valid.device)
        return torch.where(key_valid, torch.zeros((), dtype=dtype, device=key_valid.device), blocked)[:, None, None, :]
    return None


def greedy_decode(
    decoder: nn.Module,
    head: nn.Module,
    cache: DynamicCache,
    groups: list[DecodeGroup],
    prefill_logits: torch.Tensor,  # [B, V]
    max_new_tokens: int,
    depth: int,
    eos_token_id: int | None = None,
    streamer: Any | None = None,
    clock: Any | None = None,
    position_rows: int = 0,
    step_logits: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy steps; every stage group attends to its own cache with its own padding and positions.

    ``clock``: an ``efficiency.clock.TokenClock``, ticked once per generated token (the first one, from
    the prefill, included). ``position_rows``: 0 for one row of position ids, 3 for M-RoPE (the same
    position on every row). ``step_logits``: a list that receives each decode step's logits [B, V].
    Returns (sequences [B, T], decode positions [B, T - 1, N]); T < max_new_tokens when every row reached
    ``eos_token_id`` early.
    """
    batch = prefill_logits.shape[0]
    device = prefill_logits.device
    steps = max_new_tokens - 1
    attention = getattr(decoder.config, "_attn_implementation", None) or "sdpa"
    embed = decoder.get_input_embeddings()
    dtype = embed.weight.dtype
    tokens = torch.empty(batch, max_new_tokens, dtype=torch.long, device=device)  # [B, T]
    tokens[:, 0] = prefill_logits.argmax(dim=-1)
    positions = torch.zeros(batch, max(steps, 0), depth, dtype=torch.long, device=device)  # [B, T-1, N]
    # every step's key mask, preallocated: column L_s + step turns valid at that step
    key_valid = [torch.cat([g.key_valid, g.key_valid.new_zeros(batch, steps)], dim=1) for g in groups]  # [B, L_s + T - 1]
    masks = [decode_step_mask(attention, valid, dtype) for valid in key_valid]  # [B, 1, 1, L_s + T - 1] or None
    starts = [g.next_position.to(device) for g in groups]  # [B] each
    check_every = 1 if streamer is not None else STOP_CHECK_EVERY
    finished = torch.zeros(batch, dtype=torch.bool, device=device)  # [B]
    all_finished = torch.zeros(max_new_tokens, dtype=torch.bool, device=device)  # [T]: all rows done after token t
    if clock is not None:
        clock.tick()
    steps_done = 0
    for step in range(steps):
        if streamer is not None:
            streamer.put(tokens[:, step].cpu())
        if eos_token_id is not None:
            finished |= tokens[:, step] == eos_token_id
            all_finished[step] = finished.all()
            if (step + 1) % check_every == 0 and bool(all_finished[step]):  # the one host wait, every N steps
                break
        steps_done = step + 1
        hidden = embed(tokens[:, step])[:, None]  # [B, 1, d]
        for g, group in enumerate(groups):
            length = group.key_valid.shape[1] + step + 1
            key_valid[g][:, length - 1] = True
            mask = None if masks[g] is None else masks[g][..., :length]  # [B, 1, 1, L_s + step + 1]
            if mask is not None and attention == "eager":
                mask[:, 0, 0, length - 1] = 0
            position_ids = (starts[g] + step)[:, None]  # [B, 1]
            rope_ids = position_ids.expand(position_rows, -1, -1) if position_rows else position_ids  # [(3,) B, 1]
            hidden, _, _ = run_layers(
                decoder, cache, hidden, key_valid[g][:, :length], rope_ids, group.first, group.last, mask=mask
            )  # [B, 1, d]
            positions[:, step, group.first : group.last + 1] = position_ids
        logits = head(decoder.norm(hidden))[:, -1]  # [B, V]
        if step_logits is not None:
            step_logits.append(logits)
        next_tokens = logits.argmax(dim=-1)  # [B]
        if eos_token_id is not None:
            next_tokens = torch.where(finished, torch.full_like(next_tokens, eos_token_id), next_tokens)
        tokens[:, step + 1] = next_tokens
        if clock is not None:
            clock.tick()
    else:
        if streamer is not None:
            streamer.put(tokens[:, steps_done].cpu())
    if eos_token_id is not None and check_every > 1:
        # cut what was computed past the stop: the first token after which every row had finished
        # (finished is read before each step, as a check at every step would)
        done = all_finished[:steps_done].nonzero()
        if done.numel():
            steps_done = int(done[0, 0])
    if clock is not None:
        clock.keep(steps_done + 1)
    if streamer is not None:
        streamer.end()
    return tokens[:, : steps_done + 1], positions[:, :steps_done].cpu()  # [B, T], [B, T - 1, N]
