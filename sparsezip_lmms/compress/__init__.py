"""Training-free visual-token compression on CLIP feature-layer outputs (pure tensor code).

Inputs of every method (see ``docs/ALGORITHMS.md``):

* ``hidden``   ``[B, 1+N, C]``  CLIP layer −2 hidden states, CLS at position 0;
* ``cls_attn`` ``[B, H, 1+N]``  that layer's CLS-row attention probabilities, per head;
* ``keys``     ``[B, 1+N, Ck]`` that layer's key projections averaged over heads.

Every method returns a :class:`Compressed` (``tokens`` [B, T, C], ``valid`` [B, T], ``index`` [B, T]).
:func:`sparsezip_lmms.llava.scoring_inputs` captures the three inputs from a CLIP vision tower.
"""

from __future__ import annotations

from torch import Tensor

from ..methods.registry import method_of
from ..methods.spec import VisionInputs
from .baselines import image_keys, keep_all, pool, pool_grid, random_keep
from .cdpruner import cdpruner_relevance, cdpruner_select
from .divprune import divprune_select
from .sparsezip import SparseZipTrace, dynamic_k, fit_dynamic_k, hybrid_scores, hybrid_terms, sparsezip, sparsezip_trace
from .text import PullBack, projector_pull_back, seed_key_relevance, seed_zscore, text_relevance, zscore
from .types import Compressed
from .visionzip import visionzip
from .vispruner import vispruner_select

__all__ = [
    "Compressed",
    "cdpruner_relevance",
    "cdpruner_select",
    "divprune_select",
    "compress",
    "dynamic_k",
    "fit_dynamic_k",
    "hybrid_scores",
    "hybrid_terms",
    "image_keys",
    "keep_all",
    "needs_scoring_inputs",
    "needs_text",
    "selects_after_projector",
    "pool",
    "pool_grid",
    "random_keep",
    "sparsezip",
    "sparsezip_trace",
    "SparseZipTrace",
    "seed_key_relevance",
    "seed_zscore",
    "text_relevance",
    "PullBack",
    "projector_pull_back",
    "visionzip",
    "vispruner_select",
    "zscore",
]


def needs_scoring_inputs(config: object) -> bool:
    """True when :func:`compress` needs ``cls_attn`` and ``keys`` for this config."""
    return method_of(config).needs("scoring", config)


def selects_after_projector(config: object) -> bool:
    """True for the methods that select among the projected (LLM-side) patch tokens (stage "projected")."""
    return method_of(config).stage == "projected"


def needs_text(config: object) -> bool:
    """True when :func:`compress` uses ``text_relevance`` for this config."""
    return method_of(config).needs("question", config)


def compress(
    hidden: Tensor,
    cls_attn: Tensor | None,
    keys: Tensor | None,
    config: object,
    text_relevance: Tensor | None = None,
    image_keys: Tensor | None = None,
    groups: Tensor | None = None,
) -> Compressed:
    """Apply the vision-stage method a :func:`sparsezip_lmms.config.load_config` config selects.

    ``image_keys`` [B] (``image_keys(pixel_values)``): with ``random``, each image's draw depends only on
    the config's seed and its key (batch-invariant); without, one seeded draw for the whole batch.
    ``groups`` [B] long: ``sparsezip`` rows sharing an id share one budget (``sparsezip(groups=)``);
    the other methods ignore it.

    ``none`` → the N patch tokens (no CLS), ``random``/``pool`` → ``keep`` patch-level tokens (no CLS);
    ``visionzip``/``sparsezip`` → CLS + dominant patches + contextual tokens (CLS counted in
    ``dominant``). ``cls_attn``/``keys`` may be None for methods that do not score
    (:func:`needs_scoring_inputs`). Methods of the other stages are refused.
    """
    spec = method_of(config)
    if spec.stage == "llm":
        raise ValueError(f"config: method {config.method!r} prunes inside the LLM prefill, not on the vision tower output")
    if spec.stage == "projected":
        raise ValueError(
            f"config: method {config.method!r} selects among the projected tokens (its MethodSpec.select with "
            "ProjectedInputs, or llava.features.image_tokens), not on the vision tower output"
        )
    inputs = VisionInputs(hidden, cls_attn, keys, text_relevance, image_keys, groups)
    return spec.select(inputs, config)
