"""The lmms-eval model ids. They share one implementation and differ in their default config and in the
methods they accept: a dedicated id accepts the methods whose ``MethodSpec.model_ids`` name it, the
generic ``llava_compressed`` every registered method."""

from __future__ import annotations

from .base import CompressedLlava


class LlavaHfTimed(CompressedLlava):
    """Uncompressed LLaVA with exactly the instrumentation of the compressed models."""

    model_id = "llava_hf_timed"
    default_config = "keep_all"


class LlavaVisionZip(CompressedLlava):
    """VisionZip: text-agnostic dominant + contextual tokens chosen in the vision encoder."""

    model_id = "llava_visionzip"
    default_config = "visionzip_64"


class LlavaSparseZip(CompressedLlava):
    """SparseZip: text-aware hybrid scoring, dynamic-K and hierarchical merging before the LLM.

    Also runs the sanity baselines (``random``, ``pool``) and ``keep_all``.
    """

    model_id = "llava_sparsezip"
    default_config = "sparsezip_64"


class LlavaSparseVLM(CompressedLlava):
    """SparseVLM: text-guided pruning of visual tokens inside the LLM prefill (v1.5 by default; v2.0 with
    the ``sparsevlm2_*`` configs)."""

    model_id = "llava_sparsevlm"
    default_config = "sparsevlm_64"


class LlavaFastV(CompressedLlava):
    """FastV: the last prompt token's attention at layer K-1 prunes the visual tokens from layer K on."""

    model_id = "llava_fastv"
    default_config = "fastv_default"


class LlavaDivPrune(CompressedLlava):
    """DivPrune: max–min diverse subset of the projected patch tokens, before the LLM (text-agnostic)."""

    model_id = "llava_divprune"
    default_config = "divprune_64"


class LlavaCDPruner(CompressedLlava):
    """CDPruner: conditional DPP over the projected patch tokens, weighted by CLIP question relevance.

    The CLIP text tower comes from ``clip_text_tower`` (default ``openai/clip-vit-large-patch14-336``).
    """

    model_id = "llava_cdpruner"
    default_config = "cdpruner_64"


class LlavaDART(CompressedLlava):
    """DART: pivot tokens (largest key L1 norm at layer K-1) keep the visual tokens least similar to them,
    from layer K on (official scripts' settings: ``dart_64`` / ``dart_128`` / ``dart_192``)."""

    model_id = "llava_dart"
    default_config = "dart_64"


class LlavaVisPruner(CompressedLlava):
    """VisPruner: important patches by CLIP's CLS attention plus diverse ones (duplicates removed), before
    the LLM."""

    model_id = "llava_vispruner"
    default_config = "vispruner_64"


class LlavaCompressed(CompressedLlava):
    """Any registered method, built-in or a user's, chosen by ``config=`` (a name or a YAML path whose
    ``method`` names it): ``--model llava_compressed --model_args pretrained=...,config=my_method.yaml``."""

    model_id = "llava_compressed"
    default_config = None
    generic = True
