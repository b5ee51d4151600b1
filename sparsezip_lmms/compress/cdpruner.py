"""CDPruner (Zhang et al., 2025): conditional-DPP selection of visual tokens, batched.

Reproduces the official code (Theia-4869/CDPruner, ``llava/model/llava_arch.py``:
``LlavaMetaForCausalLM.encode_images``; ``clip_encoder.py``: the CLIP image/text embeds) on a batch
of images at once. Stages, each a small pure function:

(a) :func:`cdpruner_similarity` — ``S = x̂ x̂ᵀ`` per image on the projector outputs, ``x̂ = x / ‖x‖``.
(b) :func:`cdpruner_cosine`, :func:`cdpruner_raw_relevance`, :func:`cdpruner_normalize_relevance`
    (composed by :func:`cdpruner_relevance`) — ``c = ê t̂ᵀ`` of the L2-normalised CLIP image embeds and
    the M text-segment embeds, ``raw = mean_m(−c)``, ``r = (raw − min + 1e-6) / (max − min)``.
(c) :func:`cdpruner_kernel` — ``L = diag(r) S diag(r)``, computed as ``(r_i S_ij) r_j``.
(d) :func:`cdpruner_greedy_map` — fast greedy MAP inference of the DPP: ``d² = diag(L)``; per step
    ``j = argmax d²``, ``e = (L[j] − Σ_s c_s[j] c_s) / sqrt(d²_j)``, ``d² −= e²``, ``d²_j = −inf``.

CLIP side: :func:`cdpruner_text_segments` (the official 77-token segmentation of a tokenised question),
:func:`cdpruner_pool_positions` (the text tower's pooled position per segment under its
``eos_token_id``), :func:`cdpruner_patch_embeds` (``visual_projection(post_layernorm(hidden[:, 1:]))``
of the select layer, −2 in LLaVA-1.5).

Official conventions and quirks reproduced by default:

* the relevance is the **negative** mean cosine: the least text-similar tokens rank highest;
* min and max run over every token of the call: per image (``joint=False``, the LLaVA-1.5 path) or over
  all B × N tokens (``joint=True``, the LLaVA-1.6 path where all crops share the question); the 1e-6
  is in the numerator only, so ``r ∈ [1e-6/(max−min), 1 + 1e-6/(max−min)]``, never exactly 0;
* no θ / exponential reweighting (commented out in the official code);
* ties go to the lowest index (``torch.argmax``);
* the official code returns a mask (kept tokens in ascending order); :func:`cdpruner_select` returns
  the selection order, whose ``.sort(dim=1).values`` is that set;
* **degenerate budgets**: when k exceeds the rank of L (<= min(N, D)), the remaining d² are rounding
  noise, ``sqrt`` of a negative one gives NaN, the NaN spreads to every d² and ``argmax`` returns the
  first NaN, so picks repeat (e.g. 0, 1, 0, 1, …). The default reproduces this (the order holds
  repeated indices, the official mask then fewer than k tokens).

Deviations:

* ``distinct=True`` (:func:`cdpruner_select`, :func:`cdpruner_greedy_map`), default False: a step whose
  chosen d² is not positive updates nothing (``e = 0``) and the argmax runs over unchosen tokens only
  (non-finite d² read as the lowest finite value), so the k picks are always distinct and never come
  from NaN. Whenever every chosen d² is positive (every non-degenerate run, every official fixture) it
  gives the official order.
* Empty question — M = 0, or every segment masked out by ``text_mask`` — and a constant raw relevance
  (``max == min``, e.g. N = 1): the official code gives NaN / inf; here r = 1 for every token of that
  image (per-image mode) or of the call (joint mode; rows without a question are left out of the joint
  min/max and get r = 1). A uniform r makes L = S: the DPP then selects by diversity alone.
* ``text_mask`` [B|1, M] bool (keyword of :func:`cdpruner_relevance`): the mean over segments is a
  masked mean, so questions with different segment counts can be batched (the official call has one
  question, all of whose segments count).

dtype: the official code normalises the projector outputs in the model dtype (float16) and then casts
to float32; the CLIP towers, the relevance, the kernel and the DPP buffer run in float32. Here the
features are normalised in their own dtype and then promoted to "float32 or wider"
(``promote_types(dtype, float32)``), the embeds are promoted likewise before normalising, and the
kernel / DPP run in the promotion of the two: float32 for float16/bfloat16/float32 inputs (the
official numerics), float64 for float64 inputs (the parity setting of the fixtures, which the README
shows selects the same tokens as the unedited float32 code).

Validation: ``k`` must be an int in ``[1, N]``; shapes must agree (B, N, and E between image and text
embeds); inputs must be finite, with no zero-norm feature or (valid) embed. These checks cost one host
sync before the greedy loop; the loop itself has none.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .dtypes import at_least_float32
from .types import check_finite, check_int

__all__ = [
    "cdpruner_cosine",
    "cdpruner_greedy_map",
    "cdpruner_kernel",
    "cdpruner_normalize_relevance",
    "cdpruner_patch_embeds",
    "cdpruner_pool_positions",
    "cdpruner_raw_relevance",
    "cdpruner_relevance",
    "cdpruner_select",
    "cdpruner_similarity",
    "cdpruner_text_segments",
]

RELEVANCE_EPS = 1e-6  # the official numerator offset of the min–max normalisation
CONTEXT_LENGTH = 77  # CLIP text positions per segment


def _check_float(name: str, t: object, ndim: int, shape_doc: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {shape_doc}, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    return t


# --------------------------------------------------------------------------- (a) similarity


def cdpruner_similarity(features: Tensor, normalize_dtype: torch.dtype | None = None) -> Tensor:
    """Cosine similarity of every pair of tokens of each image.

    features [B, N, D] -> S [B, N, N]. ``x / ‖x‖`` in the dtype of ``features`` (official: the model
    dtype) or in ``normalize_dtype``, then promoted to float32 or wider before the product (official
    ``.float()``).
    """
    if normalize_dtype is not None:
        features = features.to(normalize_dtype)
    unit = features / features.norm(dim=-1, keepdim=True)  # [B, N, D]
    unit = unit.to(at_least_float32(unit.dtype))
    return unit @ unit.transpose(1, 2)  # [B, N, N]


# --------------------------------------------------------------------------- (b) relevance


def cdpruner_cosine(image_embeds: Tensor, text_embeds: Tensor, text_mask: Tensor | None = None) -> Tensor:
    """Cosine of every image embed with every text-segment embed.

    image_embeds [B, N, E]; text_embeds [B, M, E] or [1, M, E] (one question for every image);
    text_mask [B|1, M] bool or None. Returns c [B, N, M] in float32 or wider. Masked segments (which
    may be zero padding) give c = 0.
    """
    work = torch.promote_types(at_least_float32(image_embeds.dtype), text_embeds.dtype)
    image = image_embeds.to(work)
    text = text_embeds.to(work)
    image = image / image.norm(dim=-1, keepdim=True)  # [B, N, E]
    text_norm = text.norm(dim=-1, keepdim=True)  # [B|1, M, 1]
    if text_mask is not None:
        text_norm = text_norm.masked_fill(~text_mask.unsqueeze(-1), 1.0)
        text = text.masked_fill(~text_mask.unsqueeze(-1), 0.0)
    text = text / text_norm  # [B|1, M, E]
    return image @ text.transpose(1, 2)  # [B, N, M] (broadcasts a batch-1 text)


def cdpruner_raw_relevance(cosine: Tensor, text_mask: Tensor | None = None) -> Tensor:
    """Raw relevance ``mean_m(−c)``: the **negative** mean cosine over the text segments (official sign).

    cosine [B, N, M]; text_mask [B|1, M] bool or None (all valid). Returns [B, N]. An image with no
    valid segment (M = 0 or all masked) gets 0 (flagged by :func:`cdpruner_normalize_relevance`'s
    ``has_text``).
    """
    b, n, m = cosine.shape
    if text_mask is None:
        if m == 0:
            return cosine.new_zeros(b, n)
        return (-cosine).mean(dim=-1)  # [B, N], as the official code
    weight = text_mask.to(cosine.dtype).unsqueeze(1)  # [B|1, 1, M]
    count = weight.sum(-1).clamp_min(1.0)  # [B|1, 1]
    return (-cosine * weight).sum(-1) / count  # [B, N]


def cdpruner_normalize_relevance(
    raw: Tensor, joint: bool = False, has_text: Tensor | None = None, groups: Tensor | None = None
) -> Tensor:
    """Official min–max: ``r = (raw − min + 1e-6) / (max − min)``.

    raw [B, N]. ``joint=False``: min/max per image (row); ``joint=True``: one min/max over every token
    of every row with a question (all crops of one image share it). ``groups`` [B] long (with
    ``joint``): rows with the same id share one min/max, so several LLaVA-1.6 images, each a group of
    crops, normalise in one batched call exactly as one joint call per image; None: one group.
    has_text [B] bool or None (all True). Fallback (not official, which gives NaN/inf): rows without a
    question, and every row of a group whose max == min, get r = 1. Returns [B, N].
    """
    b, n = raw.shape
    if has_text is None:
        has_text = torch.ones(b, dtype=torch.bool, device=raw.device)
    row_ok = has_text.unsqueeze(1).expand(b, n)  # [B, N]
    inf = torch.tensor(float("inf"), dtype=raw.dtype, device=raw.device)
    if joint:
        if groups is None:  # one group: the whole call
            groups, n_groups = torch.zeros(b, dtype=torch.long, device=raw.device), 1
        elif tuple(groups.shape) != (b,) or groups.dtype != torch.long:
            raise ValueError(f"groups must be a long tensor [B={b}], got {groups.dtype} {tuple(groups.shape)}")
        else:
            n_groups = int(groups.max()) + 1  # one host sync: the number of groups
        row_low = torch.where(row_ok, raw, inf).amin(dim=1)  # [B]
        row_high = torch.where(row_ok, raw, -inf).amax(dim=1)  # [B]
        low = inf.expand(n_groups).clone().scatter_reduce(0, groups, row_low, "amin")[groups, None]  # [B, 1]
        high = (-inf).expand(n_groups).clone().scatter_reduce(0, groups, row_high, "amax")[groups, None]  # [B, 1]
    else:
        low = raw.amin(dim=1, keepdim=True)  # [B, 1]
        high = raw.amax(dim=1, keepdim=True)  # [B, 1]
    span = high - low  # [B, 1]; -inf - inf (no row with a question) is not > 0
    usable = (span > 0) & has_text.unsqueeze(1)  # [B, 1]
    safe_low = torch.where(usable, low, torch.zeros_like(low))
    safe_span = torch.where(usable, span, torch.ones_like(span))
    r = (raw - safe_low + RELEVANCE_EPS) / safe_span  # [B, N], official order of operations
    return torch.where(usable, r, torch.ones_like(r))


def _check_embeds(image_embeds: object, text_embeds: object, text_mask: object) -> tuple[int, int, int]:
    _check_float("image_embeds", image_embeds, 3, "[B, N, E]")
    _check_float("text_embeds", text_embeds, 3, "[B, M, E] (or [1, M, E])")
    b, n, e = image_embeds.shape
    if b < 1 or n < 1 or e < 1:
        raise ValueError(f"image_embeds must be [B>=1, N>=1, E>=1], got {tuple(image_embeds.shape)}")
    tb, m, te = text_embeds.shape
    if te != e:
        raise ValueError(f"text_embeds width E={te} does not match image_embeds width E={e}")
    if tb not in (1, b):
        raise ValueError(f"text_embeds batch {tb} must be 1 or the B={b} of image_embeds")
    if text_embeds.device != image_embeds.device:
        raise ValueError(f"text_embeds is on {text_embeds.device} but image_embeds is on {image_embeds.device}")
    if text_mask is not None:
        if not isinstance(text_mask, Tensor) or text_mask.dtype != torch.bool:
            raise ValueError("text_mask must be a bool torch.Tensor [B|1, M]")
        if text_mask.dim() != 2 or text_mask.shape[1] != m or text_mask.shape[0] not in (1, tb, b):
            raise ValueError(f"text_mask must be [B|1, M={m}], got shape {tuple(text_mask.shape)}")
        if text_mask.device != image_embeds.device:
            raise ValueError(f"text_mask is on {text_mask.device} but image_embeds is on {image_embeds.device}")
    return b, n, m


def cdpruner_relevance(
    image_embeds: Tensor,
    text_embeds: Tensor,
    joint: bool = False,
    *,
    text_mask: Tensor | None = None,
    groups: Tensor | None = None,
) -> Tensor:
    """CDPruner's normalised relevance r of every image token to the question.

    image_embeds [B, N, E] (CLIP image embeds of the patches, :func:`cdpruner_patch_embeds`);
    text_embeds [B, M, E] (each image's M question-segment embeds; [1, M, E] shares one question);
    ``joint``: one min–max over all rows of the call (LLaVA-1.6 crops of one image) instead of per row;
    ``text_mask`` [B|1, M] bool: valid segments (None: all); ``groups`` [B] long (with ``joint``): the
    image each row (crop) belongs to, one min–max per image. Returns r [B, N] in float32 or wider.
    Official: ``r = (mean_m(−cos) − min + 1e-6) / (max − min)``; empty question or constant raw
    relevance: r = 1 (documented fallback, never NaN).
    """
    b, _, m = _check_embeds(image_embeds, text_embeds, text_mask)
    check_finite(image_embeds=image_embeds, text_embeds=text_embeds)
    if bool((image_embeds.norm(dim=-1) == 0).any()):
        raise ValueError("image_embeds has a zero-norm embed (its cosine would be NaN)")
    text_valid = text_embeds.norm(dim=-1) > 0  # [B|1, M]
    if text_mask is not None:
        text_valid = text_valid | ~text_mask
    if not bool(text_valid.all()):
        raise ValueError("text_embeds has a zero-norm segment embed that text_mask does not mask out")
    cosine = cdpruner_cosine(image_embeds, text_embeds, text_mask)  # [B, N, M]
    raw = cdpruner_raw_relevance(cosine, text_mask)  # [B, N]
    if text_mask is None:
        has_text = torch.full((b,), m > 0, dtype=torch.bool, device=raw.device)  # [B]
    else:
        has_text = text_mask.any(dim=1).expand(b)  # [B]
    return cdpruner_normalize_relevance(raw, joint=joint, has_text=has_text, groups=groups)


# --------------------------------------------------------------------------- (c) kernel


def cdpruner_kernel(similarity: Tensor, relevance: Tensor) -> Tensor:
    """Conditional DPP kernel ``L = diag(r) S diag(r)``, i.e. ``L_ij = (r_i S_ij) r_j``.

    similarity [B, N, N]; relevance [B, N]. Returns [B, N, N] in their promoted dtype.
    """
    return relevance.unsqueeze(2) * similarity * relevance.unsqueeze(1)  # [B, N, N]


# --------------------------------------------------------------------------- (d) greedy MAP


def cdpruner_greedy_map(kernel: Tensor, k: int, distinct: bool = False) -> tuple[Tensor, Tensor]:
    """Fast greedy MAP inference of a DPP (Chen et al. 2018), batched, on device.

    kernel [B, N, N]; k >= 1 steps. Returns (order [B, k] long: picks in selection order,
    gain [B, k]: the chosen token's conditional variance d² at its step, dtype of ``kernel``).
    Ties: lowest index. ``distinct=False`` reproduces the official NaN degeneration past the kernel's
    rank; ``True`` keeps the picks distinct (see the module docstring).
    """
    b, n, _ = kernel.shape
    device = kernel.device
    order = torch.empty(b, k, dtype=torch.long, device=device)  # [B, k]
    gain = kernel.new_empty(b, k)  # [B, k]
    basis = kernel.new_zeros(b, k, n)  # [B, k, N] the official ``cis`` (transposed to batch-first)
    d2 = torch.diagonal(kernel, dim1=1, dim2=2).clone()  # [B, N]
    chosen = torch.zeros(b, n, dtype=torch.bool, device=device)  # [B, N], used when distinct
    lowest = torch.finfo(kernel.dtype).min
    for step in range(k):
        if distinct:
            score = torch.nan_to_num(d2, nan=lowest, posinf=torch.finfo(kernel.dtype).max, neginf=lowest)
            score = score.masked_fill(chosen, float("-inf"))  # [B, N]
        else:
            score = d2
        pick = score.argmax(dim=1, keepdim=True)  # [B, 1] (first NaN wins when d2 holds NaN)
        order[:, step] = pick[:, 0]
        d2_pick = d2.gather(1, pick)  # [B, 1]
        gain[:, step] = d2_pick[:, 0]
        kernel_row = kernel.gather(1, pick.unsqueeze(-1).expand(b, 1, n))[:, 0]  # [B, N] = L[j, :]
        if step > 0:
            coeff = basis[:, :step].gather(2, pick.unsqueeze(1).expand(b, step, 1))  # [B, step, 1] = c_s[j]
            kernel_row = kernel_row - (coeff.transpose(1, 2) @ basis[:, :step])[:, 0]  # [B, N]
        if distinct:
            positive = d2_pick > 0  # [B, 1]
            denom = torch.sqrt(torch.where(positive, d2_pick, torch.ones_like(d2_pick)))
            e = torch.where(positive, kernel_row / denom, torch.zeros_like(kernel_row))  # [B, N]
            chosen = chosen.scatter(1, pick, True)
        else:
            e = kernel_row / torch.sqrt(d2_pick)  # [B, N]
        basis[:, step] = e
        d2 = (d2 - e.square()).scatter(1, pick, float("-inf"))
    return order, gain


def cdpruner_select(
    features: Tensor, relevance: Tensor, k: int, *, distinct: bool = False, normalize_dtype: torch.dtype | None = None
) -> Tensor:
    """CDPruner's selection order: k tokens of each image by greedy MAP of the conditional DPP.

    features [B, N, D] (LLaVA: projector outputs, no CLS); relevance [B, N] (:func:`cdpruner_relevance`);
    k in ``[1, N]`` tokens per image (per crop in LLaVA-1.6). Returns LongTensor [B, k] in selection
    order; ``.sort(dim=1).values`` is the official mask's token set. ``distinct``: see the module
    docstring (default: official behaviour, repeats past the kernel's rank).
    """
    _check_float("features", features, 3, "[B, N, D]")
    _check_float("relevance", relevance, 2, "[B, N]")
    b, n, d = features.shape
    if b < 1 or n < 1 or d < 1:
        raise ValueError(f"features must be [B>=1, N>=1, D>=1], got {tuple(features.shape)}")
    if tuple(relevance.shape) != (b, n):
        raise ValueError(f"relevance must be [B={b}, N={n}] like features, got {tuple(relevance.shape)}")
    if relevance.device != features.device:
        raise ValueError(f"relevance is on {relevance.device} but features is on {features.device}")
    check_int("k", k, 1)
    if k > n:
        raise ValueError(f"k ({k}) exceeds the N={n} tokens of features")
    check_finite(features=features, relevance=relevance)
    if bool((features.norm(dim=-1) == 0).any()):  # host sync, once, before the loop
        raise ValueError("features has a zero-norm token (its similarity would be NaN)")
    similarity = cdpruner_similarity(features, normalize_dtype)  # [B, N, N]
    kernel = cdpruner_kernel(similarity, relevance.to(torch.promote_types(similarity.dtype, relevance.dtype)))
    order, _ = cdpruner_greedy_map(kernel, k, distinct=distinct)
    return order


# --------------------------------------------------------------------------- CLIP side


def cdpruner_text_segments(
    input_ids: Tensor, attention_mask: Tensor | None = None, context_length: int = CONTEXT_LENGTH
) -> tuple[Tensor, Tensor]:
    """Official segmentation of one tokenised question for the CLIP text tower.

    input_ids [L] long (BOS + tokens + EOS, no truncation, no padding); attention_mask [L] or None
    (ones). ``M = (L − 1) // context_length + 1`` (0 for L = 0); ids and mask are right-padded with 0
    to ``context_length · M`` and reshaped row-major. Returns (segment_input_ids [M, context_length],
    segment_attention_mask [M, context_length]), dtypes of the inputs. Only the first segment starts with
    BOS, only the last holds EOS; every segment's positions restart at 0 in the text tower.
    """
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 1:
        raise ValueError("input_ids must be a 1-D torch.Tensor [L]")
    check_int("context_length", context_length, 1)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask must be [L={input_ids.shape[0]}], got {tuple(attention_mask.shape)}")
    length = input_ids.shape[0]
    m = (length - 1) // context_length + 1 if length > 0 else 0
    pad = m * context_length - length
    ids = torch.nn.functional.pad(input_ids, (0, pad), value=0).view(m, context_length)  # [M, 77]
    mask = torch.nn.functional.pad(attention_mask, (0, pad), value=0).view(m, context_length)  # [M, 77]
    return ids, mask


def cdpruner_pool_positions(segment_input_ids: Tensor, eos_token_id: int) -> Tensor:
    """The position the CLIP text tower pools in each segment (read ``eos_token_id`` from its config).

    segment_input_ids [M, 77] -> [M] long. Legacy ``eos_token_id == 2`` (openai checkpoints):
    ``argmax(ids)`` — BOS (position 0) in the first segment of a long text, the EOS in the last, the
    first largest id in a middle one. Otherwise the first position of ``eos_token_id`` (0 when absent).
    """
    if eos_token_id == 2:
        return segment_input_ids.argmax(dim=-1)
    return (segment_input_ids == eos_token_id).int().argmax(dim=-1)


def cdpruner_patch_embeds(
    hidden_states: Tensor,
    post_layernorm: Callable[[Tensor], Tensor],
    visual_projection: Callable[[Tensor], Tensor],
) -> Tensor:
    """CLIP image embed of every patch: ``visual_projection(post_layernorm(hidden[:, 1:]))``.

    hidden_states [B, 1+N, C]: the vision tower's select layer (``hidden_states[-2]`` in LLaVA-1.5, the
    tensor the projector receives, not the last layer), CLS first (dropped). The post-layernorm
    states are promoted to float32 or wider before the projection (official cast). Returns [B, N, P].
    """
    patches = post_layernorm(hidden_states[:, 1:])  # [B, N, C]
    if isinstance(visual_projection, torch.nn.Linear):
        weight, bias = visual_projection.weight, visual_projection.bias
        work = torch.promote_types(at_least_float32(patches.dtype), weight.dtype)
        bias = None if bias is None else bias.to(work)
        return torch.nn.functional.linear(patches.to(work), weight.to(work), bias)  # [B, N, P]
    return visual_projection(patches.to(at_least_float32(patches.dtype)))  # [B, N, P]
