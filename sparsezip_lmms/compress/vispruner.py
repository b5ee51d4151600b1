"""VisPruner (Zhang et al., ICCV 2025): important + diverse visual tokens from CLIP's own cues, batched.

Reproduces the official selection (Theia-4869/VisPruner aefa01a, ``llava/model/llava_arch.py``:
``LlavaMetaForCausalLM.encode_images``) on a batch of images at once, without a per-image loop and
without host syncs inside the rounds. Inputs: ``features`` [B, N, C] = CLIP layer −2 patch states
(CLS dropped, ``select_feature="patch"``) and ``cls_attn`` [B, H, N] = that layer's CLS-row softmax
probabilities over the patches, per head, **not** renormalised after dropping CLS. For a budget of
T tokens and an important ratio r:

1. :func:`vispruner_split` — ``T_imp = int(T * r)`` (Python's ``int``), ``T_div = T − T_imp``.
2. :func:`vispruner_important` — scores = head-mean of ``cls_attn`` (float32 at least); a stable
   descending sort; the first ``T_imp`` are the important tokens, the rest the residual (in that order).
3. :func:`vispruner_diverse` — duplicate removal on the L2-normalised features. Each round (schedule:
   :func:`vispruner_schedule`) splits the CURRENT residual order alternately, ``a = residual[0::2]``,
   ``b = residual[1::2]``; an ``a`` token scores its largest cosine similarity to any ``b`` token; the
   ``drop = min(8, R − T_div)`` highest-scoring ``a`` tokens go; the new residual is the kept ``a``
   tokens in descending score order (stable), then all ``b`` tokens in their order. Rounds stop when
   ``drop <= 0`` (R = T_div). R and drop depend only on (N, T, r), so every image runs the same rounds.
4. :func:`vispruner_select` — kept = important ∪ final residual, as ascending patch indices (the
   official mask keeps source order).

Ties: stable sorts everywhere (the official ``argsort`` is not stable; the golden set has no ties).
Zero-norm features are normalised to 0 (cosine 0) where the official division gives NaN.

Where the official code fails (:func:`vispruner_official_failure` replays its sizes and names it):
a round keeps the ``a`` tokens ``argsort(score)[:, drop:]`` (``max(ceil(R/2) − drop, 0)`` of them) through
an index expanded to ``R // 2 − drop`` columns. It is correct when the two agree, or the expanded size
is 1 or −1 (``expand`` keeps size 1, which broadcasts). Otherwise:

* ``IndexError: shape mismatch`` — mostly an **odd residual** (e.g. T = 64, r = 0.3: R = 576 − 19 = 557);
* ``RuntimeError: numel: integer multiplication overflow`` — an **over-drop**, ``drop >= R // 2 + 2``
  (e.g. T = 1, r = 0.5: T_div = 1 reaches R = 8 with drop = 7 and only 4 ``a`` tokens);
* ``IndexError`` from ``max`` over an empty ``b`` (R = 1): ``T_div = 0`` (r = 1 with T < N), where the
  official loop drops until R = 1 (or fails earlier);
* no error but one token lost (odd R with ``drop = R // 2``, e.g. R = 17: the width-0 index broadcasts
  the single kept ``a`` token away): the official mask then holds fewer than T tokens.

``odd="ceil"`` (default) runs a documented generalisation, identical to the official code on every
setting it runs correctly (checked on the golden inputs for T in 1..576 and 13 ratios):

* ``a`` = the ``ceil(R/2)`` even positions, ``b`` = the ``floor(R/2)`` odd positions, all else as above;
* ``drop = min(8, R − T_div, ceil(R/2))``: never more than ``a`` holds (the official size-±1 broadcast
  does the same), the next rounds drop the rest;
* ``T_div = 0`` takes no round: the residual is discarded, kept = the T important tokens;
* ``b`` empty (R = 1) never runs a round: with ``T_div >= 1`` the loop has stopped (R <= T_div), and
  ``T_div = 0`` takes none. The schedule also stops at R < 2, so an empty ``b`` cannot be reached.

``odd="error"`` raises ``ValueError`` naming the official failure instead, before any tensor work.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .types import check_finite, check_int, score_dtype

__all__ = [
    "vispruner_diverse",
    "vispruner_important",
    "vispruner_official_failure",
    "vispruner_problem",
    "vispruner_round",
    "vispruner_schedule",
    "vispruner_select",
    "vispruner_split",
]

MAX_DROP = 8  # tokens removed per round at most (official constant)
ODD_MODES = ("ceil", "error")


def vispruner_split(tokens: int, important_ratio: float) -> tuple[int, int]:
    """Official budget split: ``(T_imp, T_div) = (int(T * r), T − int(T * r))``."""
    t_imp = int(tokens * important_ratio)
    return t_imp, tokens - t_imp


def vispruner_problem(tokens: object, important_ratio: object, n_patches: object) -> str | None:
    """A message naming why no rule can honour these settings, or None when they can run.

    Problems: ``tokens`` not an int in ``[1, n_patches]``, ``important_ratio`` not a finite number in
    ``[0, 1]``, ``n_patches`` not an int >= 1. Settings the official code fails on but the generalisation
    runs (:func:`vispruner_official_failure`) are not problems.
    """
    if isinstance(n_patches, bool) or not isinstance(n_patches, int) or n_patches < 1:
        return f"n_patches must be an int >= 1, got {n_patches!r}"
    if isinstance(tokens, bool) or not isinstance(tokens, int):
        return f"tokens must be an int, got {type(tokens).__name__}"
    if not 1 <= tokens <= n_patches:
        return f"tokens must be in [1, {n_patches}] (the number of patches), got {tokens}"
    if isinstance(important_ratio, bool) or not isinstance(important_ratio, (int, float)):
        return f"important_ratio must be a float, got {type(important_ratio).__name__}"
    if not math.isfinite(important_ratio) or not 0.0 <= important_ratio <= 1.0:
        return f"important_ratio must be in [0, 1], got {important_ratio}"
    return None


def vispruner_official_failure(tokens: int, important_ratio: float, n_patches: int) -> str | None:
    """Why the official code fails on these (valid) settings, or None when it runs them correctly.

    Replays the official index arithmetic on the sizes alone (module docstring): the exception it
    raises, or the silent loss of a token.
    """
    t_imp, t_div = vispruner_split(tokens, important_ratio)
    r, lost = n_patches - t_imp, None
    while (drop := min(MAX_DROP, r - t_div)) > 0:
        expand, kept = r // 2 - drop, max((r + 1) // 2 - drop, 0)  # official index width, kept a tokens
        where = f"VisPruner T={tokens}, r={important_ratio} (T_imp={t_imp}, T_div={t_div}): round R={r}, drop={drop}"
        if r == 1:
            return f"{where}: b is empty; the official code raises 'IndexError: max(): Expected reduction dim 2 to have non-zero size'"
        if expand <= -2:
            return f"{where}: the official code raises 'RuntimeError: numel: integer multiplication overflow'"
        if expand == 0 and kept == 1:  # the width-0 index broadcasts the one kept a token away
            lost = lost or f"{where}: the official code silently loses the kept a token (its mask has < T tokens)"
            kept = 0
        elif expand not in (kept, 1, -1):
            return (
                f"{where}: R is odd; the official code raises "
                f"'IndexError: shape mismatch: indexing tensors could not be broadcast together'"
            )
        r = kept + r // 2  # kept a tokens + all b tokens
    return lost


def _rounds(r: int, t_div: int) -> list[tuple[int, int]]:
    """``[(R, drop), ...]`` from a residual of ``r`` tokens down to ``t_div`` (generalised rules)."""
    rounds: list[tuple[int, int]] = []
    if t_div == 0:
        return rounds  # no diverse token: the residual is discarded
    while r >= 2 and (drop := min(MAX_DROP, r - t_div, (r + 1) // 2)) > 0:
        rounds.append((r, drop))
        r -= drop
    return rounds


def vispruner_schedule(tokens: int, important_ratio: float, n_patches: int) -> list[tuple[int, int]]:
    """The rounds of duplicate removal, ``[(R, drop), ...]`` (generalised rules; official where it runs)."""
    t_imp, t_div = vispruner_split(tokens, important_ratio)
    return _rounds(n_patches - t_imp, t_div)


def vispruner_important(cls_attn: Tensor, t_imp: int) -> tuple[Tensor, Tensor]:
    """Important tokens by head-mean CLS attention, and the residual in descending-score order.

    cls_attn [B, H, N] -> (important [B, T_imp] long, residual [B, N − T_imp] long), both in descending
    score order (stable: ties keep the lower patch index first).
    """
    scores = cls_attn.to(score_dtype(cls_attn)).mean(dim=1)  # [B, N]
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # [B, N]
    return order[:, :t_imp], order[:, t_imp:]


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x [B, N, C], index [B, K] -> [B, K, C]."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def vispruner_round(similarity: Tensor, residual: Tensor, drop: int) -> Tensor:
    """One round of duplicate removal. similarity [B, N, N] (cosines of the patches), residual [B, R] ->
    [B, R − drop].

    ``a`` = even positions (ceil(R/2)), ``b`` = odd positions (floor(R/2)); ``drop`` <= len(a). An empty
    ``b`` (R = 1, never scheduled) leaves nothing to compare with: every ``a`` token scores −inf.
    """
    a_idx, b_idx = residual[:, 0::2], residual[:, 1::2]  # [B, Ra], [B, Rb]
    if b_idx.shape[1] == 0:
        score = torch.full(a_idx.shape, float("-inf"), dtype=similarity.dtype, device=similarity.device)  # [B, Ra]
    else:
        rows = similarity.gather(1, a_idx[..., None].expand(-1, -1, similarity.shape[2]))  # [B, Ra, N]
        sim = rows.gather(2, b_idx[:, None, :].expand(-1, a_idx.shape[1], -1))  # [B, Ra, Rb]
        score = sim.amax(dim=2)  # [B, Ra] closest b token of each a token
    keep = torch.sort(score, dim=1, descending=True, stable=True).indices[:, drop:]  # [B, Ra − drop]
    return torch.cat([a_idx.gather(1, keep), b_idx], dim=1)  # [B, R − drop]


def vispruner_diverse(unit: Tensor, residual: Tensor, t_div: int) -> Tensor:
    """Duplicate removal down to ``t_div`` tokens, batched, no host sync.

    unit [B, N, C] L2-normalised features; residual [B, R0] (descending-score order). Returns the final
    residual [B, t_div] (``t_div = 0``: empty, no round). Rounds follow :func:`vispruner_schedule`.
    """
    if t_div == 0:
        return residual[:, :0]
    rounds = _rounds(residual.shape[1], t_div)
    if not rounds:
        return residual
    # every cosine a round can need, once (the rounds only gather from it): the same products as computing
    # each round's a x b block, without copying the features of the residual every round
    similarity = unit @ unit.transpose(1, 2)  # [B, N, N]
    for _, drop in rounds:
        residual = vispruner_round(similarity, residual, drop)  # [B, R − drop]
    return residual


def _check_inputs(features: object, cls_attn: object) -> tuple[int, int]:
    for name, t, dims in (("features", features, "[B, N, C]"), ("cls_attn", cls_attn, "[B, H, N]")):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor {dims}, got {type(t).__name__}")
        if t.dim() != 3 or 0 in t.shape:
            raise ValueError(f"{name} must be a non-empty {dims} tensor, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    b, n, _ = features.shape
    if cls_attn.shape[0] != b or cls_attn.shape[2] != n:
        raise ValueError(
            f"cls_attn {tuple(cls_attn.shape)} must be [B={b}, H, N={n}] to match features {tuple(features.shape)}"
        )
    if cls_attn.device != features.device:
        raise ValueError(f"cls_attn is on {cls_attn.device}, features on {features.device}")
    return b, n


def vispruner_select(
    features: Tensor, cls_attn: Tensor, tokens: int, important_ratio: float = 0.5, *, odd: str = "ceil"
) -> Tensor:
    """VisPruner's kept patches: ``int(T·r)`` important + ``T − int(T·r)`` diverse, per image.

    features [B, N, C] (CLIP layer −2 patch states, no CLS), cls_attn [B, H, N] (that layer's CLS-row
    softmax probabilities over the patches, per head, not renormalised) -> LongTensor [B, tokens]: kept
    patch indices, ascending. ``odd``: ``"ceil"`` runs the generalisation where the official code fails,
    ``"error"`` raises ValueError there (module docstring). Computes in float32 (float64 stays float64).
    """
    if odd not in ODD_MODES:
        raise ValueError(f"odd must be one of {ODD_MODES}, got {odd!r}")
    _, n = _check_inputs(features, cls_attn)
    check_int("tokens", tokens, 1)
    problem = vispruner_problem(tokens, important_ratio, n)
    if problem is not None:
        raise ValueError(problem)
    if odd == "error" and (failure := vispruner_official_failure(tokens, important_ratio, n)) is not None:
        raise ValueError(f"{failure} (odd='error'; odd='ceil' runs the generalisation)")
    check_finite(features=features, cls_attn=cls_attn)  # one host sync, before the rounds

    t_imp, t_div = vispruner_split(tokens, important_ratio)
    important, residual = vispruner_important(cls_attn, t_imp)  # [B, T_imp], [B, N − T_imp]
    unit = F.normalize(features.to(score_dtype(features)), dim=-1)  # [B, N, C]
    diverse = vispruner_diverse(unit, residual, t_div)  # [B, T_div]
    return torch.cat([important, diverse], dim=1).sort(dim=1).values  # [B, T] ascending
