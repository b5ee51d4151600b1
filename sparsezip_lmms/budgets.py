"""Load-time checks of a compression config against the checkpoint it will run on.

A config can be valid on its own (every key known, every value of its type and finite) and still
impossible on a given checkpoint: a budget above the tokens an image has, a pruning layer the LLM
does not have, or settings that compress nothing. These are refused here, from the checkpoint's
``config.json`` alone, before any weight is loaded, with a message naming the key and the limit.

    geometry = Geometry.from_llava_config(AutoConfig.from_pretrained(path))
    check_fits(config, geometry)   # raises ConfigError
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import CompressionConfig, ConfigError
from .methods.registry import method_of

__all__ = ["Geometry", "check_fits", "family_of", "max_visual_tokens"]


@dataclass(frozen=True)
class Geometry:
    """What a LLaVA-1.5-style checkpoint's config says about its image tokens and its LLM."""

    patches: int  # N patch tokens per image (576 for CLIP-L/336: a 24 x 24 grid); CLS is one more
    clip_layers: int
    feature_layer: Any  # vision_feature_layer (an int for LLaVA-1.5: -2)
    select_strategy: str  # vision_feature_select_strategy ("default" drops CLS, "full" keeps it)
    llm_layers: int
    max_positions: int | None  # the LLM's position limit (max_position_embeddings)
    vision_width: int = 0  # CLIP hidden size (what a CLIP visual_projection must take)
    any_resolution: bool = False  # LLaVA-NeXT: a base view plus tiles per image (model_type "llava_next")

    @classmethod
    def from_llava_config(cls, config: Any) -> "Geometry":
        vision, text = config.vision_config, config.text_config
        side = int(vision.image_size) // int(vision.patch_size)
        return cls(
            patches=side * side,
            clip_layers=int(vision.num_hidden_layers),
            feature_layer=config.vision_feature_layer,
            select_strategy=str(config.vision_feature_select_strategy),
            llm_layers=int(text.num_hidden_layers),
            max_positions=getattr(text, "max_position_embeddings", None),
            vision_width=int(vision.hidden_size),
            any_resolution=getattr(config, "model_type", "llava") == "llava_next",
        )


def max_visual_tokens(config: CompressionConfig, patches: int) -> int:
    """The most visual tokens one image can send into the LLM under ``config`` (before any in-LLM pruning):
    its method's ``MethodSpec.max_tokens``; every patch for the methods without one."""
    spec = method_of(config)
    return spec.max_tokens(config, patches) if spec.max_tokens is not None else patches


def family_of(geometry: Geometry) -> str:
    """The model family (``methods.FAMILIES``) of a checkpoint."""
    return "llava_next" if geometry.any_resolution else "llava"


def check_fits(config: CompressionConfig, geometry: Geometry) -> None:
    """Raise :class:`ConfigError` when ``config`` cannot run on, or would not compress, this checkpoint."""
    n = geometry.patches
    spec = method_of(config)
    method = spec.name
    family = family_of(geometry)
    if family not in spec.families:
        raise ConfigError(
            f"this is a {_FAMILY_NAMES[family]} checkpoint; method {method!r} runs on {', '.join(spec.families)} checkpoints"
        )
    prune_layer = getattr(config, "prune_layer", 0)
    if geometry.any_resolution and prune_layer > 0:
        raise ConfigError("this is a LLaVA-NeXT checkpoint; deferred pruning (prune_layer > 0) does not run on NeXT's tiles yet")
    if spec.stage == "stock":
        return
    if spec.stage in ("vision", "projected"):
        if geometry.select_strategy != "default":
            raise ConfigError(
                f"method {method!r} compresses the patch tokens of vision_feature_select_strategy 'default' "
                f"(LLaVA-1.5); this checkpoint uses {geometry.select_strategy!r}"
            )
        layer = geometry.feature_layer
        if not isinstance(layer, int) or not -geometry.clip_layers <= layer < geometry.clip_layers:
            raise ConfigError(
                f"method {method!r} needs one vision_feature_layer within the {geometry.clip_layers} CLIP layers; "
                f"this checkpoint has {layer!r}"
            )
    if spec.check is not None:
        spec.check(config, geometry)
    if prune_layer > geometry.llm_layers - 1:
        raise ConfigError(
            f"key 'prune_layer': {prune_layer} is not an input of this checkpoint's {geometry.llm_layers} LLM layers "
            f"(at most {geometry.llm_layers - 1}; 0 = before the LLM)"
        )
    if spec.stage == "llm" or spec.max_tokens is None:
        return
    if geometry.any_resolution and spec.stage == "projected" and spec.next_candidates == "packed":
        return  # it chooses from each image's packed sequence, whose length varies: checked per request
    tokens = max_visual_tokens(config, n)
    if tokens >= n:
        raise ConfigError(
            f"{method} config sends up to {tokens} visual tokens per image into the LLM, not fewer than the {n} "
            "patches: nothing is compressed (lower the budget, or use config keep_all)"
        )


_FAMILY_NAMES = {"llava": "LLaVA-1.5", "llava_next": "LLaVA-NeXT (any-resolution)"}
