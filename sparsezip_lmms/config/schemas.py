"""Config schemas of the built-in methods (one pydantic model per method), and the base class of all.

A method's schema has ``method: Literal[name]`` plus its own keys; unknown keys, wrong types and
non-finite floats are refused (``MethodConfig``). SparseZip's schema is in ``sparsezip_schema``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import ConfigError

__all__ = [
    "CDPrunerConfig", "ConfigError", "DARTConfig", "KeepOrRatioConfig", "VisPrunerConfig", "layer_order_problem", "DeferrableConfig", "DivPruneConfig", "FastVConfig", "KeepAllConfig", "MethodConfig",
    "PoolConfig", "RandomKeepConfig", "ScheduleConfig", "SparseVLM2Config", "SparseVLMConfig", "VisionZipConfig",
]  # fmt: skip


def layer_order_problem(layers: list[int], depth: int | None = None, key: str = "pruning layers") -> str | None:
    """What is wrong with a list of LLM layers (negative, at or past ``depth``, not strictly increasing), or
    None: the one layer-order rule of the schedules and the pruning decoder."""
    bad = [layer for layer in layers if layer < 0 or (depth is not None and layer >= depth)]
    if bad:
        if depth is None:
            return f"{key} must be >= 0, got {layers}"
        return f"{key} {bad} do not exist in a model with {depth} layers (0..{depth - 1})"
    if any(b <= a for a, b in zip(layers, layers[1:])):
        return f"{key} must be strictly increasing, got {layers}"
    return None


class MethodConfig(BaseModel):
    """Base of every method's config schema (built-in or a user's): strict types (no silent str->int or
    float->int), unknown keys refused by name, frozen, and inf/nan refused for every float key."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class DeferrableConfig(MethodConfig):
    """Keys every vision-side method shares: where its selection takes effect."""

    prune_layer: int = Field(
        0,
        ge=0,
        description="0: the selected tokens alone enter the LLM; L > 0: all patch tokens enter the LLM and the "
        "unselected ones are dropped at the input of LLM layer L (deferred pruning)",
    )
    prune_positions: Literal["original", "contiguous"] = Field(
        "original",
        description="deferred pruning: the kept tokens keep their position ids (original) or are renumbered "
        "0..n-1 from layer L on (contiguous)",
    )


class KeepAllConfig(MethodConfig):
    """No compression: all 576 visual tokens reach the LLM (the reference for every comparison)."""

    method: Literal["none"] = "none"
    seed: int = 0


