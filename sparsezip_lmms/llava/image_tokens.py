"""The visual tokens a LLaVA language model reads (``ImageTokens``) and the LLaVA parts they come from."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ImageTokens", "check_feature_path", "llava_parts"]


@dataclass
class ImageTokens:
    features: torch.Tensor  # [n_images, T_max, D_llm] projected visual tokens (padding where invalid)
    valid: torch.Tensor  # [n_images, T_max] bool
    source_index: torch.Tensor | None  # [n_images, T_max] long, CLIP position or -1 (merged); None = all patches
    patches: torch.Tensor | None = None  # [n_images, N, D_llm] every projected patch token (deferred pruning)
    members: torch.Tensor | None = None  # [n_images, T_max, 1+N] bool: CLIP positions of each merged token
    crops: "ImageTokens | None" = None  # LLaVA-NeXT: the compressed crops behind the tokens (llava.next)
    candidates: torch.Tensor | None = None  # [n_images] tokens a selection over NeXT's packed sequence chose from
    newlines: torch.Tensor | None = None  # [n_images] long: NeXT image-newline tokens among them, counted per slot

    @property
    def counts(self) -> torch.Tensor:  # [n_images]
        return self.valid.sum(dim=1)


def llava_parts(model):
    """(vision tower, projector, config) of a transformers 5.x LLaVA model."""
    inner = getattr(model, "model", model)
    return inner.vision_tower, inner.multi_modal_projector, model.config




def check_feature_path(llava_config) -> int:
    """The one CLIP feature layer the compressing methods read (LLaVA-1.5's ``default`` strategy)."""
    if llava_config.vision_feature_select_strategy != "default":
        raise ValueError(
            f"compression expects vision_feature_select_strategy='default' (LLaVA-1.5), "
            f"got {llava_config.vision_feature_select_strategy!r}"
        )
    layer = llava_config.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f"compression needs a single vision_feature_layer, got {layer!r}")
    return layer
