"""Reference and sanity baselines. All of them output patch tokens only (no CLS), like plain LLaVA-1.5."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .types import Compressed, check_finite, check_hidden, check_int, score_dtype

__all__ = ["keep_all", "pool", "pool_grid", "random_keep"]


def _patches(hidden: Tensor) -> tuple[int, int, int]:
    b, n, c = check_hidden(hidden)
    check_finite(hidden=hidden)
    return b, n, c


def _kept(hidden: Tensor, positions: Tensor) -> Compressed:
    """Tokens at source ``positions`` [B, T] (ascending, 1..N)."""
    c = hidden.shape[-1]
    tokens = hidden.gather(1, positions.unsqueeze(-1).expand(*positions.shape, c))  # [B, T, C]
    return Compressed(tokens=tokens, valid=torch.ones_like(positions, dtype=torch.bool), index=positions)


def keep_all(hidden: Tensor) -> Compressed:
    """The N patch tokens in source order (index 1..N), CLS dropped: exactly plain LLaVA-1.5's input."""
    b, n, _ = _patches(hidden)
    positions = torch.arange(1, n + 1, device=hidden.device).expand(b, n)  # [B, N]
    return Compressed(tokens=hidden[:, 1:], valid=torch.ones(b, n, dtype=torch.bool, device=hidden.device), index=positions)


def random_keep(hidden: Tensor, k: int, generator: torch.Generator | None = None) -> Compressed:
    """``k`` patches per image drawn uniformly without replacement, in ascending source order.

    The draw happens on ``generator``'s device (CPU when None, using the global RNG) and is moved to
    ``hidden``'s device, so a seeded CPU generator selects the same patches everywhere.
    """
    b, n, _ = _patches(hidden)
    check_int("k", k, 1)
    if k > n:
        raise ValueError(f"k ({k}) exceeds the N={n} patches of hidden")
    device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.rand(b, n, generator=generator, device=device)  # [B, N]
    pick = noise.topk(k, dim=1).indices.sort(dim=1).values + 1  # [B, k] ascending positions 1..N
    return _kept(hidden, pick.to(hidden.device))


def pool_grid(k: int, side: int) -> tuple[int, int]:
    """Output grid (rows, cols) for pooling a side×side patch grid to about ``k`` tokens.

    The most square factorisation rows·cols = k with rows <= cols <= min(2·rows, side) gives exactly
    k tokens (64 → 8×8, 128 → 8×16, 192 → 12×16); when there is none (e.g. a prime k), the square
    floor(√k)² grid is used, i.e. fewer than k tokens — the budget is never exceeded.
    """
    rows = max(d for d in range(1, math.isqrt(k) + 1) if k % d == 0)
    cols = k // rows
    if cols <= min(2 * rows, side):
        return rows, cols
    s = math.isqrt(k)
    return s, s


def pool(hidden: Tensor, k: int) -> Compressed:
    """2-D average pooling (``adaptive_avg_pool2d``) of the √N×√N patch grid to :func:`pool_grid`'s grid.

    Tokens are in row-major grid order, index −1 (merged). ``k == N`` returns the patches unchanged.
    Averages are computed in float32 (float64 stays float64) and cast back to ``hidden``'s dtype.
    """
    b, n, c = _patches(hidden)
    check_int("k", k, 1)
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"hidden must hold a square patch grid after CLS, got N={n} patches")
    if k > n:
        raise ValueError(f"k ({k}) exceeds the N={n} patches of hidden")
    if k == n:
        return keep_all(hidden)
    rows, cols = pool_grid(k, side)
    grid = hidden[:, 1:].to(score_dtype(hidden)).transpose(1, 2).reshape(b, c, side, side)  # [B, C, s, s]
    pooled = F.adaptive_avg_pool2d(grid, (rows, cols)).flatten(2).transpose(1, 2)  # [B, rows*cols, C]
    t = rows * cols
    return Compressed(
        tokens=pooled.to(hidden.dtype),
        valid=torch.ones(b, t, dtype=torch.bool, device=hidden.device),
        index=torch.full((b, t), -1, dtype=torch.long, device=hidden.device),
    )
