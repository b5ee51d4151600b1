"""Image tokens for the LLM: CLIP once, scoring inputs, compression, projector.

``image_tokens`` is the one place where pixels become the visual tokens a LLaVA language model
reads. With a ``none`` (keep-all) or ``sparsevlm`` config it is LLaVA's own feature path, so the
uncompressed models are the stock model; every other method compresses the CLIP layer -2 states
before the projector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import CompressionConfig


@dataclass
class ImageTokens:
    features: torch.Tensor  # [n_images, T_max, D_llm] projected visual tokens (padding where invalid)
    valid: torch.Tensor  # [n_images, T_max] bool
    source_index: torch.Tensor | None  # [n_images, T_max] long, CLIP position or -1 (merged); None = all patches

    @property
    def counts(self) -> torch.Tensor:  # [n_images]
        return self.valid.sum(dim=1)


def _llava_parts(model):
    """(vision tower, projector, config) of a transformers 5.x LLaVA model."""
    inner = getattr(model, "model", model)
    return inner.vision_tower, inner.multi_modal_projector, model.config


def uses_stock_features(config: CompressionConfig) -> bool:
    return config.method in ("none", "sparsevlm")


def stock_image_tokens(model, pixel_values: torch.Tensor) -> ImageTokens:
    """All visual tokens exactly as ``LlavaForConditionalGeneration`` computes them."""
    inner = getattr(model, "model", model)
    out = inner.get_image_features(pixel_values=pixel_values, return_dict=True)
    features = torch.stack(list(out.pooler_output))  # [n_images, 576, D_llm]
    valid = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
    return ImageTokens(features, valid, None)


def text_pull_back(model, config: CompressionConfig):
    """The folded question pull-back (``compress.PullBack``) of ``model``'s projector when ``config``
    compares the question with the patches in CLIP space; None otherwise. Made once per model."""
    from ..compress import needs_text, projector_pull_back

    if not needs_text(config) or getattr(config, "text_space", None) != "vision":
        return None
    return projector_pull_back(_llava_parts(model)[1])


def image_tokens(
    model,
    pixel_values: torch.Tensor,  # [n_images, 3, H, W]
    config: CompressionConfig,
    text_embeds: torch.Tensor | None = None,  # [n_images, L_text, D_llm] question embeddings per image
    text_mask: torch.Tensor | None = None,  # [n_images, L_text] bool
    pull_back=None,  # compress.PullBack of this model's projector (text_space "vision"), made once by the caller
    image_keys: torch.Tensor | None = None,  # [n_images] compress.image_keys of the float32 pixels (random)
) -> ImageTokens:
    """Visual tokens entering the LLM for each image under ``config``."""
    if uses_stock_features(config):
        return stock_image_tokens(model, pixel_values)

    from ..compress import compress, needs_text, text_relevance
    from .scoring import scoring_inputs

    vision_tower, projector, llava_config = _llava_parts(model)
    if llava_config.vision_feature_select_strategy != "default":
        raise ValueError(
            f"compression expects vision_feature_select_strategy='default' (LLaVA-1.5), "
            f"got {llava_config.vision_feature_select_strategy!r}"
        )
    layer = llava_config.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f"compression needs a single vision_feature_layer, got {layer!r}")

    inputs = scoring_inputs(vision_tower, pixel_values, layer=layer)  # hidden [n, 1+N, C]
    relevance = None
    if needs_text(config) and text_embeds is not None:
        relevance = text_relevance(
            inputs.hidden[:, 1:], text_embeds, text_mask, projector, space=config.text_space, pull_back=pull_back
        )  # [n, N]
    compressed = compress(
        inputs.hidden, inputs.cls_attn, inputs.keys, config, text_relevance=relevance, image_keys=image_keys
    )
    features = projector(compressed.tokens)  # [n, T_max, D_llm]
    return ImageTokens(features, compressed.valid, compressed.index)
