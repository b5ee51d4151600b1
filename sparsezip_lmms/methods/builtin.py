"""The built-in methods, each one ``MethodSpec``. They are registered through the entry-point group
``sparsezip_lmms.methods`` (this package's ``pyproject.toml``), the same path a user's method takes."""

from __future__ import annotations


import torch
from torch import Tensor

from ..compress.baselines import keep_all, pool, random_keep
from ..compress.cdpruner import cdpruner_relevance, cdpruner_select
from ..compress.dtypes import at_least_float32
from ..compress.dart import DartRule
from ..compress.divprune import divprune_select, divprune_select_ragged
from ..compress.in_llm import FastVRule, SparseVLM2Rule, SparseVLMRule
from ..compress.sparsezip import sparsezip
from ..compress.types import Compressed
from ..compress.visionzip import visionzip
from ..compress.vispruner import vispruner_select
from ..config.schemas import (
    CDPrunerConfig, DARTConfig, DivPruneConfig, FastVConfig, KeepAllConfig, PoolConfig, RandomKeepConfig,
    SparseVLM2Config, SparseVLMConfig, VisionZipConfig, VisPrunerConfig,
)  # fmt: skip
from ..config.sparsezip_schema import SparseZipConfig
from . import builtin_checks as checks
from .builtin_flops import cdpruner_flops, divprune_flops, sparsezip_flops, visionzip_flops, vispruner_flops
from .spec import MethodSpec, ProjectedInputs, VisionInputs

__all__ = [
    "CDPRUNER", "DART", "DIVPRUNE", "FASTV", "VISPRUNER", "KEEP_ALL", "POOL", "RANDOM", "SPARSEVLM", "SPARSEVLM2", "SPARSEZIP", "VISIONZIP",
]  # fmt: skip

# ---------------------------------------------------------------------------------------- vision stage


def _keep_all(inputs: VisionInputs, config: KeepAllConfig) -> Compressed:
    return keep_all(inputs.hidden)


def _visionzip(inputs: VisionInputs, config: VisionZipConfig) -> Compressed:
    if config.by_ratio:
        raise ValueError("dominant_ratio/contextual_ratio are Qwen2.5-VL's VisionZip budget; LLaVA's counts tokens")
    return visionzip(inputs.hidden, inputs.cls_attn, inputs.keys, config.dominant, config.contextual)


def _llava_counts(config, key: str) -> None:
    """Qwen2.5-VL's per-image budget keys are refused on LLaVA, where the counts are tokens of every image."""
    if getattr(config, key, None) is not None:
        raise ValueError(f"key {key!r} is Qwen2.5-VL's per-image budget; on LLaVA the config counts tokens")


def _sparsezip(inputs: VisionInputs, config: SparseZipConfig) -> Compressed:
    _llava_counts(config, "reference_tokens")
    return sparsezip(inputs.hidden, inputs.cls_attn, inputs.keys, config, inputs.text_relevance, groups=inputs.groups)


def _random(inputs: VisionInputs, config: RandomKeepConfig) -> Compressed:
    """With image keys each image's draw depends only on the seed and its key (batch-invariant); without,
    one seeded draw for the whole batch."""
    _llava_counts(config, "keep_ratio")
    if inputs.image_keys is not None:
        return random_keep(inputs.hidden, config.keep, keys=inputs.image_keys, seed=config.seed)
    return random_keep(inputs.hidden, config.keep, torch.Generator().manual_seed(config.seed))


def _pool(inputs: VisionInputs, config: PoolConfig) -> Compressed:
    _llava_counts(config, "keep_ratio")
    return pool(inputs.hidden, config.keep)


def _vispruner(inputs: VisionInputs, config: VisPrunerConfig) -> Compressed:
    """The kept patches (CLS dropped, as the official ``select_feature: patch``), in ascending order."""
    hidden = inputs.hidden  # [B, 1+N, C]
    tokens = config.budget(hidden.shape[1] - 1)
    kept = vispruner_select(hidden[:, 1:], inputs.cls_attn[:, :, 1:], tokens, config.important_ratio) + 1  # [B, T]
    tokens = hidden.gather(1, kept[..., None].expand(-1, -1, hidden.shape[-1]))  # [B, T, C]
    return Compressed(tokens=tokens, valid=torch.ones_like(kept, dtype=torch.bool), index=kept)


def _sparsezip_inputs(config: SparseZipConfig) -> frozenset[str]:
    return frozenset({"scoring", "question"} if config.cross_beta > 0 else {"scoring"})


