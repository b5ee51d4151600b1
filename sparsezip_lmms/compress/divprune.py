"""DivPrune (Alvar et al., CVPR 2025): max–min diversity selection of visual tokens, batched.

Reproduces the official code (vbdi/divprune, ``LLaVA/llava/model/llava_arch.py``:
``LlavaMetaForCausalLM.DivPrune`` and ``pairwise_cosine_similarity``) on a batch of images at once
(the official function takes one ``[N, D]`` image). Stages, each a small pure function:

1. :func:`divprune_distance` — cosine distance ``d = 1 − x̂ x̂ᵀ`` per image, ``x̂ = x / ‖x‖`` per token.
2. :func:`divprune_step0_scores` — step-0 score of token j: the second-smallest entry of column j of
   ``d``, the diagonal included (the distance to its nearest other token; 0 on an exact duplicate).
3. :func:`divprune_greedy` — step 0 picks the argmax of those scores; step t >= 1 scores every token by
   its minimum distance to the tokens chosen so far, ``min_c d[c, j]`` (row = chosen token, as the
   official ``index_select`` on rows), and picks the argmax. A running minimum replaces the official
   recomputation over all chosen rows; min is exact, so the values are identical.
4. :func:`divprune_budget` — ``k = int(round(ratio · N))`` with Python's ``round`` (half to even).
5. :func:`divprune_keep_positions` — the LLaVA wiring: leading tokens, chosen image tokens and text
   positions of the merged sequence, ascending.

Official quirks reproduced by default:

* ties go to the lowest index (``torch.argmax``);
* **chosen tokens are not masked**: a chosen token's score is its self-distance ``1 − x̂·x̂``
  (rounding noise, exactly 0 on exact data), so once no unchosen token is farther from the chosen set
  than that, an already chosen token is picked again. With exact duplicates every score becomes 0
  after the last distinct vector and index 0 is repeated for every remaining step; the order then
  holds repeated indices and :func:`divprune_keep_positions` keeps such a token several times;
* ``k = 0`` is a valid budget (``ratio · N`` rounds to 0): no image token is kept, the order is ``[B, 0]``.

Deviations, all off by default:

* ``mask_chosen=True`` (:func:`divprune_select`, :func:`divprune_greedy`): chosen tokens score −inf,
  so the k picks are distinct. It agrees with the official order until the official code would repeat
  a token (on the official fixtures: everywhere except the exact-duplicate budgets past the number of
  distinct vectors).
* ``compute_dtype``: the official code does no cast and runs in the input dtype (float16 in the
  published LLaVA runs), which is the default (``None``). Passing ``torch.float32``/``torch.float64``
  computes the distances wider; on the official fixtures the official code in float32 gives the same
  order as in float64, float16/bfloat16 do not (their self-distance noise, ±1e-3 / ±8e-3, triggers
  repeats much earlier).

Validation (not in the official code, which would fail or produce NaN): ``k`` must be an int in
``[0, N]`` (``k > N`` would force repeats), ``N >= 2`` (step 0 needs a second-smallest distance), and
``features`` must be finite with no zero-norm token (its distance row would be NaN). These checks cost
one host sync before the greedy loop; the loop itself has none.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .types import check_finite, check_int

__all__ = [
    "divprune_budget",
    "divprune_distance",
    "divprune_greedy",
    "divprune_keep_positions",
    "divprune_select",
    "divprune_select_ragged",
    "divprune_step0_scores",
]


def divprune_budget(ratio: float, n: int) -> int:
    """Official budget rule: ``int(round(ratio * n))`` (Python ``round``, half to even).

    ``n`` is the number of image tokens (576 for LLaVA-1.5). ``ratio`` must be finite, in ``[0, 1]``;
    0 (or a ratio rounding to 0) gives k = 0: no image token kept, as in the official code.
    """
    check_int("n", n, 1)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise ValueError(f"ratio must be a float, got {type(ratio).__name__}")
    if not math.isfinite(ratio) or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    return int(round(ratio * n))


def divprune_distance(features: Tensor) -> Tensor:
    """Cosine distance of every pair of tokens: ``1 − x̂ x̂ᵀ`` per image.

    features [B, N, D] -> [B, N, N], in the dtype of ``features`` (the official code does not cast).
    ``x̂ = x / ‖x‖`` (a plain division, as the official code; a zero-norm token gives NaN).
    """
    unit = features / features.norm(dim=-1, keepdim=True)  # [B, N, D]
    return 1.0 - unit @ unit.transpose(1, 2)  # [B, N, N]


def divprune_step0_scores(distance: Tensor, valid: Tensor | None = None) -> Tensor:
    """Step-0 score of each token: the second-smallest entry of its column of ``distance``.

    distance [B, N, N] (N >= 2) -> [B, N]. The diagonal (self-distance, ~0) is included, so this is
    normally the distance to the nearest other token, and exactly 0 when the token has a duplicate.
    ``valid`` [B, N] bool (None: all): rows of padding tokens are left out of the columns' minima.
    """
    if valid is not None:
        distance = distance.masked_fill(~valid[:, :, None], float("inf"))  # padding rows never the minimum
    return distance.topk(2, dim=1, largest=False).values[:, 1]  # [B, 2, N] -> [B, N]


def divprune_greedy(
    distance: Tensor, k: int, mask_chosen: bool = False, valid: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Max–min diversity greedy on a distance matrix, batched, on device.

    distance [B, N, N]; k >= 0 steps. Returns (order [B, k] long: picks in selection order,
    gain [B, k]: the winning score of each step, in the dtype of ``distance``).
    Ties: lowest index. ``mask_chosen=False`` (official): chosen tokens stay candidates with their
    self-distance as score; ``True``: chosen tokens score −inf (distinct picks while k <= N).
    ``valid`` [B, N] bool (None: all): images of different lengths padded to N; padding tokens are
    never picked and never count (each row then runs as the official code on its valid tokens alone).
    """
    b, n, _ = distance.shape
    order = torch.empty(b, k, dtype=torch.long, device=distance.device)  # [B, k]
    gain = distance.new_empty(b, k)  # [B, k]
    if k == 0:
        return order, gain
    score = divprune_step0_scores(distance, valid)  # [B, N]
    chosen = torch.zeros(b, n, dtype=torch.bool, device=distance.device) if mask_chosen else None  # [B, N]
    min_dist = score  # [B, N] running min over the chosen rows, from step 1 on
    for step in range(k):
        candidate = score.masked_fill(chosen, float("-inf")) if mask_chosen else score  # [B, N]
        if valid is not None:
            candidate = candidate.masked_fill(~valid, float("-inf"))  # also hides a padding token's NaN
        pick = candidate.argmax(dim=1, keepdim=True)  # [B, 1] lowest index among the maxima
        order[:, step] = pick[:, 0]
        gain[:, step] = candidate.gather(1, pick)[:, 0]
        if mask_chosen:
            chosen = chosen.scatter(1, pick, True)
        row = distance.gather(1, pick.unsqueeze(-1).expand(b, 1, n))[:, 0]  # [B, N] = d[pick, :]
        min_dist = row if step == 0 else torch.minimum(min_dist, row)  # [B, N] min over chosen rows
        score = min_dist
    return order, gain


