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

from .config import (
    CDPrunerConfig,
    CompressionConfig,
    ConfigError,
    DivPruneConfig,
    FastVConfig,
    IN_LLM_METHODS,
    PoolConfig,
    RandomKeepConfig,
    SparseVLM2Config,
    SparseVLMConfig,
    SparseZipConfig,
    VisionZipConfig,
)

__all__ = ["Geometry", "check_fits", "max_visual_tokens"]


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
    """The most visual tokens one image can send into the LLM under ``config`` (before any in-LLM pruning)."""
    tokens = patches + 1  # CLS + patches: what VisionZip / SparseZip choose from
    if isinstance(config, VisionZipConfig):
        return config.dominant + min(config.contextual, tokens - config.dominant)
    if isinstance(config, SparseZipConfig):
        k_max = max(config.k_max, config.dominant) if config.dynk.widen_to_dominant else config.k_max
        dominant = (config.dominant if config.skip_dynamic_k else k_max) + (0 if config.k_counts_cls else 1)  # + CLS
        merged = 0 if (config.merge == "none" and not config.skip_ctx_merge) else config.merging.contextual_num
        return dominant + min(merged, tokens - dominant)
    if isinstance(config, DivPruneConfig):
        return config.budget(patches)
    if isinstance(config, (RandomKeepConfig, PoolConfig, CDPrunerConfig)):
        return config.keep
    return patches  # none and the in-LLM methods: every patch enters the LLM


# methods that run on LLaVA-NeXT checkpoints (llava.next, llava.features.next_image_tokens)
NEXT_METHODS = ("none", "visionzip", "sparsezip", "divprune", "cdpruner", "sparsevlm", "sparsevlm2", "fastv", "random", "pool")


def check_fits(config: CompressionConfig, geometry: Geometry) -> None:
    """Raise :class:`ConfigError` when ``config`` cannot run on, or would not compress, this checkpoint."""
    n = geometry.patches
    method = config.method
    if geometry.any_resolution:
        _check_next(config)
    if method == "none":
        return
    if method not in IN_LLM_METHODS:
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
    if geometry.any_resolution and isinstance(config, DivPruneConfig):
        return  # it chooses from each image's packed sequence, whose length varies: checked per request
    if isinstance(config, VisionZipConfig):
        _at_most("dominant", config.dominant, n + 1, f"the {n + 1} tokens per image (CLS + {n} patches)")
    elif isinstance(config, SparseZipConfig):
        limit, what = (n + 1, f"the {n + 1} tokens per image (CLS + {n} patches)") if config.k_counts_cls else (n, f"the {n} patches per image")
        if config.skip_dynamic_k:
            _at_most("dominant", config.dominant, limit, what)
        else:
            _at_most("k_max", config.k_max, limit, what)
    elif isinstance(config, DivPruneConfig) and config.keep_ratio is not None:
        if config.budget(n) < 1:
            raise ConfigError(
                f"key 'keep_ratio': int(round({config.keep_ratio} * {n})) keeps no image token; at least {0.5 / n:.6f}"
            )
    elif isinstance(config, (RandomKeepConfig, PoolConfig, DivPruneConfig, CDPrunerConfig)):
        if config.keep >= n:
            raise ConfigError(
                f"key 'keep': {config.keep} is not below the {n} patches per image: nothing is compressed "
                f"(at most {n - 1}; for no compression use config keep_all)"
            )
    elif isinstance(config, FastVConfig):
        if config.layer > geometry.llm_layers - 1:
            raise ConfigError(
                f"key 'layer': K = {config.layer} prunes at the input of layer {config.layer}, but this checkpoint's "
                f"LLM has {geometry.llm_layers} layers (K at most {geometry.llm_layers - 1})"
            )
        if int(n * config.ratio) < 1:
            raise ConfigError(f"key 'ratio': int({n} * {config.ratio}) keeps no visual token; at least {1 / n:.6f}")
    elif isinstance(config, (SparseVLMConfig, SparseVLM2Config)):
        last = geometry.llm_layers - 1
        beyond = [layer for layer in config.pruning_layers if layer > last]
        if beyond:
            raise ConfigError(
                f"key 'pruning_layers': {config.pruning_layers} names layer {beyond[0]}, but this checkpoint's LLM "
                f"has {geometry.llm_layers} layers (0..{last})"
            )
        if config.schedule[0] >= n:
            raise ConfigError(
                f"key 'schedule': {config.schedule} keeps {config.schedule[0]} of the {n} visual tokens at the first "
                f"pruning layer: nothing is pruned (at most {n - 1}; for no pruning use config keep_all)"
            )
    prune_layer = getattr(config, "prune_layer", 0)
    if prune_layer > geometry.llm_layers - 1:
        raise ConfigError(
            f"key 'prune_layer': {prune_layer} is not an input of this checkpoint's {geometry.llm_layers} LLM layers "
            f"(at most {geometry.llm_layers - 1}; 0 = before the LLM)"
        )
    tokens = max_visual_tokens(config, n)
    if method not in IN_LLM_METHODS and tokens >= n:
        raise ConfigError(
            f"{method} config sends up to {tokens} visual tokens per image into the LLM, not fewer than the {n} "
            "patches: nothing is compressed (lower the budget, or use config keep_all)"
        )


def _check_next(config: CompressionConfig) -> None:
    """What a LLaVA-NeXT (any-resolution) checkpoint cannot run yet, or runs only with LLaVA-1.5's positions."""
    if config.method not in NEXT_METHODS:
        raise ConfigError(
            f"this is a LLaVA-NeXT (any-resolution) checkpoint; method {config.method!r} does not run on NeXT's "
            f"tiles yet (it runs: {', '.join(NEXT_METHODS)})"
        )
    if getattr(config, "prune_layer", 0) > 0:
        raise ConfigError("this is a LLaVA-NeXT checkpoint; deferred pruning (prune_layer > 0) does not run on NeXT's tiles yet")
    if getattr(config, "span", None) == "fixed":
        raise ConfigError(
            "span: fixed is FastV's LLaVA-1.5 span (positions 35..610); on a LLaVA-NeXT checkpoint use span: image"
        )


def _at_most(key: str, value: int, limit: int, what: str) -> None:
    if value > limit:
        raise ConfigError(f"key {key!r}: {value} exceeds {what}; at most {limit}")