# ------------------------------------------------------------------------------------- projected stage


def _divprune(inputs: ProjectedInputs, config: DivPruneConfig) -> Tensor:
    """``config.budget(L)`` of each row's L tokens (-1 past a row's budget when the rows differ)."""
    features, valid = inputs.projected, inputs.valid  # [B, N, D], [B, N]
    dtype = config.compute_dtype(features.dtype)
    if inputs.hidden is not None:  # every row holds the N patches of one image or crop
        return divprune_select(features, config.budget(features.shape[1]), mask_chosen=config.mask_chosen, compute_dtype=dtype)
    lengths = valid.sum(dim=1)  # [B]
    budgets = torch.tensor([config.budget(int(n)) for n in lengths.tolist()], device=features.device)  # [B]
    if bool((budgets >= lengths).any()):
        raise ValueError(
            f"divprune budget {budgets.tolist()} is not below the packed sequence's {lengths.tolist()} tokens: "
            "nothing would be pruned"
        )
    return divprune_select_ragged(features, valid, budgets, mask_chosen=config.mask_chosen, compute_dtype=dtype)


def _cdpruner(inputs: ProjectedInputs, config: CDPrunerConfig) -> Tensor:
    """The DPP over each row's patches; with ``groups`` (LLaVA-NeXT crops) the relevance min–max is taken
    jointly over the crops of one image, as the official code does."""
    _llava_counts(config, "keep_ratio")
    if inputs.clip_patches is None or inputs.clip_question is None:
        raise ValueError("cdpruner needs the CLIP patch embeds and the question's CLIP text embeds")
    embeds = inputs.clip_patches  # [B, N, P]
    text, text_mask = inputs.clip_question  # [B, M, P], [B, M]
    if inputs.groups is None:
        relevance = cdpruner_relevance(embeds, text.to(embeds.dtype), text_mask=text_mask)  # [B, N]
    else:
        relevance = cdpruner_relevance(embeds, text.to(embeds.dtype), joint=True, text_mask=text_mask, groups=inputs.groups)
    normalize = None if config.similarity_dtype == "model" else at_least_float32(inputs.projected.dtype)
    return cdpruner_select(inputs.projected, relevance, config.keep, distinct=config.distinct, normalize_dtype=normalize)


# ------------------------------------------------------------------------------------------- llm stage


def _sparsevlm_rule(config: SparseVLMConfig) -> SparseVLMRule:
    return SparseVLMRule(
        tuple(config.pruning_layers), tuple(config.schedule), config.recycle, config.recycle_ratio, config.cluster_divisor
    )


def _sparsevlm2_rule(config: SparseVLM2Config) -> SparseVLM2Rule:
    return SparseVLM2Rule(tuple(config.pruning_layers), tuple(config.schedule), config.priority_heads)


def _fastv_rule(config: FastVConfig) -> FastVRule:
    return FastVRule(config.layer, config.ratio, config.span == "fixed")


