"""The dtype that scores, distances, sums and clustering run in."""

from __future__ import annotations

import torch

__all__ = ["at_least_float32"]


def at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """``dtype`` promoted to at least float32: float16, bfloat16 and float32 give float32, float64 stays
    float64 (never half precision)."""
    return torch.promote_types(dtype, torch.float32)
