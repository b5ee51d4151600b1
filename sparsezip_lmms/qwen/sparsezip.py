"""SparseZip on Qwen2.5-VL's post-merger tokens.

Inputs per image of N merged tokens (no CLS token in Qwen2.5-VL's tower): the hybrid score reads the
"global" attention each merged token receives (``VisionOutput.scores``, VisionZip-Qwen's score) in place of
the CLS attention and the 2 x 2-averaged keys of the last vision block (``VisionOutput.keys``); the tokens
kept and merged are the post-merger embeddings. :func:`sparsezip_trace` runs unchanged on ``[g, 1+N, ...]``
with a placeholder in the CLS slot (the mean token and key of the image, attention 0), which the scores never
read (they use positions 1..N) and which is dropped from the output (``k_counts_cls`` must be false).

Budget: the config's counts are for an image of ``reference_tokens`` merged tokens; an image of N gets
``s = N / reference_tokens`` times them (:func:`scaled_config`): dynamic K = clamp(round(s c + s scale
log(Var + eps)), lo, hi) with lo = max(1, round(s k_min)), hi = max(lo, round(s k_max)) (``dominant``
likewise with ``skip_dynamic_k``), and max(1, round(s contextual_num)) contextual tokens (0 stays 0).
With N = reference_tokens this is exactly the LLaVA rule.

Text-aware setting (``cross_beta > 0``, ``text_space: llm``): the post-merger tokens are in the LLM's space
already, so a token's relevance is its mean cosine with its image's question tokens' LLM input embeddings
(LLaVA's ``text_space: llm`` rule with the merger in the projector's place); the text term then enters the
score as on LLaVA.

Placement: a dominant token stays at its own slot; a contextual (merged) token takes the slot and the
M-RoPE position of its lowest-index member (raster order), as VisionZip-Qwen places its contextual tokens at
their targets. Images of one N run as one batch (one scaled config).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..compress.sparsezip import sparsezip_trace
from ..compress.dtypes import at_least_float32
from .vision import VisionOutput, split_images

__all__ = ["scaled_config", "sparsezip_qwen"]


def _scaled(count: int, scale: float, least: int) -> int:
    return max(least, int(round(count * scale)))


def scaled_config(config, n: int):
    """The LLaVA-form SparseZip config of an image of ``n`` merged tokens (counts scaled by n / reference)."""
    s = n / config.reference_tokens
    lo = _scaled(config.k_min, s, 1)
    contextual = config.merging.contextual_num
    return config.model_copy(update={
        "k_min": lo,
        "k_max": _scaled(config.k_max, s, lo),
        "dominant": min(n, _scaled(config.dominant, s, 1)),
        "dynk": config.dynk.model_copy(update={"c": config.dynk.c * s, "scale": config.dynk.scale * s}),
        "merging": config.merging.model_copy(update={"contextual_num": _scaled(contextual, s, 1) if contextual else 0}),
        "k_counts_cls": False,
        "reference_tokens": None,
    })  # fmt: skip


def sparsezip_qwen(vis: VisionOutput, config, question: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(keep [I, Nmax] bool, embeds [I, Nmax, E] at least float32): the dominant tokens' slots and each
    contextual token at its lowest member's slot (its embedding there), per image. ``question`` [I, E]
    (``select.image_questions``), read when ``cross_beta > 0``: relevance of a merged token = its cosine with
    each of its image's question tokens, averaged (``text_space: llm``)."""
    embeds, _, _ = split_images(vis.embeds, vis.counts)  # [I, Nmax, E]
    relevance = None  # [I, Nmax]
    if config.cross_beta > 0:
        if question is None:
            raise ValueError("SparseZip's text-aware setting (cross_beta > 0) needs each image's question")
        work = torch.promote_types(at_least_float32(embeds.dtype), question.dtype)
        relevance = (F.normalize(embeds.to(work), dim=-1) @ question.to(work).unsqueeze(-1)).squeeze(-1)
    scores, _, _ = split_images(vis.scores, vis.counts)  # [I, Nmax]
    keys, _, _ = split_images(vis.keys, vis.counts)  # [I, Nmax, d]
    images, n_max, width = embeds.shape
    work = at_least_float32(embeds.dtype)
    out = torch.cat([embeds.to(work), embeds.new_zeros(images, 1, width, dtype=work)], dim=1)  # [I, Nmax+1, E] spare slot
    keep = torch.zeros(images, n_max + 1, dtype=torch.bool, device=embeds.device)  # [I, Nmax+1]
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(vis.counts):
        groups.setdefault(n, []).append(i)
    for n, members in groups.items():
        rows = torch.tensor(members, device=embeds.device)
        g = len(members)
        hidden = embeds[rows, :n]  # [g, n, E]
        key = keys[rows, :n]  # [g, n, d]
        hidden = torch.cat([hidden.mean(1, keepdim=True), hidden], dim=1)  # [g, 1+n, E] placeholder CLS
        key = torch.cat([key.mean(1, keepdim=True), key], dim=1)  # [g, 1+n, d]
        attn = torch.cat([scores.new_zeros(g, 1), scores[rows, :n]], dim=1).unsqueeze(1)  # [g, 1, 1+n]
        text = None if relevance is None else relevance[rows, :n]  # [g, n]
        trace = sparsezip_trace(hidden, attn, key, scaled_config(config, n), text_relevance=text)
        comp = trace.compressed  # tokens [g, T, E], valid / index [g, T], members [g, T, 1+n] or None
        slot = comp.index - 1  # [g, T] a dominant token's merged index; -2 for merged tokens and padding
        if comp.members is not None:
            lowest = comp.members[..., 1:].long().argmax(-1)  # [g, T] first member (raster order)
            slot = torch.where(comp.index < 0, lowest, slot)
        placed = comp.valid & (comp.index != 0)  # [g, T] every valid token but the placeholder CLS
        slot = torch.where(placed, slot, torch.full_like(slot, n_max))  # the rest -> the spare slot
        keep[rows[:, None], slot] = True
        out[rows[:, None], slot] = comp.tokens.to(work)
    return keep[:, :n_max], out[:, :n_max]
