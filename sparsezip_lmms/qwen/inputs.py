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


_SELECTION = ("divprune", "vispruner", "random", "pool", "cdpruner", "sparsezip")  # before the LLM, per image


def check_method(config: object) -> str:
    """``"none"`` (no compression), ``"visionzip"`` (by ratio), one of the per-image selections before the
    LLM (``divprune``, ``vispruner``, ``random``, ``pool``, ``cdpruner``, ``sparsezip``) or ``"llm"`` (a
    method that prunes inside the LLM, with original positions: DART, FastV, SparseVLM v2.0 and v1.5), else a
    ValueError naming the key. Budgets that depend on an image's N are checked per image when it runs."""
    from ..methods.registry import method_of

    method = getattr(config, "method", None)
    if method == "none":
        return "none"
    if method_of(config).stage == "llm":
        return "llm"
    if method not in ("visionzip", *_SELECTION):
        raise ValueError(
            f"config method {method!r} is not supported on Qwen2.5-VL yet (supported: 'none', 'visionzip', "
            f"{', '.join(repr(m) for m in _SELECTION)} and the in-LLM methods)"
        )
    if getattr(config, "prune_layer", 0) != 0:
        raise ValueError(f"prune_layer={config.prune_layer} is not supported on Qwen2.5-VL (the selection enters the LLM: 0)")
    if method == "sparsezip":
        _check_sparsezip(config)
    elif method == "cdpruner" and config.strip_answer_format:
        raise ValueError(
            "key 'strip_answer_format': CDPruner on Qwen2.5-VL reads every instruction token of the prompt (OpenVINO "
            "GenAI's Qwen-VL recipe, no CLIP question); set strip_answer_format: false (config cdpruner_qwen)"
        )
    if method != "visionzip":
        return method
    if not getattr(config, "by_ratio", False):
        raise ValueError("VisionZip on Qwen2.5-VL needs 'dominant_ratio' and 'contextual_ratio' (the official per-image budget)")
    for key in ("dominant_ratio", "contextual_ratio"):
        value = getattr(config, key)
        if not 0 < value <= 1:
            raise ValueError(f"{key} must be in (0, 1], got {value}")
    return "visionzip"


def _check_sparsezip(config: object) -> None:
    """SparseZip's Qwen2.5-VL keys (``sparsezip.qwen``): counts per ``reference_tokens``, no CLS, the text
    term (if any) in the LLM's space."""
    if not config.by_ratio:
        raise ValueError(
            "SparseZip on Qwen2.5-VL needs 'reference_tokens': its counts are for an image of that many merged "
            "tokens and scale to each image's N (config sparsezip_qwen)"
        )
    if config.cross_beta > 0 and config.text_space != "llm":
        raise ValueError(
            f"key 'text_space' ({config.text_space!r}): on Qwen2.5-VL the question is compared with the post-merger "
            "tokens, which are in the LLM's space already; set text_space: llm (config sparsezip_qwen_text)"
        )
    if config.cross_beta > 0 and config.text_source != "projector":
        raise ValueError(
            f"key 'text_source' ({config.text_source!r}): the seed's key relevance is LLaVA-only; on Qwen2.5-VL use "
            "text_source: projector with text_space: llm"
        )
    if config.k_counts_cls:
        raise ValueError("key 'k_counts_cls': Qwen2.5-VL's vision tower has no CLS token to count; set k_counts_cls: false")
    if config.merging.empty_token != "drop":
        raise ValueError("key 'merging.empty_token': an empty cluster has no member whose place it could take; use 'drop'")
    ref = config.reference_tokens
    limits = [("k_max", config.k_max)] if not config.skip_dynamic_k else [("dominant", config.dominant)]
    for key, value in limits:
        if value > ref:
            raise ValueError(f"key {key!r} ({value}) exceeds reference_tokens ({ref}): more tokens than the image has")
    merged = 0 if (config.merge == "none" and not config.skip_ctx_merge) else config.merging.contextual_num
    if limits[0][1] + merged > ref:
        raise ValueError(
            f"key 'merging.contextual_num' ({merged}): {limits[0][0]} + contextual_num = {limits[0][1] + merged} "
            f"exceeds reference_tokens ({ref})"
        )


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
