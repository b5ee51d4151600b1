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

    if not needs_text(config) or getattr(config, "text_space", None) != "vision" or config.text_source != "projector":
        return None
    return projector_pull_back(_llava_parts(model)[1])


def _check_feature_path(llava_config) -> int:
    if llava_config.vision_feature_select_strategy != "default":
        raise ValueError(
            f"compression expects vision_feature_select_strategy='default' (LLaVA-1.5), "
            f"got {llava_config.vision_feature_select_strategy!r}"
        )
    layer = llava_config.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f"compression needs a single vision_feature_layer, got {layer!r}")
    return layer


def projected_selection(
    model,
    pixel_values: torch.Tensor,  # [n_images, 3, H, W]
    config: CompressionConfig,
    clip_text=None,  # llava.clip_text.ClipText (CDPruner)
    question_embeds: tuple[torch.Tensor, torch.Tensor] | None = None,  # CLIP text embeds [n, M, P], mask [n, M]
) -> ImageTokens:
    """DivPrune / CDPruner: the projector runs on all N patch tokens, the method picks ``keep`` of them
    per image, and the picks enter the LLM in ascending patch order (as the official code keeps them)."""
    from ..compress.cdpruner import cdpruner_patch_embeds, cdpruner_relevance, cdpruner_select
    from ..compress.divprune import divprune_select
    from .scoring import feature_layer_hidden

    vision_tower, projector, llava_config = _llava_parts(model)
    hidden = feature_layer_hidden(vision_tower, pixel_values, layer=_check_feature_path(llava_config))  # [n, 1+N, C]
    patches = projector(hidden[:, 1:])  # [n, N, D_llm]
    if config.method == "divprune":
        order = divprune_select(patches, config.keep, mask_chosen=config.mask_chosen)  # [n, k]
    else:
        if clip_text is None or question_embeds is None:
            raise ValueError("cdpruner needs the CLIP text tower and the question embeds")
        embeds = cdpruner_patch_embeds(hidden, vision_tower.post_layernorm, clip_text.visual_projection)  # [n, N, P]
        text, text_mask = question_embeds
        relevance = cdpruner_relevance(embeds, text.to(embeds.dtype), text_mask=text_mask)  # [n, N]
        order = cdpruner_select(patches, relevance, config.keep, distinct=config.distinct)  # [n, k]
    kept = order.sort(dim=1).values  # [n, k] ascending patch index (repeats stay, as in the official code)
    features = patches.gather(1, kept[..., None].expand(-1, -1, patches.shape[-1]))  # [n, k, D_llm]
    valid = torch.ones(kept.shape, dtype=torch.bool, device=kept.device)
    return ImageTokens(features, valid, kept + 1)  # CLIP positions (CLS = 0)


def image_tokens(
    model,
    pixel_values: torch.Tensor,  # [n_images, 3, H, W]
    config: CompressionConfig,
    text_embeds: torch.Tensor | None = None,  # [n_images, L_text, D_llm] question embeddings per image
    text_mask: torch.Tensor | None = None,  # [n_images, L_text] bool
    pull_back=None,  # compress.PullBack of this model's projector (text_space "vision"), made once by the caller
    image_keys: torch.Tensor | None = None,  # [n_images] compress.image_keys of the float32 pixels (random)
    clip_text=None,  # llava.clip_text.ClipText (CDPruner), loaded once by the caller
    question_embeds: tuple[torch.Tensor, torch.Tensor] | None = None,  # CDPruner: CLIP text embeds, mask
) -> ImageTokens:
    """Visual tokens entering the LLM for each image under ``config``."""
    from ..compress import selects_after_projector

    if uses_stock_features(config):
        return stock_image_tokens(model, pixel_values)
    if selects_after_projector(config):
        return projected_selection(model, pixel_values, config, clip_text, question_embeds)

    from ..compress import compress, needs_text, text_relevance
    from .scoring import scoring_inputs

    vision_tower, projector, llava_config = _llava_parts(model)
    inputs = scoring_inputs(vision_tower, pixel_values, layer=_check_feature_path(llava_config))  # hidden [n, 1+N, C]
    relevance = None
    if needs_text(config) and text_embeds is not None and config.text_source == "seed_keys":
        from ..compress import seed_key_relevance  # the seed's (reproduction only): question mean vs unit keys

        relevance = seed_key_relevance(inputs.keys, text_embeds, text_mask)[:, 1:]  # [n, N]
    elif needs_text(config) and text_embeds is not None:
        relevance = text_relevance(
            inputs.hidden[:, 1:], text_embeds, text_mask, projector, space=config.text_space, pull_back=pull_back
        )  # [n, N]
    compressed = compress(
        inputs.hidden, inputs.cls_attn, inputs.keys, config, text_relevance=relevance, image_keys=image_keys
    )
    features = projector(compressed.tokens)  # [n, T_max, D_llm]
    return ImageTokens(features, compressed.valid, compressed.index)
