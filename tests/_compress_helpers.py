"""Shared helpers of the compression tests: golden fixtures and synthetic scoring inputs."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import torch
from torch.overrides import TorchFunctionMode

TESTS_DATA = Path(__file__).resolve().parent / "data"
DATA = TESTS_DATA / "visionzip"
CLIP_DIR = DATA / "clip"
# (dominant incl. CLS, contextual) settings of the golden VisionZip outputs
SETTINGS = [(54, 10), (108, 20), (162, 30), (191, 30), (10, 3), (1, 8)]


@lru_cache(maxsize=1)
def _cases() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(DATA / "cases.safetensors"))


def cases() -> dict[str, torch.Tensor]:
    """The golden tensors (fresh clones, safe to modify)."""
    return {k: v.clone() for k, v in _cases().items()}


def golden_inputs(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    c = _cases()
    return c["hidden_minus2"].to(dtype), c["cls_attn_row"].to(dtype), c["keys_mean"].to(dtype)


def load_clip():
    from transformers import CLIPVisionModel

    return CLIPVisionModel.from_pretrained(str(CLIP_DIR), attn_implementation="sdpa").eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def synthetic_inputs(
    b: int = 3, n: int = 64, c: int = 24, heads: int = 4, ck: int = 8, seed: int = 0, dtype=torch.float64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random but well-formed scoring inputs: hidden [B,1+N,C], cls_attn [B,H,1+N] (rows sum to 1,
    peaked), keys [B,1+N,Ck] with cluster structure."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, n + 1, c, generator=g, dtype=torch.float64)
    logits = 3.0 * torch.randn(b, heads, n + 1, generator=g, dtype=torch.float64)
    cls_attn = logits.softmax(-1)
    centres = torch.randn(b, 5, ck, generator=g, dtype=torch.float64)
    which = torch.randint(0, 5, (b, n + 1), generator=g)
    keys = centres.gather(1, which.unsqueeze(-1).expand(b, n + 1, ck)) + 0.3 * torch.randn(
        b, n + 1, ck, generator=g, dtype=torch.float64
    )
    return hidden.to(dtype), cls_attn.to(dtype), keys.to(dtype)


class NoHostSync(TorchFunctionMode):
    """Raises on any tensor → host read inside the block."""

    FORBIDDEN: ClassVar[set[str]] = {
        "item",
        "tolist",
        "__bool__",
        "__int__",
        "__float__",
        "__index__",
        "nonzero",
        "numpy",
        "cpu",
    }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.FORBIDDEN:
            raise AssertionError(f"host sync inside the greedy loop: {func.__name__}")
        return func(*args, **(kwargs or {}))


@lru_cache(maxsize=None)
def golden_tensors(folder: str, file: str = "cases.safetensors") -> dict[str, torch.Tensor]:
    """The tensors of a golden set copied into tests/data/<folder>/ (read once)."""
    from safetensors.torch import load_file

    return load_file(str(TESTS_DATA / folder / file))


@lru_cache(maxsize=None)
def golden_meta(folder: str) -> dict:
    import json

    return json.loads((TESTS_DATA / folder / "meta.json").read_text())


def frobenius_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (the absolute error when b is zero)."""
    a, b = a.double(), b.double()
    norm = b.norm()
    return float((a - b).norm() / norm) if norm > 0 else float((a - b).norm())