def _check_features(features: object) -> tuple[int, int, int]:
    if not isinstance(features, Tensor):
        raise ValueError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.dim() != 3:
        raise ValueError(f"features must be [B, N, D], got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"features must be a floating-point tensor, got {features.dtype}")
    b, n, d = features.shape
    if b < 1 or n < 2 or d < 1:
        raise ValueError(
            f"features must be [B>=1, N>=2, D>=1] (DivPrune's step 0 needs N >= 2), got {tuple(features.shape)}"
        )
    return b, n, d


def divprune_select(
    features: Tensor,
    k: int,
    *,
    mask_chosen: bool = False,
    compute_dtype: torch.dtype | None = None,
) -> Tensor:
    """DivPrune's selection order: k tokens of each image, picked by max–min cosine diversity.

    features [B, N, D] (LLaVA: post-projector image tokens, no CLS); k in ``[0, N]``.
    Returns LongTensor [B, k] in selection order (``.sort(dim=1).values`` is the order LLaVA keeps).
    Official defaults: lowest-index ties, chosen tokens not masked (exact duplicates lead to repeats),
    input dtype throughout. ``mask_chosen`` / ``compute_dtype``: see the module docstring.
    """
    _, n, _ = _check_features(features)
    check_int("k", k, 0)
    if k > n:
        raise ValueError(f"k ({k}) exceeds the N={n} tokens of features")
    if compute_dtype is not None:
        if not (isinstance(compute_dtype, torch.dtype) and compute_dtype.is_floating_point):
            raise ValueError(f"compute_dtype must be a floating-point torch.dtype, got {compute_dtype!r}")
        features = features.to(compute_dtype)
    check_finite(features=features)
    if bool((features.norm(dim=-1) == 0).any()):  # host sync, once, before the loop
        raise ValueError("features has a zero-norm token (its cosine distance would be NaN)")
    order, _ = divprune_greedy(divprune_distance(features), k, mask_chosen=mask_chosen)
    return order


def divprune_select_ragged(
    features: Tensor,
    valid: Tensor,
    k: Tensor,
    *,
    mask_chosen: bool = False,
    compute_dtype: torch.dtype | None = None,
) -> Tensor:
    """DivPrune on images of different lengths in one batch (LLaVA-NeXT's packed sequences).

    features [B, N_max, D] padded; valid [B, N_max] bool (each row's tokens first, then padding);
    k [B] long: tokens to pick in each row, in ``[0, valid tokens of the row]``. Returns LongTensor
    [B, k_max] in selection order, −1 past a row's own k. Row b equals
    ``divprune_select(features[b:b+1, :n_b], k[b])`` (``n_b`` its valid tokens).
    """
    b, n_max, _ = _check_features(features)
    if not isinstance(valid, Tensor) or valid.dtype != torch.bool or tuple(valid.shape) != (b, n_max):
        raise ValueError(f"valid must be a bool tensor [B={b}, N={n_max}]")
    if not isinstance(k, Tensor) or k.dtype != torch.long or tuple(k.shape) != (b,):
        raise ValueError(f"k must be a long tensor [B={b}] of per-row budgets")
    if compute_dtype is not None:
        features = features.to(compute_dtype)
    lengths = valid.sum(dim=1)  # [B]
    kept_features = features[valid]  # [sum n_b, D]
    check_finite(features=kept_features)
    # host syncs, once, before the loop: the checks and the number of steps
    if bool(((k < 0) | (k > lengths)).any()):
        raise ValueError(f"k {k.tolist()} must be in [0, valid tokens per row {lengths.tolist()}]")
    if bool((lengths < 2).any()):
        raise ValueError(f"every row needs at least 2 valid tokens (DivPrune's step 0), got {lengths.tolist()}")
    if bool((kept_features.norm(dim=-1) == 0).any()):
        raise ValueError("features has a zero-norm token (its cosine distance would be NaN)")
    k_max = int(k.max())
    order, _ = divprune_greedy(divprune_distance(features), k_max, mask_chosen=mask_chosen, valid=valid)
    past = torch.arange(k_max, device=order.device)[None, :] >= k[:, None]  # [B, k_max]
    return order.masked_fill(past, -1)


def divprune_keep_positions(order: Tensor, start: int, n_image: int, length: int) -> Tensor:
    """Positions LLaVA keeps in a merged sequence after DivPrune, ascending (official wiring).

    order [B, k] (image-token indices from :func:`divprune_select`); the image occupies positions
    ``start … start + n_image − 1`` of a sequence of ``length`` (official: ``start = 35``, the
    hard-coded system-prompt length). Returns [B, start + k + length − start − n_image]:
    ``sort(cat(arange(start), order + start, arange(start + n_image, length)))``. A repeated pick is
    kept repeatedly, as in the official code.
    """
    check_int("start", start, 0)
    check_int("n_image", n_image, 1)
    check_int("length", length, start + n_image)
    b = order.shape[0]
    device = order.device
    lead = torch.arange(start, device=device).expand(b, start)  # [B, start]
    tail = torch.arange(start + n_image, length, device=device).expand(b, length - start - n_image)  # [B, n_text]
    return torch.cat([lead, order + start, tail], dim=1).sort(dim=1).values  # [B, start + k + n_text]
