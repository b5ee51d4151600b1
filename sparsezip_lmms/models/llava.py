"""The lmms-eval model ids. They share one implementation and differ in their configs."""

from __future__ import annotations

from .base import CompressedLlava


class LlavaHfTimed(CompressedLlava):
    """Uncompressed LLaVA with exactly the instrumentation of the compressed models."""

    model_id = "llava_hf_timed"
    default_config = "keep_all"
    accepted_methods = ("none",)


class LlavaVisionZip(CompressedLlava):
    """VisionZip: text-agnostic dominant + contextual tokens chosen in the vision encoder."""

    model_id = "llava_visionzip"
    default_config = "visionzip_64"
    accepted_methods = ("visionzip", "none")


class LlavaSparseZip(CompressedLlava):
    """SparseZip: text-aware hybrid scoring, dynamic-K and hierarchical merging before the LLM.

    Also runs the sanity baselines (``random``, ``pool``) and ``keep_all``.
    """

    model_id = "llava_sparsezip"
    default_config = "sparsezip_64"
    accepted_methods = ("sparsezip", "random", "pool", "none")


class LlavaSparseVLM(CompressedLlava):
    """SparseVLM: text-guided pruning of visual tokens inside the LLM prefill (v1.5 by default; v2.0 with
    the ``sparsevlm2_*`` configs)."""

    model_id = "llava_sparsevlm"
    default_config = "sparsevlm_64"
    accepted_methods = ("sparsevlm", "sparsevlm2", "none")


class LlavaFastV(CompressedLlava):
    """FastV: the last prompt token's attention at layer K-1 prunes the visual tokens from layer K on."""

    model_id = "llava_fastv"
    default_config = "fastv_default"
    accepted_methods = ("fastv", "none")


class LlavaDivPrune(CompressedLlava):
    """DivPrune: max–min diverse subset of the projected patch tokens, before the LLM (text-agnostic)."""

    model_id = "llava_divprune"
    default_config = "divprune_64"
    accepted_methods = ("divprune", "none")


class LlavaCDPruner(CompressedLlava):
    """CDPruner: conditional DPP over the projected patch tokens, weighted by CLIP question relevance.

    The CLIP text tower comes from ``clip_text_tower`` (default ``openai/clip-vit-large-patch14-336``).
    """

    model_id = "llava_cdpruner"
    default_config = "cdpruner_64"
    accepted_methods = ("cdpruner", "none")
