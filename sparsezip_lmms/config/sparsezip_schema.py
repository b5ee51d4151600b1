"""The config schema of SparseZip (hybrid scoring, dynamic K, hierarchical merging)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .schemas import DeferrableConfig, MethodConfig

__all__ = ["DynamicKConfig", "HybridWeights", "MergingConfig", "SparseZipConfig"]


class DynamicKConfig(MethodConfig):
    """K = round(scale * log(Var(scores) + eps) + c), clamped to [k_min, k_max].

    Defaults match ``sparsezip_64`` (K in [32, 54]); ``scale: 1`` gives the unscaled formula, whose
    K moves by only a token or two across images (see docs/ALGORITHMS.md).
    """

    c: float = Field(77.1, description="offset; with scale 1 and c 10 this is the original formula")
    eps: float = Field(1e-3, gt=0)
    scale: float = Field(11.0, ge=0, description="multiplies log(Var + eps); 1.0 is the original formula")
    source: Literal["visual", "ranking"] = Field(
        "visual",
        description="score whose variance sets K: 'visual' = the hybrid visual score without the text term "
        "(this package); 'ranking' = the score that ranks the patches, text term and skip_hybrid_attn included (seed)",
    )
    widen_to_dominant: bool = Field(
        False,
        description="seed rule: the bounds become [min(k_min, dominant), max(k_max, dominant)] (this package: "
        "[k_min, k_max])",
    )


# Weights of score terms whose z-scores are O(1): beyond this the other terms fall below float32
# rounding, and at 1e308 the scores overflow to inf.
_MAX_WEIGHT = 1e4


class HybridWeights(MethodConfig):
    attn: float = Field(1.0, ge=-_MAX_WEIGHT, le=_MAX_WEIGHT)
    entropy: float = Field(0.6, ge=-_MAX_WEIGHT, le=_MAX_WEIGHT)
    mutual: float = Field(0.8, ge=-_MAX_WEIGHT, le=_MAX_WEIGHT)


class MergingConfig(MethodConfig):
    contextual_num: int = Field(10, ge=0, description="contextual (merged) tokens per image")
    kmeans_init_factor: float = Field(2.0, ge=1.0, description="k-means++ seeds = factor * contextual_num")
    kmeans_iters: int = Field(10, ge=0, description="Lloyd iterations")
    agglomerative: bool = Field(False, description="reduce the k-means clusters to contextual_num agglomeratively")
    weighting: Literal["score", "mean"] = Field(
        "score", description="contextual token = score-weighted mean of its members' hidden states, or the plain mean (seed)"
    )
    seeds: Literal["budget", "factor"] = Field(
        "budget",
        description="k-means++ seeds: 'budget' = contextual_num, ceil(factor * contextual_num) only with agglomerative "
        "(this package); 'factor' = min(max(C, ceil(factor * C)), remaining) always, and without agglomerative the "
        "clusters numbered >= C are dropped with their tokens (seed)",
    )
    linkage: Literal["average", "midpoint"] = Field(
        "average",
        description="agglomerative reduction: average linkage on cosine distance, tokens follow their centre "
        "(this package); or the seed's rule: replace the most cosine-similar centre pair by its midpoint, "
        "appended last, then re-assign every token to the nearest surviving centre",
    )
    order: Literal["position", "cluster"] = Field(
        "position",
        description="contextual tokens ordered by their first member's position, or by cluster id (k-means++ draw "
        "order; agglomerative: survivors, then merged centres in merge order) as the seed",
    )
    empty: Literal["keep", "reseed"] = Field(
        "keep", description="a centre emptied in a Lloyd step keeps its position, or is re-seeded on a uniformly drawn token (seed)"
    )
    empty_token: Literal["drop", "zero"] = Field(
        "drop", description="an empty contextual cluster gives no token, or a zero token (seed: always C contextual tokens)"
    )


class SparseZipConfig(DeferrableConfig):
    """SparseZip: hybrid (text-aware) scoring, dynamic-K dominant tokens, hierarchical merging.

    Defaults are this package's method; ``model_configs/sparsezip_seed_*.yaml`` set the keys that reproduce
    the seed's executed code (W1nd55/VisionZip-exp 7a86f65), see docs/ALGORITHMS.md.
    """

    method: Literal["sparsezip"] = "sparsezip"
    dominant: int = Field(54, ge=1, description="dominant tokens when dynamic-K is off (CLS counted iff k_counts_cls)")
    k_min: int = Field(32, ge=1, description="dynamic-K lower bound (CLS counted iff k_counts_cls)")
    k_max: int = Field(54, ge=1, description="dynamic-K upper bound (CLS counted iff k_counts_cls)")
    k_counts_cls: bool = Field(
        True,
        description="K, dominant, k_min, k_max count CLS (VisionZip's convention, this package): output K + C tokens; "
        "false: they count patches only (seed): output 1 + K + C tokens",
    )
    dynk: DynamicKConfig = DynamicKConfig()
    alphas: HybridWeights = HybridWeights()
    tau_feat: float = Field(0.15, gt=0)
    tau_sim: float = Field(0.08, gt=0)
    entropy_keys: Literal["unit", "raw"] = Field(
        "unit",
        description="feature entropy over the channels of the unit keys (this package: scale-free), or of the raw "
        "keys (seed: the key norm acts as an inverse temperature)",
    )
    score_norm: Literal["minmax", "zscore"] = Field(
        "minmax",
        description="per-image normalisation of each hybrid term: min-max to [0, 1] (this package), or the seed's "
        "z-score (x - mean) / (unbiased std + 1e-12), which then also z-scores the text relevance",
    )
    cross_beta: float = Field(0.0, ge=0, le=_MAX_WEIGHT, description="weight of the text-relevance z-score")
    text_weight: Literal["relative", "absolute"] = Field(
        "relative",
        description="'relative': the text term is cross_beta * std(visual score) * zscore(relevance), so its spread "
        "is cross_beta times the visual score's spread; 'absolute' (seed): cross_beta * zscore(relevance)",
    )
    text_space: Literal["vision", "llm"] = Field(
        "vision",
        description="projector question relevance: pull-back to CLIP space, or push-forward to LLM space",
    )
    text_source: Literal["projector", "seed_keys"] = Field(
        "projector",
        description="question relevance from the LLaVA projector (text_space), or 'seed_keys' (seed, reproduction "
        "only, not meaningful): mean LLM question embedding, normalised, cut to its first Ck dims, dot the unit CLIP keys",
    )
    key_float32: bool = Field(
        False,
        description="entropy, mutual information and clustering decisions in float32 whatever the input dtype, as "
        "the seed's key.float() (this package: float32, or float64 for float64 inputs)",
    )
    merge: Literal["kmeans", "visionzip", "none"] = Field(
        "kmeans", description="contextual merge: k-means on the unit keys, VisionZip's merge, or no contextual tokens"
    )
    merging: MergingConfig = MergingConfig()
    next_budget: Literal["per_crop", "per_image"] = Field(
        "per_crop",
        description="LLaVA-NeXT: every crop (base view, tiles) its own dynamic K, or one K per image from the "
        "scores pooled over its crops, its crops x K dominant tokens ranked jointly across them (LLaVA-1.5: the same)",
    )
    reference_tokens: int | None = Field(
        None, ge=1,
        description="Qwen2.5-VL: the token counts (dominant, k_min, k_max, merging.contextual_num, dynk.c, dynk.scale) "
        "are for an image of this many merged tokens; an image of N gets them scaled by N / reference_tokens "
        "(null on LLaVA, where they count tokens of every image)",
    )  # fmt: skip
    skip_hybrid_attn: bool = Field(False, description="score = CLS attention only")
    skip_dynamic_k: bool = Field(False, description="use the fixed `dominant` instead of dynamic-K")
    skip_ctx_merge: bool = Field(
        False,
        description="the seed's switch: contextual tokens by VisionZip's merge instead of `merge` (for no contextual "
        "tokens use merge: none)",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check_bounds(self) -> "SparseZipConfig":
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) must not exceed k_max ({self.k_max})")
        return self

    @property
    def by_ratio(self) -> bool:
        """The counts are per ``reference_tokens`` merged tokens, scaled to each image (Qwen2.5-VL)."""
        return self.reference_tokens is not None
