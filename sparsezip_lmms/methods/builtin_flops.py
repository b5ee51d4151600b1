"""FLOP counts of the built-in methods' own work (``MethodSpec.flops``), dominant terms only.

One multiply-add is one FLOP, as in ``efficiency.flops``. ``work`` is an ``efficiency.flops.MethodWork``:
the vision-tower passes of the request (``n_images``), the checkpoint's sizes (``dims``) and what the
method read. The projector on every patch, which the ``"projected"`` methods need, is counted in the
vision FLOPs, not here.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["cdpruner_flops", "divprune_flops", "sparsezip_flops", "visionzip_flops", "vispruner_flops"]


def _capture(work: Any) -> int:
    """The scoring-input capture: it recomputes the feature layer's projections it reads: the queries of
    all 1+N tokens, of which the CLS row is kept ((1+N)·c·c: a whole-batch product rounds the same at any
    batch size), and the keys of all 1+N tokens ((1+N)·c·c), then the CLS row against them ((1+N)·c)."""
    n, c = work.dims.vision_tokens - 1, work.dims.vision_width
    return 2 * (n + 1) * c * c + (n + 1) * c


def divprune_flops(config: Any, work: Any) -> int:
    """The L x L cosine distances of the candidates, then one running-min update of L entries per pick."""
    n = work.dims.vision_tokens - 1
    lengths = work.candidates if work.candidates is not None else [n] * work.n_images
    return sum(length * length * work.dims.llm_width + config.budget(length) * length for length in lengths)


def cdpruner_flops(config: Any, work: Any) -> int:
    """Per pass: the N x N similarity of the projected patches, the patch embeds (visual_projection),
    their cosine with the question, the kernel, and the greedy MAP (step t updates N entries against t
    earlier vectors); plus the CLIP text tower on the question."""
    dims = work.dims
    n, c = dims.vision_tokens - 1, dims.vision_width
    d, k, p = dims.llm_width, config.keep, dims.clip_projection or c
    per_image = n * n * d + n * c * p + n * p + n * n + n * k * (k + 1) // 2
    return work.n_images * per_image + work.clip_text_flops


def visionzip_flops(config: Any, work: Any) -> int:
    """The capture, then every remaining token against the contextual targets."""
    dims = work.dims
    n, ck = dims.vision_tokens - 1, dims.vision_width // dims.vision_heads
    remaining = n - (config.dominant - 1)
    return work.n_images * (_capture(work) + remaining * config.contextual * ck)


def sparsezip_flops(config: Any, work: Any) -> int:
    """The capture, the hybrid score's mutual-information term, the question relevance, and the merge."""
    dims, text_tokens = work.dims, work.text_tokens
    n, c = dims.vision_tokens - 1, dims.vision_width
    ck = c // dims.vision_heads  # width of the head-averaged keys
    per_image = _capture(work)
    source_visual = config.dynk.source == "visual"
    if not config.skip_hybrid_attn or (not config.skip_dynamic_k and source_visual):
        # cosine similarities of the mutual-information term: the hybrid score runs whenever it ranks the
        # patches or dynamic K reads it (dynk.source visual)
        per_image += n * n * ck
    if config.cross_beta > 0 and text_tokens:
        if config.text_source == "seed_keys":
            # mean of the question embeddings, then its first Ck dims against every unit key
            per_image += text_tokens * dims.llm_width + (n + 1) * ck
        elif config.text_space == "vision":
            # question -> CLIP space through the folded (W2·W1)ᵀ (made once per model), then cosine with every patch
            per_image += text_tokens * dims.llm_width * c + text_tokens * n * c
        else:
            # every patch -> LLM space through the projector, then cosine with the question
            per_image += n * (c * dims.llm_width + dims.llm_width * dims.llm_width) + text_tokens * n * dims.llm_width
    k = config.merging.contextual_num
    merge = "visionzip" if config.skip_ctx_merge else config.merge  # skip_ctx_merge: the seed's VisionZip merge
    if merge != "none" and k > 0:
        if merge == "visionzip":
            per_image += n * k * ck  # every remaining token against the k targets
        else:
            m = config.merging
            # as compress.cluster.cluster_merge: ceil(factor·k) seeds when reducing agglomeratively, or always
            # with seeds "factor"
            wide = max(k, math.ceil(m.kmeans_init_factor * k))
            seeds = wide if (m.agglomerative or m.seeds == "factor") else k
            per_image += (m.kmeans_iters + 1) * n * seeds * ck  # Lloyd steps + the final assignment
            if m.agglomerative and seeds > k and m.linkage == "midpoint":
                # each merge recomputes the cosines of the current centres, then a re-assignment to the survivors
                per_image += sum(w * w * ck for w in range(k + 1, seeds + 1)) + n * k * ck
    return work.n_images * per_image


def vispruner_flops(config: Any, work: Any) -> int:
    """The capture, the patches' L2 normalisation, and every round of duplicate removal (each ``a`` token's
    cosine with every ``b`` token: ceil(R/2)·floor(R/2)·c)."""
    from ..compress.vispruner import vispruner_schedule

    n, c = work.dims.vision_tokens - 1, work.dims.vision_width
    rounds = vispruner_schedule(config.budget(n), config.important_ratio, n)
    per_image = _capture(work) + n * c + sum(((r + 1) // 2) * (r // 2) * c for r, _ in rounds)
    return work.n_images * per_image
