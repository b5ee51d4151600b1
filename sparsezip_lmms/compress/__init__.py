"""Training-free visual-token compression on CLIP feature-layer outputs (pure tensor code).

Inputs of every method (see ``docs/ALGORITHMS.md``):

* ``hidden``   ``[B, 1+N, C]``  CLIP layer −2 hidden states, CLS at position 0;
* ``cls_attn`` ``[B, H, 1+N]``  that layer's CLS-row attention probabilities, per head;
* ``keys``     ``[B, 1+N, Ck]`` that layer's key projections averaged over heads.

Every method returns a :class:`Compressed` (``tokens`` [B, T, C], ``valid`` [B, T], ``index`` [B, T]).
:func:`sparsezip_lmms.llava.scoring_inputs` captures the three inputs from a CLIP vision tower.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import IN_LLM_METHODS, KeepAllConfig, PoolConfig, RandomKeepConfig, SparseZipConfig, VisionZipConfig
from .baselines import image_keys, keep_all, pool, pool_grid, random_keep
from .cdpruner import cdpruner_relevance, cdpruner_select
from .divprune import divprune_select
from .sparsezip import SparseZipTrace, dynamic_k, fit_dynamic_k, hybrid_scores, hybrid_terms, sparsezip, sparsezip_trace
from .text import PullBack, projector_pull_back, seed_key_relevance, seed_zscore, text_relevance, zscore
from .types import Compressed
from .visionzip import visionzip

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
    "zscore",
]


def needs_scoring_inputs(config: object) -> bool:
    """True when :func:`compress` needs ``cls_attn`` and ``keys`` for this config."""
    return isinstance(config, (VisionZipConfig, SparseZipConfig))


def selects_after_projector(config: object) -> bool:
    """True for the methods that select among the projected (LLM-side) patch tokens: DivPrune, CDPruner."""
    return getattr(config, "method", None) in ("divprune", "cdpruner")


def needs_text(config: object) -> bool:
    """True when :func:`compress` uses ``text_relevance`` for this config."""
    return isinstance(config, SparseZipConfig) and config.cross_beta > 0


def compress(
    hidden: Tensor,
    cls_attn: Tensor | None,
    keys: Tensor | None,
    config: object,
    text_relevance: Tensor | None = None,
    image_keys: Tensor | None = None,
    groups: Tensor | None = None,
) -> Compressed:
    """Apply the method a :func:`sparsezip_lmms.config.load_config` config selects.

    ``image_keys`` [B] (``image_keys(pixel_values)``): with ``random``, each image's draw depends only on
    the config's seed and its key (batch-invariant); without, one seeded draw for the whole batch.
    ``groups`` [B] long: ``sparsezip`` rows sharing an id share one budget (``sparsezip(groups=)``);
    the other methods ignore it.

    ``none`` → the N patch tokens (no CLS), ``random``/``pool`` → ``keep`` patch-level tokens (no CLS);
    ``visionzip``/``sparsezip`` → CLS + dominant patches + contextual tokens (CLS counted in
    ``dominant``). ``cls_attn``/``keys`` may be None for methods that do not score
    (:func:`needs_scoring_inputs`). ``sparsevlm`` prunes inside the LLM and is rejected here.
    """
    if isinstance(config, KeepAllConfig):
        return keep_all(hidden)
    if isinstance(config, VisionZipConfig):
        return visionzip(hidden, cls_attn, keys, config.dominant, config.contextual)
    if isinstance(config, SparseZipConfig):
        return sparsezip(hidden, cls_attn, keys, config, text_relevance, groups=groups)
    if isinstance(config, RandomKeepConfig):
        if image_keys is not None:
            return random_keep(hidden, config.keep, keys=image_keys, seed=config.seed)
        return random_keep(hidden, config.keep, torch.Generator().manual_seed(config.seed))
    if isinstance(config, PoolConfig):
        return pool(hidden, config.keep)
    if getattr(config, "method", None) in IN_LLM_METHODS:
        raise ValueError(f"config: method {config.method!r} prunes inside the LLM prefill, not on the vision tower output")
    if selects_after_projector(config):
        raise ValueError(
            f"config: method {config.method!r} selects among the projected tokens (divprune_select / "
            "cdpruner_select, or llava.features.image_tokens), not on the vision tower output"
        )
    raise ValueError(f"config must be a compression config from load_config, got {type(config).__name__}")
