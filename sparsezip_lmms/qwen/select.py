"""Per-image selection rules of Qwen2.5-VL on the post-merger tokens (everything but VisionZip, whose
selection is :mod:`sparsezip_lmms.compress.visionzip_qwen`): DivPrune, VisPruner, random, pool, SparseZip
(:mod:`.sparsezip`) and CDPruner. Each image has its own N merged tokens and its own budget.

Every rule returns ``(keep [I, Nmax] bool, embeds [I, Nmax, E] or None)`` over the images padded to
``Nmax`` (raster order): ``keep`` marks the merged-token slots that enter the LLM, ``embeds`` (None: the
post-merger embeddings unchanged) replaces the embedding of a kept slot where the rule builds a new
token (a pooled or merged token sits at the slot, and takes the M-RoPE position, of an anchor token
of its own). Images of one size and budget run as one batch where a rule needs equal sizes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..compress.baselines import keyed_uniform, patch_image_keys
from ..compress.cdpruner import cdpruner_select
from ..compress.divprune import divprune_select_ragged
from ..compress.dtypes import at_least_float32
from ..compress.visionzip import top_mask
from ..compress.vispruner import vispruner_select
from ..llava.tokens import image_owner
from .sparsezip import sparsezip_qwen
from .vision import VisionOutput, split_images

__all__ = ["image_budgets", "pool_shape", "question_vectors", "select_images"]

Selection = tuple[Tensor, Tensor | None]


def image_budgets(method: str, config: object, counts: tuple[int, ...]) -> list[int]:
    """``config.budget(N)`` of every image, or a ValueError naming the budget key: each must be in [1, N]."""
    key = "keep" if getattr(config, "keep_ratio", None) is None else "keep_ratio"
    budgets = [config.budget(n) for n in counts]
    for i, (k, n) in enumerate(zip(budgets, counts)):
        if not 1 <= k <= n:
            raise ValueError(
                f"{method} keeps {k} of image {i}'s {n} merged tokens (key {key!r}): the budget must be in [1, N]"
            )
    return budgets


def _mask_of(picks: Tensor, shape: tuple[int, int]) -> Tensor:
    """[I, Nmax] bool from picks [I, k] (-1: none), one scatter through a spare column."""
    slots = torch.where(picks >= 0, picks, torch.full_like(picks, shape[1]))  # -1 -> the spare column
    keep = torch.zeros(shape[0], shape[1] + 1, dtype=torch.bool, device=picks.device)
    return keep.scatter(1, slots, True)[:, :-1]


def _divprune(vis: VisionOutput, config: object, **_: object) -> Selection:
    """DivPrune on every image's post-merger tokens (the official LLaVA rule on the projected tokens), all
    images in one ragged call; a token picked twice (``mask_chosen: false``, only on exact ties) stays once."""
    embeds, _, _ = split_images(vis.embeds, vis.counts)  # [I, Nmax, E]
    n = torch.tensor(vis.counts, device=embeds.device)  # [I]
    valid = torch.arange(embeds.shape[1], device=embeds.device)[None] < n[:, None]  # [I, Nmax]
    budgets = image_budgets("divprune", config, vis.counts)
    chosen = divprune_select_ragged(
        embeds, valid, torch.tensor(budgets, device=embeds.device), mask_chosen=config.mask_chosen,
        compute_dtype=config.compute_dtype(embeds.dtype),
    )  # [I, k_max], -1 past an image's budget  # fmt: skip
    return _mask_of(chosen, valid.shape), None


def _groups(counts: tuple[int, ...], budgets: list[int]) -> dict[tuple[int, int], list[int]]:
    """Images by (N, budget), in first-seen order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(counts, budgets)):
        groups.setdefault(key, []).append(i)
    return groups


def _vispruner(vis: VisionOutput, config: object, **_: object) -> Selection:
    """VisPruner as its author applies it to Qwen2.5-VL: the "global" attention each merged token receives
    (VisionZip's score: no CLS token here) in place of the CLS attention, the duplicates removed on the
    merged features; one batch per (N, budget) group (the rounds need equal sizes)."""
    embeds, _, _ = split_images(vis.embeds, vis.counts)  # [I, Nmax, E]
    scores, _, _ = split_images(vis.scores, vis.counts)  # [I, Nmax]
    keep = torch.zeros(embeds.shape[:2], dtype=torch.bool, device=embeds.device)  # [I, Nmax]
    budgets = image_budgets("vispruner", config, vis.counts)
    for (n, tokens), members in _groups(vis.counts, budgets).items():
        rows = torch.tensor(members, device=embeds.device)
        kept = vispruner_select(embeds[rows, :n], scores[rows, None, :n], tokens, config.important_ratio)  # [g, T]
        keep[rows[:, None], kept] = True
    return keep, None


