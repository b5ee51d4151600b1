"""VisionZip for Qwen2.5-VL: the official selection and merge (dvlab-research/VisionZip, commit 68993a3,
``Qwen2_5_VL/qwen2_5vl_visionzip.py``), batched over images of different sizes. Pure tensor code.

Per image of N merged tokens (rules 3–6 of ``tests/data/visionzip_qwen/README.md``):

* counts: D = ``int(rd * N)`` and C = ``max(int(rc * N), 1)``, the Python product of two binary doubles,
  truncated (:func:`visionzip_qwen_counts`);
* dominant: ``topk(score, D)``;
* contextual: the R = N − D other tokens in ascending order; ``step = max(1, R // C)``; the targets are the
  slots ``arange(0, R, step)[:C]``; every other non-dominant token goes to the target of highest cosine of
  the L2-normalised keys (argmax, ties to the lowest slot); contextual token j =
  ``embeds[target_j]`` + the mean of the embeds assigned to it (count clamped to >= 1);
* the contextual token replaces its target's embedding (it keeps the target's place); the other
  non-dominant tokens are dropped.

Each image gets its own N, D, C, top-k and stride (the official code pools all images of one prompt into one
top-k; that pooling is not reproduced). Images of a batch are padded to ``Nmax`` with a validity mask; the
selection has no host sync (the counts come from the host-known grids).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .dtypes import at_least_float32
from .visionzip import first_positions, top_mask

__all__ = ["QwenZip", "QwenZipImage", "unpack_image", "visionzip_qwen", "visionzip_qwen_counts", "visionzip_qwen_select"]


def _check_ratio(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")


def visionzip_qwen_counts(n: int, rd: float, rc: float) -> tuple[int, int]:
    """(D, C) = (``int(rd * n)``, ``max(int(rc * n), 1)``) for an image of ``n`` merged tokens, exactly as
    the official code (binary double product, truncated: ``int(0.29 * 100)`` is 28)."""
    _check_ratio("dominant_ratio", rd)
    _check_ratio("contextual_ratio", rc)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"an image must have at least one merged token, got N={n!r}")
    return int(float(rd) * n), max(int(float(rc) * n), 1)


@dataclass(frozen=True)
class QwenZip:
    """The selection of I images padded to ``Nmax`` merged tokens (raster order).

    ``valid`` [I, Nmax] bool: the image's own tokens (j < N_i). ``dominant`` / ``target`` [I, Nmax] bool.
    ``keep`` [I, Nmax] bool = dominant | target. ``slot`` [I, Nmax] long: the contextual slot (0..C'−1, in
    target order) of a target (its own) or of a merged-away token (its assignment); −1 for dominant tokens
    and padding. ``embeds`` [I, Nmax, E] (at least float32): the input embeds with each target's row replaced
    by its contextual token. ``dominant_count`` / ``contextual_count``: D and C per image (host ints).
    """

    valid: Tensor
    dominant: Tensor
    target: Tensor
    keep: Tensor
    slot: Tensor
    embeds: Tensor
    dominant_count: tuple[int, ...]
    contextual_count: tuple[int, ...]

    @property
    def merged(self) -> Tensor:
        """[I, Nmax] bool: the non-dominant tokens merged into a target (dropped from the sequence)."""
        return self.valid & ~self.keep


def visionzip_qwen_select(scores: Tensor, keys: Tensor, embeds: Tensor, n: Sequence[int], rd: float, rc: float) -> QwenZip:
    """VisionZip's selection and merge for I images at once.

    scores [I, Nmax] (the per-merged-token attention, raster order); keys [I, Nmax, d] (head-averaged keys
    after the vision RoPE); embeds [I, Nmax, E] (PatchMerger outputs); ``n``: N_i per image (host ints,
    each <= Nmax). Entries past N_i are ignored. Scores, cosines and the merge run in at least float32.
    """
    if scores.ndim != 2 or keys.ndim != 3 or embeds.ndim != 3:
        raise ValueError(f"expected scores [I, N], keys [I, N, d], embeds [I, N, E], got {tuple(scores.shape)}, "
                         f"{tuple(keys.shape)}, {tuple(embeds.shape)}")  # fmt: skip
    images, n_max = scores.shape
    if keys.shape[:2] != (images, n_max) or embeds.shape[:2] != (images, n_max):
        raise ValueError(f"scores {tuple(scores.shape)}, keys {tuple(keys.shape)} and embeds {tuple(embeds.shape)} disagree on [I, N]")
    n = [int(v) for v in n]
    if len(n) != images or any(v > n_max for v in n):
        raise ValueError(f"n must give one count <= {n_max} per image ({images}), got {n}")
    counts = [visionzip_qwen_counts(v, rd, rc) for v in n]
    d_host = [d for d, _ in counts]
    c_host = [c for _, c in counts]
    device = scores.device
    work = at_least_float32(torch.promote_types(scores.dtype, embeds.dtype))

    cols = torch.arange(n_max, device=device)  # [Nmax]
    n_t = torch.tensor(n, device=device)  # [I]
    valid = cols < n_t.unsqueeze(1)  # [I, Nmax]
    score = scores.to(work).masked_fill(~valid, float("-inf"))  # [I, Nmax]
    d_t = torch.tensor(d_host, device=device)  # [I]
    c_t = torch.tensor(c_host, device=device)  # [I]
    dominant = top_mask(score, d_t, max(d_host)) & valid  # [I, Nmax]

    # contextual targets: slots 0, step, 2*step, ... (at most C) of the remaining tokens in ascending order
    remain = valid & ~dominant  # [I, Nmax]
    r = (n_t - d_t).unsqueeze(1)  # [I, 1] R
    step = (r // c_t.unsqueeze(1)).clamp(min=1)  # [I, 1]
    rank = remain.long().cumsum(1) - 1  # [I, Nmax] rank among the remaining tokens
    slot = rank // step  # [I, Nmax]
    target = remain & (rank % step == 0) & (slot < c_t.unsqueeze(1))  # [I, Nmax]
    c_max = max(c_host)
    target_pos, slot_valid = first_positions(target, c_max)  # [I, Cmax] positions in slot order, [I, Cmax]

    # assignment: cosine of the L2-normalised keys, argmax over the image's own targets
    metric = keys.to(work)
    metric = metric / metric.norm(dim=-1, keepdim=True)  # [I, Nmax, d] (as the official code; no eps)
    metric = metric.masked_fill(~valid.unsqueeze(-1), 0)  # padding rows may hold anything
    target_metric = metric.gather(1, target_pos.unsqueeze(-1).expand(-1, -1, metric.shape[-1]))  # [I, Cmax, d]
    sim = metric @ target_metric.transpose(1, 2)  # [I, Nmax, Cmax]
    sim = sim.masked_fill(~slot_valid.unsqueeze(1), float("-inf"))
    assign = sim.argmax(dim=2)  # [I, Nmax]
    to_merge = remain & ~target  # [I, Nmax]

    # contextual token = target embed + mean of the embeds assigned to it (count clamped to >= 1)
    hidden = embeds.to(work).masked_fill(~valid.unsqueeze(-1), 0)  # [I, Nmax, E]
    one_hot = ((assign.unsqueeze(-1) == torch.arange(c_max, device=device)) & to_merge.unsqueeze(-1)).to(work)  # [I, Nmax, Cmax]
    count = one_hot.sum(1).clamp(min=1).unsqueeze(-1)  # [I, Cmax, 1]
    aggregated = one_hot.transpose(1, 2) @ hidden / count  # [I, Cmax, E]
    target_hidden = hidden.gather(1, target_pos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # [I, Cmax, E]
    contextual = target_hidden + aggregated  # [I, Cmax, E]

    own = slot.clamp(0, c_max - 1)  # [I, Nmax] a target's own slot (C >= 1, so c_max >= 1)
    replaced = contextual.gather(1, own.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # [I, Nmax, E]
    out = torch.where(target.unsqueeze(-1), replaced, hidden)  # [I, Nmax, E]
    slot_of = torch.where(target, slot, assign).masked_fill(~remain, -1)  # [I, Nmax]
    return QwenZip(valid, dominant, target, dominant | target, slot_of, out, tuple(d_host), tuple(c_host))


@dataclass(frozen=True)
class QwenZipImage:
    """One image's selection as index lists (the golden fixtures' names), all ascending merged-token
    indices: ``dominant_idx`` [D], ``contextual_target_idx`` [C'], ``merged_idx`` [R−C'], ``contextual_assign``
    [R−C'] (the slot each ``merged_idx`` token went to), ``keep_image_idx`` [D+C']; ``tokens`` [D+C', E] the
    kept embeds in ``keep_image_idx`` order (contextual tokens at their targets' places)."""

    dominant_idx: Tensor
    contextual_target_idx: Tensor
    merged_idx: Tensor
    contextual_assign: Tensor
    keep_image_idx: Tensor
    tokens: Tensor


def unpack_image(sel: QwenZip, i: int) -> QwenZipImage:
    """Image ``i`` of a batched selection as index lists (host syncs: reporting, not a hot path)."""
    merged = sel.merged[i]
    keep = sel.keep[i].nonzero().squeeze(1)
    return QwenZipImage(
        dominant_idx=sel.dominant[i].nonzero().squeeze(1),
        contextual_target_idx=sel.target[i].nonzero().squeeze(1),
        merged_idx=merged.nonzero().squeeze(1),
        contextual_assign=sel.slot[i][merged],
        keep_image_idx=keep,
        tokens=sel.embeds[i][keep],
    )


def visionzip_qwen(scores: Tensor, keys: Tensor, embeds: Tensor, rd: float, rc: float) -> QwenZipImage:
    """One image: scores [N], keys [N, d], embeds [N, E] -> its :class:`QwenZipImage`."""
    if scores.ndim != 1:
        raise ValueError(f"scores must be [N], got {tuple(scores.shape)}")
    sel = visionzip_qwen_select(scores[None], keys[None], embeds[None], [scores.shape[0]], rd, rc)
    return unpack_image(sel, 0)
