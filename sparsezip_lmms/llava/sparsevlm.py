"""SparseVLM v1.5 generation: :func:`pruned_generate` restricted to SparseVLM v1.5 configs.

Kept as the entry point of the v1.5 method (its signature is public); the decoder itself lives in
``sparsezip_lmms.llava.pruning_decoder`` and serves every in-LLM method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from .pruning_decoder import RECYCLED_ID_BASE, PrunedOutput, pruned_generate

__all__ = ["RECYCLED_ID_BASE", "SparseVLMOutput", "sparsevlm_generate"]

SparseVLMOutput = PrunedOutput


def sparsevlm_generate(
    language_model: nn.Module,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    image_start: torch.Tensor,
    config: Any,
    max_new_tokens: int,
    recycle_noise: Sequence[torch.Tensor] | None = None,
    *,
    lm_head: nn.Module | None = None,
    num_visual_tokens: int = 576,
    eos_token_id: int | None = None,
    streamer: Any | None = None,
) -> PrunedOutput:
    """Greedy generation with SparseVLM v1.5 pruning (see :func:`pruned_generate` for the arguments)."""
    if getattr(config, "method", None) != "sparsevlm":
        raise ConfigError(f"sparsevlm_generate needs a SparseVLM config (method 'sparsevlm'), got {config!r}")
    return pruned_generate(
        language_model,
        inputs_embeds,
        attention_mask,
        image_start,
        config,
        max_new_tokens,
        recycle_noise,
        lm_head=lm_head,
        num_visual_tokens=num_visual_tokens,
        eos_token_id=eos_token_id,
        streamer=streamer,
    )