class VisionZipConfig(DeferrableConfig):
    """VisionZip (Yang et al., CVPR 2025), official conventions: ``dominant`` counts CLS."""

    method: Literal["visionzip"] = "visionzip"
    dominant: int = Field(54, ge=1, description="kept tokens including CLS")
    contextual: int = Field(10, ge=0, description="merged contextual tokens")
    dominant_ratio: float | None = Field(
        None, gt=0, le=1,
        description="Qwen2.5-VL (official): D = int(dominant_ratio * N) dominant merged tokens of an image of N; "
        "null on LLaVA, where dominant/contextual count tokens",
    )  # fmt: skip
    contextual_ratio: float | None = Field(
        None, gt=0, le=1, description="Qwen2.5-VL (official): C = max(int(contextual_ratio * N), 1) contextual tokens"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check_ratios(self) -> "VisionZipConfig":
        if (self.dominant_ratio is None) != (self.contextual_ratio is None):
            raise ValueError("keys 'dominant_ratio', 'contextual_ratio': give both (Qwen2.5-VL's budget) or neither")
        return self

    @property
    def by_ratio(self) -> bool:
        """The budget is a ratio of each image's merged tokens (Qwen2.5-VL's official VisionZip)."""
        return self.dominant_ratio is not None


class KeepOrRatioConfig(DeferrableConfig):
    """A per-image budget: ``keep`` tokens, or (Qwen2.5-VL, images of varying size) ``keep_ratio`` of each
    image's N merged tokens, ``int(round(keep_ratio * N))`` (DivPrune's rule). LLaVA refuses ``keep_ratio``."""

    keep_ratio: float | None = Field(
        None, gt=0, le=1,
        description="Qwen2.5-VL: int(round(keep_ratio * N)) of each image's N merged tokens instead of keep "
        "(null on LLaVA, where keep counts tokens)",
    )  # fmt: skip

    @model_validator(mode="after")
    def _one_budget(self) -> "KeepOrRatioConfig":
        if self.keep_ratio is not None and "keep" in self.model_fields_set:
            raise ValueError(f"keys 'keep' ({self.keep}) and 'keep_ratio' ({self.keep_ratio}) both set: give one budget")
        return self

    def budget(self, n: int) -> int:
        """Tokens kept of an image with ``n`` candidate tokens."""
        return self.keep if self.keep_ratio is None else int(round(self.keep_ratio * n))

    @property
    def by_ratio(self) -> bool:
        """The budget is a ratio of each image's merged tokens (Qwen2.5-VL)."""
        return self.keep_ratio is not None


class RandomKeepConfig(KeepOrRatioConfig):
    """Sanity baseline: keep ``keep`` patches drawn uniformly at random (seeded)."""

    method: Literal["random"] = "random"
    keep: int = Field(64, ge=1)
    seed: int = 0


class PoolConfig(KeepOrRatioConfig):
    """Sanity baseline: 2-D average pooling of the patch grid down to ``keep`` tokens."""

    method: Literal["pool"] = "pool"
    keep: int = Field(64, ge=1)
    seed: int = 0


class DivPruneConfig(DeferrableConfig):
    """DivPrune (Alvar et al., CVPR 2025): max–min diverse subset of the post-projector patch tokens.

    ``keep`` is the official budget ``int(round(ratio * N))`` written as the count (64 = ratio 1/9 of
    576 patches). Official: chosen tokens are not masked, so exact duplicates can be picked twice.
    """

    method: Literal["divprune"] = "divprune"
    keep: int = Field(64, ge=1, description="image tokens kept per image (the official int(round(ratio * N)))")
    keep_ratio: float | None = Field(
        None,
        gt=0,
        le=1,
        description="the official budget as a ratio instead of keep: int(round(keep_ratio * N)) of the N image "
        "tokens of each image (LLaVA-NeXT: its whole packed sequence, newline tokens included)",
    )
    mask_chosen: bool = Field(False, description="deviation: never pick a token twice (official: False)")
    distance_dtype: Literal["at_least_float32", "model"] = Field(
        "at_least_float32",
        description="dtype of the cosine distances and the greedy scores: at least float32 (default), or the "
        "model's own dtype as the official code runs (in bfloat16/float16 the self-distance noise makes it pick "
        "chosen tokens again: docs/ALGORITHMS.md)",
    )
    seed: int = 0

    def compute_dtype(self, features_dtype):
        """The ``torch.dtype`` that ``divprune_select`` computes in for features of ``features_dtype``
        (None: theirs, the official behaviour)."""
        import torch

        return None if self.distance_dtype == "model" else torch.promote_types(features_dtype, torch.float32)

    @model_validator(mode="after")
    def _one_budget(self) -> "DivPruneConfig":
        if self.keep_ratio is not None and "keep" in self.model_fields_set:
            raise ValueError(f"keys 'keep' ({self.keep}) and 'keep_ratio' ({self.keep_ratio}) both set: give one budget")
        return self

    def budget(self, n: int) -> int:
        """Image tokens kept of an image with ``n`` candidate tokens."""
        return self.keep if self.keep_ratio is None else int(round(self.keep_ratio * n))


class CDPrunerConfig(KeepOrRatioConfig):
    """CDPruner (Zhang et al., 2025): conditional DPP over the post-projector patch tokens, the kernel
    weighted by each patch's (negative-cosine) relevance to the question in CLIP space."""

    method: Literal["cdpruner"] = "cdpruner"
    keep: int = Field(
        64, ge=1, description="image tokens kept per image (the official visual_token_num; LLaVA-NeXT: per crop)"
    )
    next_grid: Literal["fixed_2x2", "checkpoint"] = Field(
        "fixed_2x2",
        description="LLaVA-NeXT: every image is tiled 2 x 2 (the official code forces the 672 x 672 resolution, "
        "so always 5 crops) or by the checkpoint's image_grid_pinpoints like every other method",
    )
    distinct: bool = Field(False, description="deviation: stop a degenerate DPP from picking a token twice (official: False)")
    strip_answer_format: bool = Field(
        True, description="drop the benchmark's answer-format instruction from the question, as the official scripts do"
    )
    similarity_dtype: Literal["model", "at_least_float32"] = Field(
        "model",
        description="dtype the projected tokens are normalised in before their similarity: the model's (official; "
        "bfloat16 rounds them, docs/ALGORITHMS.md) or at least float32",
    )
    seed: int = 0



class ScheduleConfig(MethodConfig):
    """Pruning layers and the visual tokens kept after each (the SparseVLM schedules)."""

    budget: int = Field(64, ge=1, description="nominal visual-token budget (label only)")
    pruning_layers: list[int] = Field(default_factory=lambda: [2, 6, 15])
    schedule: list[int] = Field(default_factory=lambda: [66, 30, 17])

    @model_validator(mode="after")
    def _check_schedule(self) -> "ScheduleConfig":
        if not self.pruning_layers:
            raise ValueError("pruning_layers is empty: nothing is pruned (for no pruning use config keep_all)")
        if len(self.pruning_layers) != len(self.schedule):
            raise ValueError(
                f"pruning_layers ({self.pruning_layers}) and schedule ({self.schedule}) must have the same length"
            )
        problem = layer_order_problem(list(self.pruning_layers), key="pruning_layers")
        if problem:
            raise ValueError(problem)
        if any(k < 1 for k in self.schedule):
            raise ValueError(f"schedule entries must be >= 1, got {self.schedule}")
        if any(b > a for a, b in zip(self.schedule, self.schedule[1:])):
            raise ValueError(
                f"schedule must not increase from one pruning layer to the next (a later layer keeps at most what "
                f"an earlier one kept), got {self.schedule}"
            )
        return self


class SparseVLMConfig(ScheduleConfig):
    """SparseVLM v1.5 (ICML code): text-guided pruning inside the LLM prefill with token recycling;
    positions renumbered 0..n-1 after each pruning layer."""

    method: Literal["sparsevlm"] = "sparsevlm"
    recycle: bool = True
    recycle_ratio: float = Field(0.3, gt=0, le=1)
    cluster_divisor: int = Field(10, ge=1)
    seed: int = 0


class SparseVLM2Config(ScheduleConfig):
    """SparseVLM v2.0 ("SparseVLM+"): RoPE-corrected rater attention, priority heads, no recycling,
    original position ids."""

    method: Literal["sparsevlm2"] = "sparsevlm2"
    schedule: list[int] = Field(default_factory=lambda: [66, 34, 20])
    priority_heads: int = Field(
        14, ge=1, description="heads kept by the largest corrected attention mass (official: 14; all heads if fewer)"
    )
    seed: int = 0


class FastVConfig(MethodConfig):
    """FastV (Chen et al., ECCV 2024): the last prompt token's head-mean attention at layer K-1 ranks the
    visual tokens; the best ``int(n_visual * ratio)`` continue from layer K's input with their original
    position ids."""

    method: Literal["fastv"] = "fastv"
    layer: int = Field(2, description="K: scored at layer K-1, pruned at layer K's input (K = 1 is refused: the official code crashes)")
    ratio: float = Field(0.5, gt=0, lt=1, description="R: int(n_visual * R) visual tokens kept")
    span: Literal["image", "fixed"] = Field(
        "image",
        description="image: score the prompt's real image span; fixed: the official hard-coded positions 35..610 "
        "(LLaVA-1.5's system prompt length), whatever the prompt",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check_layer(self) -> "FastVConfig":
        if self.layer < 2:
            raise ValueError(
                f"key 'layer': K = {self.layer}; FastV needs K >= 2 (scored at layer K-1, pruned at layer K's input; "
                "the official code crashes at K = 1, whose scoring layer is layer 0)"
            )
        return self


class DARTConfig(MethodConfig):
    """DART (Wen et al., 2025): pivots by the L1 norm of layer K-1's keys, each keeps the visual tokens least
    similar to it; pruned at layer K's input, original position ids. Kept: ``Pi + (Pi + Pt) * T`` with
    ``T = max_tokens // (Pi + Pt)`` (the official scripts' count: 64 -> 68 tokens)."""

    method: Literal["dart"] = "dart"
    layer: int = Field(2, description="K: scored on layer K-1's keys and output, pruned at layer K's input (official: 2)")
    max_tokens: int | None = Field(
        128,
        description="the official max_num_trunction M: T = M // (Pi + Pt) picks per pivot; null: T from reduction_ratio",
    )
    reduction_ratio: float = Field(
        0.778, ge=0, lt=1, description="r, used only when max_tokens is null: T = (N * (1 - r)) // (Pi + Pt)"
    )
    pivot_image: int = Field(4, ge=0, description="Pi: image pivots (top-k key L1 norm over the visual span)")
    pivot_text: int = Field(4, ge=0, description="Pt: text pivots (top-k key L1 norm over every token after the image)")
    pivot_order: Literal["set", "topk", "ascending"] = Field(
        "set",
        description="order the pivots are processed in: set (official: CPython's set iteration order), topk "
        "(image pivots then text pivots, each in top-k order) or ascending position (ablations)",
    )
    next_retain: int = Field(
        320, ge=1, description="LLaVA-NeXT: T = min(next_retain, N - Pi) // (Pi + Pt) (official retain_token_num_for_llava_next)"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "DARTConfig":
        if self.layer < 1:
            raise ValueError(
                f"key 'layer': K = {self.layer}; DART needs K >= 1 (scored on layer K-1; the official code crashes at K = 0)"
            )
        if self.pivot_image + self.pivot_text < 1:
            raise ValueError("keys 'pivot_image', 'pivot_text': DART needs at least one pivot (their sum is 0)")
        if self.max_tokens is not None and self.max_tokens < 0:
            raise ValueError(f"key 'max_tokens': {self.max_tokens} is negative")
        if self.pivot_image == 0 and self.max_tokens is not None and self.max_tokens // self.pivot_text < 1:
            raise ValueError(
                f"keys 'max_tokens', 'pivot_image': {self.max_tokens} // {self.pivot_text} = 0 picks and no image pivot: "
                "no visual token would be kept"
            )
        return self


class VisPrunerConfig(DeferrableConfig):
    """VisPruner (Zhang et al., ICCV 2025): ``int(keep * important_ratio)`` important patches by the CLS
    attention of CLIP layer -2, the rest chosen by removing duplicates (cosine similarity) from the others."""

    method: Literal["vispruner"] = "vispruner"
    keep: int = Field(64, ge=1, description="T: patches kept per image (LLaVA-NeXT: per crop, as the official code)")
    keep_ratio: float | None = Field(
        None, gt=0, le=1,
        description="instead of keep, for images of varying size (Qwen2.5-VL): T = max(1, int(round(keep_ratio * N))) of N tokens",
    )  # fmt: skip
    important_ratio: float = Field(0.5, ge=0, le=1, description="r: int(T * r) important patches, the rest diverse (official: 0.5)")
    seed: int = 0

    @model_validator(mode="after")
    def _one_budget(self) -> "VisPrunerConfig":
        if self.keep_ratio is not None and "keep" in self.model_fields_set:
            raise ValueError(f"keys 'keep' ({self.keep}) and 'keep_ratio' ({self.keep_ratio}) both set: give one budget")
        return self

    def budget(self, n: int) -> int:
        """Tokens kept of an image or crop with ``n`` tokens."""
        return self.keep if self.keep_ratio is None else max(1, int(round(self.keep_ratio * n)))
