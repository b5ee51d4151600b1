"""Checks of a Qwen2.5-VL batch before anything runs: every problem is a ValueError that names it.

A row holds 0, 1 or several images; image i is the i-th contiguous run of ``<|image_pad|>`` tokens in
row-major order and must hold exactly N_i = t*(h/2)*(w/2) tokens of ``image_grid_thw[i]``. Videos are not
supported (``pixel_values_videos``, ``video_grid_thw`` or video tokens in the prompt are refused).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["check_batch", "check_method"]


def check_method(config: object) -> str:
    """``"none"`` (no compression), ``"visionzip"`` (by ratio, selection before the LLM) or ``"llm"`` (a
    method that prunes inside the LLM, with original positions: DART, FastV, SparseVLM v2.0), else ValueError."""
    from ..methods.registry import method_of

    method = getattr(config, "method", None)
    if method == "none":
        return "none"
    if method_of(config).stage == "llm":
        return "llm"
    if method in ("divprune", "vispruner"):
        if getattr(config, "prune_layer", 0) != 0:
            raise ValueError(f"prune_layer={config.prune_layer} is not supported on Qwen2.5-VL (the selection enters the LLM: 0)")
        return method
    if method != "visionzip":
        raise ValueError(
            f"config method {method!r} is not supported on Qwen2.5-VL yet (supported: 'none', 'visionzip', "
            "'divprune', 'vispruner' and the in-LLM methods)"
        )
    if not getattr(config, "by_ratio", False):
        raise ValueError("VisionZip on Qwen2.5-VL needs 'dominant_ratio' and 'contextual_ratio' (the official per-image budget)")
    if getattr(config, "prune_layer", 0) != 0:
        raise ValueError(f"prune_layer={config.prune_layer} is not supported on Qwen2.5-VL (the selection enters the LLM: 0)")
    for key in ("dominant_ratio", "contextual_ratio"):
        value = getattr(config, key)
        if not 0 < value <= 1:
            raise ValueError(f"{key} must be in (0, 1], got {value}")
    return "visionzip"


def _image_runs(image_mask: Tensor) -> tuple[list[int], list[int]]:
    """(row, length) of each contiguous run of True in ``image_mask`` [B, L], in row-major order (host)."""
    edges = F.pad(image_mask.to("cpu", torch.int8), (1, 1)).diff(dim=1)  # [B, L+1]: +1 run start, -1 run end
    starts, ends = (edges == 1).nonzero(), (edges == -1).nonzero()  # [runs, 2] each, row-major, aligned
    return starts[:, 0].tolist(), (ends[:, 1] - starts[:, 1]).tolist()


def check_batch(
    input_ids: Tensor,
    attention_mask: Tensor,
    counts: tuple[int, ...],
    has_pixels: bool,
    image_token_id: int,
    video_token_id: int | None,
    max_new_tokens: int,
) -> list[int]:
    """Validates the prompt against the images' merged-token counts ``counts`` (N per image); returns the
    row of each image. One host copy of the image-token mask."""
    if input_ids.ndim != 2 or input_ids.shape[0] < 1:
        raise ValueError(f"input_ids must be [B, L] with B >= 1, got {tuple(input_ids.shape)}")
    if attention_mask is None or tuple(attention_mask.shape) != tuple(input_ids.shape):
        shape = None if attention_mask is None else tuple(attention_mask.shape)
        raise ValueError(f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, got {shape}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    attended = attention_mask.bool()
    if not bool(attended.any(1).all()):
        raise ValueError("attention_mask: every row needs at least one attended token")
    if video_token_id is not None and bool((input_ids == video_token_id).any()):
        raise ValueError("videos are not supported: the prompt holds video tokens (pixel_values_videos)")
    image_mask = input_ids == image_token_id  # [B, L]
    if bool((image_mask & ~attended).any()):
        raise ValueError("attention_mask masks image tokens: image tokens must be attended")
    rows, lengths = _image_runs(image_mask)
    tokens, features = sum(lengths), sum(counts)
    if tokens and not has_pixels:
        raise ValueError(f"the prompt holds {tokens} image tokens but pixel_values is None")
    if tokens > features:
        raise ValueError(f"more image tokens in the prompt ({tokens}) than image features ({features}, image_grid_thw)")
    if tokens < features:
        raise ValueError(f"fewer image tokens in the prompt ({tokens}) than image features ({features}, image_grid_thw)")
    if lengths != list(counts):
        raise ValueError(
            f"the prompt's image-token runs {lengths} do not match the images' merged-token counts {list(counts)} "
            "(image_grid_thw, in order; each image is one contiguous run)"
        )
    return rows
