"""Result type, input validation and output assembly shared by every compression method.

Conventions (see ``docs/ALGORITHMS.md``):

* ``hidden``   ``[B, 1+N, C]``  CLIP hidden states of the feature layer (−2), CLS at position 0.
* ``cls_attn`` ``[B, H, 1+N]``  that layer's attention probabilities of the CLS query row, per head.
* ``keys``     ``[B, 1+N, Ck]`` that layer's key projections averaged over heads.

Scores are computed in ``float32`` (or ``float64`` when an input is ``float64``); output tokens keep
the dtype of ``hidden``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Compressed", "assemble", "merge_members", "score_dtype"]


@dataclass(frozen=True)
class Compressed:
    """Compressed visual tokens of a batch of images.

    ``tokens`` ``[B, T, C]``: per image, kept tokens in ascending source position, then merged
    (contextual / pooled) tokens; rows past an image's count are zero padding.
    ``valid`` ``[B, T]`` bool: False marks padding (per-image counts may differ).
    ``index`` ``[B, T]`` long: source position 0..N of a kept token (0 = CLS), −1 for a merged token
    and for padding.
    ``members`` ``[B, T, 1+N]`` bool or None: the source positions each merged token is made of (all
    False for kept tokens and padding); None when the method merges nothing.
    """

    tokens: Tensor
    valid: Tensor
    index: Tensor
    members: Tensor | None = None

    @property
    def counts(self) -> Tensor:
        """Tokens per image, ``[B]`` long (``valid.sum(1)``)."""
        return self.valid.sum(1)

    @property
    def kept(self) -> Tensor:
        """``[B, T]`` bool: valid tokens copied from a source position (not merged)."""
        return self.valid & (self.index >= 0)

    def unpad(self) -> list[Tensor]:
        """Per-image token tensors ``[T_b, C]`` without padding (one host sync)."""
        return [t[:n] for t, n in zip(self.tokens, self.counts.tolist())]


# --------------------------------------------------------------------------- dtypes


def score_dtype(*tensors: Tensor) -> torch.dtype:
    """float32, or float64 when any input is float64: scores never run in half precision."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


# --------------------------------------------------------------------------- validation


def check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_tensor(name: str, t: object, ndim: int, floating: bool = True) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if floating and not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    return t


def check_finite(**named: Tensor) -> None:
    """One host sync for all tensors; the error names the first non-finite one."""
    flags = torch.stack([torch.isfinite(t).all() for t in named.values()])  # same device (checked)
    if bool(flags.all()):
        return
    for name, ok in zip(named, flags.tolist()):
        if not ok:
            raise ValueError(f"{name} contains NaN or inf")


def check_hidden(hidden: object) -> tuple[int, int, int]:
    """Validate ``hidden`` [B, 1+N, C]; returns (B, N, C)."""
    _check_tensor("hidden", hidden, 3)
    b, length, c = hidden.shape
    if b < 1 or length < 2 or c < 1:
        raise ValueError(f"hidden must be [B>=1, 1+N>=2, C>=1] (CLS + patches), got {tuple(hidden.shape)}")
    return b, length - 1, c


def check_scoring_inputs(hidden: object, cls_attn: object, keys: object) -> tuple[int, int, int]:
    """Validate the three scoring inputs (shapes, devices, finiteness); returns (B, N, C)."""
    b, n, c = check_hidden(hidden)
    _check_tensor("cls_attn", cls_attn, 3)
    _check_tensor("keys", keys, 3)
    if cls_attn.shape[0] != b or cls_attn.shape[2] != n + 1 or cls_attn.shape[1] < 1:
        raise ValueError(f"cls_attn must be [B={b}, H, 1+N={n + 1}], got {tuple(cls_attn.shape)}")
    if keys.shape[0] != b or keys.shape[1] != n + 1 or keys.shape[2] < 1:
        raise ValueError(f"keys must be [B={b}, 1+N={n + 1}, Ck], got {tuple(keys.shape)}")
    for name, t in (("cls_attn", cls_attn), ("keys", keys)):
        if t.device != hidden.device:
            raise ValueError(f"{name} is on {t.device} but hidden is on {hidden.device}")
    check_finite(hidden=hidden, cls_attn=cls_attn, keys=keys)
    return b, n, c


def check_patch_scores(name: str, t: object, b: int, n: int, device: torch.device) -> Tensor:
    """Validate a per-patch tensor [B, N] (e.g. text relevance)."""
    _check_tensor(name, t, 2)
    if tuple(t.shape) != (b, n):
        raise ValueError(f"{name} must be [B={b}, N={n}], got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but hidden is on {device}")
    check_finite(**{name: t})
    return t


# --------------------------------------------------------------------------- assembly


def merge_members(labels: Tensor, token_labels: Tensor) -> Tensor:
    """Which source positions each merged token is made of, ``[B, S, L]`` bool.

    labels [B, L] long: the group each source position went into (−1: none); token_labels [B, S] long:
    the group each merged token was made from, in token order.
    """
    return (labels.unsqueeze(1) == token_labels.unsqueeze(2)) & (labels >= 0).unsqueeze(1)


def assemble(
    hidden: Tensor,
    keep: Tensor,
    merged: Tensor | None = None,
    merged_valid: Tensor | None = None,
    width: int | None = None,
    merged_members: Tensor | None = None,
) -> Compressed:
    """Kept source tokens in ascending position, then the valid merged tokens, padded to a common T.

    hidden [B, L, C]; keep [B, L] bool; merged [B, M, C] (any float dtype); merged_valid [B, M] bool;
    merged_members [B, M, L] bool: the source positions of each merged token (:func:`merge_members`).
    ``width``: T when the caller knows it (fixed budgets); otherwise one host sync computes it.
    """
    b, length, c = hidden.shape
    positions = torch.arange(length, device=hidden.device).expand(b, length)  # [B, L]
    if merged is None or merged.shape[1] == 0:
        cand_tokens, cand_valid = hidden, keep  # [B, L, C], [B, L]
        cand_index = positions
    else:
        m = merged.shape[1]
        cand_tokens = torch.cat([hidden, merged.to(hidden.dtype)], dim=1)  # [B, L+M, C]
        cand_valid = torch.cat([keep, merged_valid], dim=1)  # [B, L+M]
        cand_index = torch.cat([positions, positions.new_full((b, m), -1)], dim=1)  # [B, L+M]
    if width is None:
        width = int(cand_valid.sum(1).max())  # host sync: the padded width must be known
    # stable sort on "is padding" keeps source order among valid and among invalid candidates
    order = torch.sort((~cand_valid).to(torch.uint8), dim=1, stable=True).indices[:, :width]  # [B, T]
    valid = cand_valid.gather(1, order)  # [B, T]
    index = cand_index.gather(1, order).masked_fill(~valid, -1)  # [B, T]
    tokens = cand_tokens.gather(1, order.unsqueeze(-1).expand(b, width, c))  # [B, T, C]
    tokens = tokens.masked_fill(~valid.unsqueeze(-1), 0)
    members = None
    if merged_members is not None and merged is not None and merged.shape[1] > 0:
        merged_slot = order - length  # [B, T] row among the merged tokens (negative: a source token)
        is_merged = (merged_slot >= 0) & valid  # [B, T]
        rows = merged_slot.clamp(min=0).unsqueeze(-1).expand(b, width, merged_members.shape[-1])  # [B, T, L]
        members = merged_members.gather(1, rows) & is_merged.unsqueeze(-1)  # [B, T, L]
    return Compressed(tokens=tokens, valid=valid, index=index, members=members)
