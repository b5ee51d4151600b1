"""Greedy decoding after a pruned prefill (no pruning).

The layers of one stage share one cache length, and each sample places its new token at its own cache
length of that stage (renumbered positions) or at its unpruned prompt length plus the step (original
positions).

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

__all__ = ["DecodeGroup", "greedy_decode"]


@dataclass
class DecodeGroup:
    """The layers of one prefill stage, which share one cache length."""

    first: int
    last: int
    key_valid: torch.Tensor  # [B, L_s] bool, grows by one column per decoded token
    next_position: torch.Tensor  # [B] position of the first decoded token in this stage's layers


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
            hidden, _, _ = run_layers(decoder, cache, hidden, group.key_valid, position_ids, group.first, group.last)
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
    return torch.stack(tokens, dim=1), positions[:, :steps_done]  # [B, T], [B, T - 1, N]
