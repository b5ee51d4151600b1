"""Reference and sanity baselines. All of them output patch tokens only (no CLS), like plain LLaVA-1.5."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .types import Compressed, check_finite, check_hidden, check_int, score_dtype

__all__ = ["image_keys", "keep_all", "keyed_uniform", "patch_image_keys", "pool", "pool_grid", "pool_members", "random_keep"]

_MASK32 = 0xFFFFFFFF


def _mix32(x: Tensor) -> Tensor:
    """32-bit integer hash (xor-shift / multiply rounds) of int64 values, result in [0, 2^32).

    Operands stay below 2^32 and the multipliers below 2^31, so no product reaches 2^63: the same
    integers come out on every device.
    """
    x = x & _MASK32
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & _MASK32
    x = ((x ^ (x >> 15)) * 0x5BD1E995) & _MASK32
    return x ^ (x >> 16)


def image_keys(pixel_values: Tensor) -> Tensor:
    """[B] int64 fingerprint of each image, from its processed float32 pixels ``[B, ...]``.

    Pixels are quantised to 1/1024 (clamped to ±8) and summed with fixed per-position integer
    weights below 2^20. Every term and partial sum is an integer below 2^53, so the float64 product
    is exact in any summation order: one image gets one key in any batch, process or on any device.
    Pass the processor's float32 output: half-precision copies round differently.
    """
    if pixel_values.dim() < 2 or pixel_values.shape[0] == 0:
        raise ValueError(f"pixel_values must be [B, ...] with B >= 1, got {tuple(pixel_values.shape)}")
    flat = pixel_values.detach().flatten(1)  # [B, P]
    if flat.shape[1] > 2**19:
        raise ValueError(f"image_keys takes up to 2^19 values per image, got {flat.shape[1]}")
    if not torch.isfinite(flat).all():
        raise ValueError("pixel_values contain NaN or inf")
    levels = (flat.to(torch.float64) * 1024).round().clamp(-(2**13), 2**13)  # [B, P] integers
    positions = torch.arange(flat.shape[1], device=flat.device)  # [P]
    weights = (((positions * 0x9E3779B1) >> 12) & 0xFFFFF).to(torch.float64)  # [P] integers < 2^20
    sums = (levels @ weights).to(torch.int64)  # [B], exact: |sum| < 2^19 * 2^33 = 2^52
    return _mix32(sums & _MASK32)


def patch_image_keys(pixel_values: Tensor, patches: list[int]) -> Tensor:
    """[I] int64 fingerprint of each image of a packed patch batch (Qwen2.5-VL's ``pixel_values``
    ``[P, D]``, image i owning the next ``patches[i]`` rows), from its processed float32 pixels.

    As :func:`image_keys`, per patch row: values quantised to 1/1024 (clamped to ±8), summed with fixed
    integer weights below 2^20 (exact in float64 while D <= 2^19); each row's sum is hashed with its
    position inside its image, and an image's key hashes the integer sum of its rows' hashes and its
    patch count. Integer arithmetic only after the exact sums: one image gets one key in any batch.
    """
    if pixel_values.dim() != 2 or sum(patches) != pixel_values.shape[0]:
        raise ValueError(f"pixel_values must be [P, D] with P = {sum(patches)} patch rows, got {tuple(pixel_values.shape)}")
    if pixel_values.shape[1] > 2**19:
        raise ValueError(f"patch_image_keys takes up to 2^19 values per patch row, got {pixel_values.shape[1]}")
    flat = pixel_values.detach()
    if not torch.isfinite(flat).all():
        raise ValueError("pixel_values contain NaN or inf")
    device = flat.device
    levels = (flat.to(torch.float64) * 1024).round().clamp(-(2**13), 2**13)  # [P, D] integers
    columns = torch.arange(flat.shape[1], device=device)  # [D]
    weights = (((columns * 0x9E3779B1) >> 12) & 0xFFFFF).to(torch.float64)  # [D] integers < 2^20
    rows = (levels @ weights).to(torch.int64)  # [P] exact: |sum| < 2^19 * 2^33 = 2^52
    n = torch.tensor(patches, device=device)  # [I]
    image = torch.repeat_interleave(torch.arange(len(patches), device=device), n)  # [P]
    local = torch.arange(flat.shape[0], device=device) - (n.cumsum(0) - n)[image]  # [P] row inside its image
    hashed = _mix32(_mix32(rows & _MASK32) ^ _mix32(local * 0x9E3779B1))  # [P] < 2^32
    sums = torch.zeros(len(patches), dtype=torch.int64, device=device).index_add_(0, image, hashed)  # [I] < 2^63
    return _mix32(_mix32(sums & _MASK32) ^ _mix32(n))


def keyed_uniform(keys: Tensor, n: int, seed: int) -> Tensor:
    """[B, n] integers in [0, 2^32) that depend only on (seed, key of the row, column)."""
    salted = _mix32(keys ^ _mix32(torch.tensor(int(seed) & _MASK32, device=keys.device)))  # [B]
    columns = torch.arange(n, device=keys.device) * 0x9E3779B1  # [n] (< 2^42)
    return _mix32(_mix32(salted[:, None] + columns[None, :]))  # [B, n]


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


def random_keep(
    hidden: Tensor,
    k: int,
    generator: torch.Generator | None = None,
    keys: Tensor | None = None,
    seed: int = 0,
) -> Compressed:
    """``k`` patches per image drawn uniformly without replacement, in ascending source order.

    With ``keys`` ([B] int64, e.g. :func:`image_keys`) the draw of each image is a hash of
    (``seed``, its key, patch position): the same image keeps the same patches in any batch, at any
    position, in any data-parallel shard and on any device. Without, one draw of ``[B, N]`` uniforms
    on ``generator``'s device (CPU when None, using the global RNG), moved to ``hidden``'s device.
    """
    b, n, _ = _patches(hidden)
    check_int("k", k, 1)
    if k > n:
        raise ValueError(f"k ({k}) exceeds the N={n} patches of hidden")
    if keys is not None:
        if tuple(keys.shape) != (b,) or keys.dtype != torch.int64:
            raise ValueError(f"keys must be an int64 tensor [{b}], got {keys.dtype} {tuple(keys.shape)}")
        noise = keyed_uniform(keys.to(hidden.device), n, seed)  # [B, N]
    else:
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
    members = pool_members(side, rows, cols, hidden.device)  # [t, 1+N]
    return Compressed(
        tokens=pooled.to(hidden.dtype),
        valid=torch.ones(b, t, dtype=torch.bool, device=hidden.device),
        index=torch.full((b, t), -1, dtype=torch.long, device=hidden.device),
        members=members.expand(b, t, n + 1),
    )


def pool_members(side: int, rows: int, cols: int, device: torch.device | str = "cpu") -> Tensor:
    """[rows·cols, 1+side²] bool: the patches (CLIP positions, CLS = 0 never) each output cell of
    ``adaptive_avg_pool2d`` from a side×side grid averages, cells in row-major order. Its windows are
    [floor(i·side/rows), ceil((i+1)·side/rows)), so neighbouring cells may share a patch."""

    def windows(out: int) -> Tensor:  # [out, side] bool
        i = torch.arange(out, device=device)
        start = (i * side) // out
        end = ((i + 1) * side + out - 1) // out
        grid = torch.arange(side, device=device)
        return (grid >= start[:, None]) & (grid < end[:, None])

    cells = windows(rows)[:, None, :, None] & windows(cols)[None, :, None, :]  # [rows, cols, side, side]
    members = cells.reshape(rows * cols, side * side)
    return torch.cat([members.new_zeros(rows * cols, 1), members], dim=1)