def _dart_rule(config: DARTConfig) -> DartRule:
    return DartRule(
        config.layer, config.max_tokens, config.reduction_ratio, config.pivot_image, config.pivot_text,
        config.pivot_order, config.next_retain,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------- the specs

_DEDICATED = (
    "llava_hf_timed", "llava_visionzip", "llava_sparsezip", "llava_sparsevlm", "llava_fastv", "llava_divprune", "llava_cdpruner",
    "llava_dart", "llava_vispruner",
)  # fmt: skip
_QWEN_DEDICATED = (
    "qwen2_5_vl_hf_timed", "qwen2_5_vl_visionzip", "qwen2_5_vl_divprune", "qwen2_5_vl_vispruner", "qwen2_5_vl_dart",
    "qwen2_5_vl_fastv", "qwen2_5_vl_sparsevlm", "qwen2_5_vl_sparsezip", "qwen2_5_vl_cdpruner",
)  # fmt: skip
_LLAVA_ONLY = ("llava", "llava_next")  # methods the Qwen2.5-VL path does not run

KEEP_ALL = MethodSpec(
    "none", KeepAllConfig, "stock", select=_keep_all, model_ids=_DEDICATED + _QWEN_DEDICATED,
    description="no compression: every visual token reaches the LLM (the reference of every comparison)",
)  # fmt: skip
VISIONZIP = MethodSpec(
    "visionzip", VisionZipConfig, "vision", select=_visionzip, inputs=frozenset({"scoring"}),
    model_ids=("llava_visionzip", "qwen2_5_vl_visionzip"), max_tokens=checks.visionzip_max, check=checks.check_visionzip, flops=visionzip_flops,
    description="VisionZip (Yang et al., CVPR 2025): dominant tokens by CLS attention + merged contextual tokens",
)  # fmt: skip
SPARSEZIP = MethodSpec(
    "sparsezip", SparseZipConfig, "vision", select=_sparsezip, inputs=_sparsezip_inputs,
    model_ids=("llava_sparsezip", "qwen2_5_vl_sparsezip"), max_tokens=checks.sparsezip_max, check=checks.check_sparsezip, flops=sparsezip_flops,
    description="SparseZip: hybrid (text-aware) scoring, dynamic K, hierarchical merging",
)  # fmt: skip
RANDOM = MethodSpec(
    "random", RandomKeepConfig, "vision", select=_random, inputs=frozenset({"image_keys"}),
    model_ids=("llava_sparsezip", "qwen2_5_vl_sparsezip"), max_tokens=checks.keep_max, check=checks.check_keep,
    description="sanity baseline: keep patches drawn uniformly at random (seeded)",
)  # fmt: skip
POOL = MethodSpec(
    "pool", PoolConfig, "vision", select=_pool, model_ids=("llava_sparsezip", "qwen2_5_vl_sparsezip"), max_tokens=checks.keep_max,
    check=checks.check_keep, description="sanity baseline: 2-D average pooling of the patch grid",
)  # fmt: skip
DIVPRUNE = MethodSpec(
    "divprune", DivPruneConfig, "projected", select=_divprune, model_ids=("llava_divprune", "qwen2_5_vl_divprune"),
    max_tokens=checks.divprune_max, check=checks.divprune_check, flops=divprune_flops, next_candidates="packed",
    description="DivPrune (Alvar et al., CVPR 2025): max–min diverse subset of the projected patch tokens",
)  # fmt: skip
CDPRUNER = MethodSpec(
    "cdpruner", CDPrunerConfig, "projected", select=_cdpruner, inputs=frozenset({"clip_text"}),
    model_ids=("llava_cdpruner", "qwen2_5_vl_cdpruner"), max_tokens=checks.cdpruner_max, check=checks.check_keep, flops=cdpruner_flops,
    description="CDPruner (Zhang et al., 2025): conditional DPP weighted by question relevance (LLaVA: CLIP; Qwen: LLM embeds)",
)  # fmt: skip
SPARSEVLM = MethodSpec(
    "sparsevlm", SparseVLMConfig, "llm", rule=_sparsevlm_rule, model_ids=("llava_sparsevlm", "qwen2_5_vl_sparsevlm"),
    check=checks.check_schedule, description="SparseVLM v1.5: text-guided pruning in the LLM prefill with recycling",
)  # fmt: skip
SPARSEVLM2 = MethodSpec(
    "sparsevlm2", SparseVLM2Config, "llm", rule=_sparsevlm2_rule, model_ids=("llava_sparsevlm", "qwen2_5_vl_sparsevlm"),
    check=checks.check_schedule, description="SparseVLM v2.0: RoPE-corrected rater attention, priority heads",
)  # fmt: skip
FASTV = MethodSpec(
    "fastv", FastVConfig, "llm", rule=_fastv_rule, model_ids=("llava_fastv", "qwen2_5_vl_fastv"), check=checks.check_fastv,
    description="FastV (Chen et al., ECCV 2024): the last prompt token's attention at layer K-1 prunes from layer K",
)  # fmt: skip
DART = MethodSpec(
    "dart", DARTConfig, "llm", rule=_dart_rule, model_ids=("llava_dart", "qwen2_5_vl_dart"), max_tokens=checks.dart_max,
    check=checks.check_dart, budget_note=checks.dart_budget_note,
    description="DART (Wen et al., 2025): pivots by key L1 norm at layer K-1 keep the tokens least similar to them",
)  # fmt: skip
VISPRUNER = MethodSpec(
    "vispruner", VisPrunerConfig, "vision", select=_vispruner, inputs=frozenset({"scoring"}),
    model_ids=("llava_vispruner", "qwen2_5_vl_vispruner"), max_tokens=checks.vispruner_max, check=checks.check_vispruner, flops=vispruner_flops,
    description="VisPruner (Zhang et al., ICCV 2025): important patches by CLS attention + duplicates removed from the rest",
)  # fmt: skip