def _random(vis: VisionOutput, config: object, *, pixel_values: Tensor, grids: list, **_: object) -> Selection:
    """``config.budget(N)`` merged tokens per image drawn uniformly without replacement. The draw of an image
    hashes (``seed``, its pixel fingerprint :func:`patch_image_keys`, merged-token index): the same image
    keeps the same tokens at any batch position and in any batch; ties (hash collisions) go to the lower index."""
    budgets = image_budgets("random", config, vis.counts)
    keys = patch_image_keys(pixel_values, [t * h * w for t, h, w in grids])  # [I]
    n_max = max(vis.counts)
    noise = keyed_uniform(keys, n_max, config.seed)  # [I, Nmax] integers in [0, 2^32)
    cols = torch.arange(n_max, device=noise.device)  # [Nmax]
    score = noise * (1 << 20) + ((1 << 20) - 1 - cols)  # [I, Nmax] distinct: the lower index wins a tie
    valid = cols[None] < torch.tensor(vis.counts, device=noise.device)[:, None]  # [I, Nmax]
    score = score.masked_fill(~valid, -1)
    keep = top_mask(score, torch.tensor(budgets, device=noise.device), max(budgets)) & valid  # [I, Nmax]
    return keep.to(vis.embeds.device), None


def pool_shape(k: int, h: int, w: int) -> tuple[int, int]:
    """The output grid (r, c) of pooling an h x w merged grid to at most ``k`` tokens: the largest r * c <= k
    with r <= h, c <= w; among those, windows closest to square (|log((h/r)/(w/c))| smallest), then fewer rows."""
    best: tuple[tuple[int, float, int], tuple[int, int]] | None = None
    for r in range(1, min(h, k) + 1):
        c = min(w, k // r)
        rank = (-(r * c), abs(math.log((h / r) / (w / c))), r)
        if best is None or rank < best[0]:
            best = (rank, (r, c))
    return best[1]


def _pool(vis: VisionOutput, config: object, *, grids: list, merge: int, **_: object) -> Selection:
    """2-D average pooling (``adaptive_avg_pool2d``) of each image's own merged grid (h/merge x w/merge) to
    :func:`pool_shape`'s r x c <= budget cells. A pooled cell takes the slot and the M-RoPE position of the
    top-left merged token of its window, ``(floor(i h / r), floor(j w / c))``: distinct slots in raster order."""
    budgets = image_budgets("pool", config, vis.counts)
    embeds, _, _ = split_images(vis.embeds, vis.counts)  # [I, Nmax, E]
    work = at_least_float32(embeds.dtype)
    out = embeds.to(work)  # [I, Nmax, E]
    keep = torch.zeros(embeds.shape[:2], dtype=torch.bool, device=embeds.device)  # [I, Nmax]
    shapes = []
    for i, (t, h, w) in enumerate(grids):
        if t != 1:
            raise ValueError(f"pool: image {i} has t = {t} frames (image_grid_thw); images have t = 1")
        shapes.append((h // merge, w // merge, *pool_shape(budgets[i], h // merge, w // merge)))
    groups: dict[tuple[int, int, int, int], list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(shape, []).append(i)
    for (h, w, r, c), members in groups.items():
        rows = torch.tensor(members, device=embeds.device)
        grid = out[rows, : h * w].transpose(1, 2).reshape(len(members), -1, h, w)  # [g, E, h, w]
        pooled = F.adaptive_avg_pool2d(grid, (r, c)).flatten(2).transpose(1, 2)  # [g, r*c, E]
        top = torch.arange(r, device=embeds.device) * h // r  # [r] first row of each window
        left = torch.arange(c, device=embeds.device) * w // c  # [c] first column of each window
        anchor = (top[:, None] * w + left[None, :]).flatten()  # [r*c] ascending raster index
        out[rows[:, None], anchor] = pooled
        keep[rows[:, None], anchor] = True
    return keep, out


def question_vectors(input_ids: Tensor, attention_mask: Tensor, embeds: Tensor, start_id: int, end_id: int,
                     image_id: int) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(text [B, E] at least float32, has_text [B] bool): per row the mean LLM input embedding of its
    instruction tokens, i.e. every attended token outside the ``<|vision_start|>`` ... ``<|vision_end|>``
    spans (both markers and the image pads left out), as OpenVINO GenAI's CDPruner port for Qwen-VL."""
    start, end = input_ids == start_id, input_ids == end_id  # [B, L]
    depth = start.long().cumsum(1) - end.long().cumsum(1)  # [B, L] 1 from a start marker to before its end
    text = attention_mask.bool() & (depth == 0) & ~end & (input_ids != image_id)  # [B, L]
    weight = text.to(at_least_float32(embeds.dtype)).unsqueeze(-1)  # [B, L, 1]
    count = weight.sum(1)  # [B, 1]
    return (embeds.to(weight.dtype) * weight).sum(1) / count.clamp_min(1), count[:, 0] > 0


def image_questions(input_ids: Tensor, attention_mask: Tensor, embeds: Tensor, image_id: int, start_id: int,
                    end_id: int, images: int) -> Tensor:  # fmt: skip
    """[I, E] at least float32: per image, the mean of the unit LLM input embeddings of its question, i.e. the
    attended tokens after its run of image tokens up to the next image's run (LLaVA's question rule), the
    ``<|vision_start|>`` / ``<|vision_end|>`` markers left out; a zero row for an image without such tokens.
    ``unit(token) . row`` is then the token's mean cosine with its image's question tokens (SparseZip's
    relevance in the LLM's space)."""
    attended = attention_mask.bool()  # [B, L]
    is_image = (input_ids == image_id) & attended  # [B, L]
    owner = image_owner(input_ids, attention_mask, image_id)  # [B, L] the image a token follows, -1 before any
    text = attended & ~is_image & (owner >= 0) & (input_ids != start_id) & (input_ids != end_id)  # [B, L]
    owner = owner.flatten()  # [B*L]
    work = at_least_float32(embeds.dtype)
    image_ids = torch.arange(images, device=input_ids.device)  # [I]
    weight = ((owner[None] == image_ids[:, None]) & text.flatten()[None]).to(work)  # [I, B*L] (a matmul: deterministic)
    unit = F.normalize(embeds.flatten(0, 1).to(work), dim=-1)  # [B*L, E]
    return (weight @ unit) / weight.sum(1, keepdim=True).clamp_min(1)  # [I, E]


def _cdpruner(vis: VisionOutput, config: object, *, question: tuple[Tensor, Tensor], rows: list[int], **_: object) -> Selection:
    """CDPruner's conditional DPP on each image's post-merger tokens. Relevance (no CLIP text tower in
    Qwen2.5-VL; OpenVINO GenAI's Qwen-VL recipe): the cosine of each merged token with its row's mean
    instruction embedding (:func:`question_vectors`), **not** negated, min-max normalised over the image,
    ``r = (cos - min) / (max - min)`` (1 for every token when max == min or the row has no text)."""
    budgets = image_budgets("cdpruner", config, vis.counts)
    embeds, _, _ = split_images(vis.embeds, vis.counts)  # [I, Nmax, E]
    text, has_text = question  # [B, E], [B]
    image_rows = torch.tensor(rows, device=embeds.device)  # [I]
    work = torch.promote_types(at_least_float32(embeds.dtype), text.dtype)
    unit = F.normalize(embeds.to(work), dim=-1)  # [I, Nmax, E]
    query = F.normalize(text[image_rows].to(work), dim=-1)  # [I, E]
    cosine = (unit @ query.unsqueeze(-1)).squeeze(-1)  # [I, Nmax]
    valid = torch.arange(embeds.shape[1], device=embeds.device)[None] < torch.tensor(vis.counts, device=embeds.device)[:, None]
    low = cosine.masked_fill(~valid, float("inf")).amin(1, keepdim=True)  # [I, 1]
    span = cosine.masked_fill(~valid, float("-inf")).amax(1, keepdim=True) - low  # [I, 1]
    usable = (span > 0) & has_text[image_rows].unsqueeze(1)  # [I, 1]
    relevance = torch.where(usable, (cosine - low) / torch.where(usable, span, torch.ones_like(span)), torch.ones_like(cosine))
    normalize = None if config.similarity_dtype == "model" else at_least_float32(embeds.dtype)
    keep = torch.zeros(embeds.shape[:2], dtype=torch.bool, device=embeds.device)  # [I, Nmax]
    for (n, tokens), members in _groups(vis.counts, budgets).items():
        g = torch.tensor(members, device=embeds.device)
        order = cdpruner_select(embeds[g, :n], relevance[g, :n], tokens, distinct=config.distinct, normalize_dtype=normalize)
        keep[g[:, None], order] = True  # [g, T] a repeated pick (degenerate DPP, distinct: false) stays once
    return keep, None


def _sparsezip(vis: VisionOutput, config: object, *, image_question: Tensor | None = None, **_: object) -> Selection:
    return sparsezip_qwen(vis, config, image_question)


_RULES = {"divprune": _divprune, "vispruner": _vispruner, "random": _random, "pool": _pool, "cdpruner": _cdpruner,
          "sparsezip": _sparsezip}  # fmt: skip
SCORED = ("visionzip", "vispruner", "sparsezip")  # the rules that read the vision tower's scores and keys


def select_images(method: str, vis: VisionOutput, config: object, **inputs: object) -> Selection:
    """``method``'s (keep [I, Nmax], embeds [I, Nmax, E] or None) on every image of ``vis``; ``inputs``:
    ``pixel_values``, ``grids``, ``merge``, ``question``, ``image_question`` and ``rows`` (what the rules read)."""
    return _RULES[method](vis, config, **inputs)


RULES = tuple(_RULES)
