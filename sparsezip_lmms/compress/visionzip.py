"""VisionZip (Yang et al., CVPR 2025) with the official code's conventions.

* ``dominant`` counts CLS: CLS + the top-(dominant−1) patches by CLS attention summed over heads,
  output in ascending source position.
* ``contextual`` tokens: the remaining tokens in source order, targets at ranks
  ``arange(0, R, max(1, R // contextual))[:contextual]``, every other remaining token goes to its
  most cosine-similar target (L2-normalised head-averaged keys); a contextual token is the target's
  hidden state plus the mean of the hidden states assigned to it (count clamped to >= 1).

The merge works on a per-image mask of remaining tokens, so SparseZip reuses it with a different
number of dominant tokens per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .types import Compressed, assemble, check_int, check_scoring_inputs, merge_members, score_dtype

__all__ = ["first_positions", "top_mask", "visionzip", "visionzip_merge"]


def top_mask(scores: Tensor, k: Tensor, k_bound: int) -> Tensor:
    """[B, N] bool marking each row's ``k[b]`` highest scores (``k`` [B] long, all <= ``k_bound``).

    One ``topk`` of the static width ``k_bound`` serves every row: its result is sorted, so the
    first ``k[b]`` columns are row b's top-``k[b]``.
    """
    b, n = scores.shape
    mask = torch.zeros(b, n, dtype=torch.bool, device=scores.device)  # [B, N]
    k_bound = min(k_bound, n)
    if k_bound <= 0:
        return mask
    top = scores.topk(k_bound, dim=1, largest=True, sorted=True).indices  # [B, k_bound]
    take = torch.arange(k_bound, device=scores.device) < k.unsqueeze(1)  # [B, k_bound]
    return mask.scatter(1, top, take)


def first_positions(mask: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Positions of the first ``count`` True entries of each row of ``mask`` [B, L], in order.

    Returns (positions [B, count] long, found [B, count] bool); unfound slots point at position 0.
    """
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :count]  # [B, count]
    found = mask.gather(1, order)  # [B, count]
    return order.masked_fill(~found, 0), found


def visionzip_merge(hidden: Tensor, keys: Tensor, remain: Tensor, contextual: int) -> tuple[Tensor, Tensor, Tensor]:
    """VisionZip's contextual tokens of the tokens flagged in ``remain``.

    hidden [B, L, C]; keys [B, L, Ck]; remain [B, L] bool (R_b = remain[b].sum() may differ per image).
    Returns (tokens [B, S, C] in promoted float dtype, valid [B, S] bool, slot [B, L] long: the contextual
    token each remaining token went into, a target its own, −1 elsewhere), S = min(contextual, L); an
    image with R_b < contextual gets R_b tokens (each remaining token is then its own target).
    """
    b, length, c = hidden.shape
    contextual = min(contextual, length)  # never more targets than tokens
    if contextual <= 0:
        return hidden.new_zeros(b, 0, c), remain.new_zeros(b, 0), torch.full_like(remain, -1, dtype=torch.long)
    work = score_dtype(hidden)
    metric = F.normalize(keys.to(score_dtype(keys)), dim=-1)  # [B, L, Ck]
    slots = torch.arange(contextual, device=hidden.device)  # [S]

    r = remain.sum(1, keepdim=True)  # [B, 1]
    step = (r // contextual).clamp(min=1)  # [B, 1]
    rank = remain.cumsum(1) - 1  # [B, L] rank among the remaining tokens (valid where remain)
    slot = rank // step  # [B, L]
    is_target = remain & (rank % step == 0) & (slot < contextual)  # [B, L]

    # targets appear in source order, which is also slot order
    target_pos, slot_valid = first_positions(is_target, contextual)  # [B, S], [B, S]
    target_metric = metric.gather(1, target_pos.unsqueeze(-1).expand(-1, -1, metric.shape[-1]))  # [B, S, Ck]
    target_hidden = hidden.gather(1, target_pos.unsqueeze(-1).expand(-1, -1, c)).to(work)  # [B, S, C]

    sim = metric @ target_metric.transpose(1, 2)  # [B, L, S]
    sim = sim.masked_fill(~slot_valid.unsqueeze(1), float("-inf"))
    assign = sim.argmax(dim=2)  # [B, L]; ties -> lowest slot, as torch.argmax in the official code
    to_merge = remain & ~is_target  # [B, L]
    one_hot = (assign.unsqueeze(-1) == slots) & to_merge.unsqueeze(-1)  # [B, L, S]
    one_hot = one_hot.to(work)
    counts = one_hot.sum(1).clamp(min=1).unsqueeze(-1)  # [B, S, 1]
    merged = one_hot.transpose(1, 2) @ hidden.to(work) / counts  # [B, S, C]
    tokens = (target_hidden + merged).masked_fill(~slot_valid.unsqueeze(-1), 0)  # [B, S, C]
    slot_of = torch.where(is_target, slot, assign).masked_fill(~remain, -1)  # [B, L]
    return tokens, slot_valid, slot_of


def visionzip(hidden: Tensor, cls_attn: Tensor, keys: Tensor, dominant: int, contextual: int) -> Compressed:
    """VisionZip: ``dominant`` tokens (CLS counted) + ``contextual`` merged tokens per image.

    hidden [B, 1+N, C]; cls_attn [B, H, 1+N]; keys [B, 1+N, Ck]. ``dominant`` in [1, 1+N];
    ``dominant == 1+N`` keeps every token (nothing left to merge). Output T = dominant +
    min(contextual, 1+N−dominant) tokens, identical for every image.
    """
    b, n, _ = check_scoring_inputs(hidden, cls_attn, keys)
    check_int("dominant", dominant, 1)
    check_int("contextual", contextual, 0)
    if dominant > n + 1:
        raise ValueError(f"dominant ({dominant}) exceeds the 1+N={n + 1} tokens of hidden")

    scores = cls_attn[:, :, 1:].to(score_dtype(cls_attn)).sum(1)  # [B, N] summed over heads
    k = torch.full((b,), dominant - 1, dtype=torch.long, device=hidden.device)  # [B] patches beside CLS
    keep_patch = top_mask(scores, k, dominant - 1)  # [B, N]
    keep = torch.cat([keep_patch.new_ones(b, 1), keep_patch], dim=1)  # [B, 1+N] CLS always kept
    remaining = n + 1 - dominant
    n_ctx = min(contextual, remaining)
    if n_ctx == 0:
        return assemble(hidden, keep, width=dominant)
    ctx, ctx_valid, slot = visionzip_merge(hidden, keys, ~keep, n_ctx)  # [B, n_ctx, C], [B, n_ctx], [B, 1+N]
    members = merge_members(slot, torch.arange(n_ctx, device=hidden.device).expand(b, n_ctx))  # [B, n_ctx, 1+N]
    return assemble(hidden, keep, ctx, ctx_valid, width=dominant + n_ctx, merged_members=members)
