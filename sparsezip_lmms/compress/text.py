"""Question relevance of each patch, from the LLaVA projector's own weights (nothing learned here).

LLaVA's projector maps a CLIP feature v to the LLM embedding space:
``y = W2 · act(W1 · v + b1) + b2``. Two comparison spaces:

* ``vision``: each question token embedding t is pulled back to CLIP space with the transposes,
  ``q = W1ᵀ · W2ᵀ · (t − b2)``, and compared with the patch features v_n (cheap: Lt tokens). The
  product ``(W2 · W1)ᵀ`` depends only on the projector: :func:`projector_pull_back` folds it once
  (a ``[D, C]`` matrix) and a caller that keeps it pays ``D · C`` per question token instead of
  ``D · Dh + Dh · C``.
* ``llm``: the patches are pushed forward through the projector, ``p_n = projector(v_n)``, and
  compared with t in the LLM embedding space (exact, costs one projector pass over N patches).

relevance[b, n] = masked mean over question tokens t of cos(patch_n, token_t).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dtypes import at_least_float32

__all__ = ["PullBack", "projector_pull_back", "seed_key_relevance", "seed_zscore", "text_relevance", "zscore"]

_SPACES = ("vision", "llm")


def zscore(x: Tensor, dim: int = -1, eps: float = 1e-6) -> Tensor:
    """(x − mean) / std along ``dim`` (population std); a constant row maps to zeros."""
    mean = x.mean(dim=dim, keepdim=True)
    std = x.std(dim=dim, keepdim=True, unbiased=False) if x.shape[dim] > 1 else torch.zeros_like(mean)
    return (x - mean) / std.clamp_min(eps)


def seed_zscore(x: Tensor, dim: int = -1) -> Tensor:
    """The seed's z-score: (x − mean) / (unbiased std + 1e-12) along ``dim``."""
    return (x - x.mean(dim=dim, keepdim=True)) / (x.std(dim=dim, keepdim=True) + 1e-12)


@torch.no_grad()
def seed_key_relevance(keys: Tensor, text_embeds: Tensor, text_mask: Tensor | None = None) -> Tensor:
    """The seed's text relevance (``text_source: seed_keys``), ``[B, L]`` float32 over all L tokens (CLS first).

    t = masked mean of the question's LLM input embeddings [B, T, D]; t̂ = t / ‖t‖ over all D dims, cut to
    its first Ck dims (zero-padded when D < Ck); r_l = ⟨t̂[:Ck], k_l / (‖k_l‖ + 1e-12)⟩ with keys [B, L, Ck].
    Reproduction only: for LLaVA-1.5 it compares the first 64 of 4096 LLM dims with CLIP key dims, an
    alignment nothing trained. Float32 whatever the input dtype, as the seed's ``.float()``.
    """
    for name, t in (("keys", keys), ("text_embeds", text_embeds)):
        if not isinstance(t, Tensor) or t.dim() != 3:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 3-D tensor, got {got}")
    b, _, ck = keys.shape
    if text_mask is None:
        text_mask = torch.ones(text_embeds.shape[:2], dtype=torch.bool, device=text_embeds.device)
    if text_embeds.shape[0] != b or tuple(text_mask.shape) != tuple(text_embeds.shape[:2]):
        raise ValueError(
            f"text_embeds [B, T, D] and text_mask [B, T] must match keys' B={b}, "
            f"got {tuple(text_embeds.shape)} and {tuple(text_mask.shape)}"
        )
    weights = text_mask.float()  # [B, T]
    t = (text_embeds.float() * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp_min(1)  # [B, D]
    t = t / (t.norm(dim=-1, keepdim=True) + 1e-12)
    t = F.pad(t[:, :ck], (0, max(0, ck - t.shape[1])))  # [B, Ck] first Ck dims
    k = keys.float()
    unit = k / (k.norm(dim=-1, keepdim=True) + 1e-12)  # [B, L, Ck]
    return (unit @ t.unsqueeze(-1)).squeeze(-1)  # [B, L]


def _projector_linears(projector: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    l1, l2 = getattr(projector, "linear_1", None), getattr(projector, "linear_2", None)
    if not isinstance(l1, nn.Linear) or not isinstance(l2, nn.Linear):
        raise ValueError(
            "projector must be a LLaVA multi-modal projector with nn.Linear linear_1 and linear_2, "
            f"got {type(projector).__name__}"
        )
    return l1, l2


@dataclass(frozen=True)
class PullBack:
    """The projector's linear part folded for question pull-back: ``q = t · matrix − offset``.

    matrix [D, C] = ``W2 · W1`` (row-vector form of ``W1ᵀ W2ᵀ``); offset [C] = ``b2 · matrix``
    (zeros without a bias). Float32, or float64 for a float64 projector.
    """

    matrix: Tensor  # [D, C]
    offset: Tensor  # [C]

    def __call__(self, text_embeds: Tensor) -> Tensor:
        """[B, Lt, D] LLM embeddings → [B, Lt, C] CLIP space."""
        return text_embeds.to(self.matrix.dtype) @ self.matrix - self.offset


@torch.no_grad()
def projector_pull_back(projector: nn.Module) -> PullBack:
    """Fold a LLaVA projector's ``W2 · W1`` (and bias) once, for :func:`text_relevance`'s ``pull_back``."""
    l1, l2 = _projector_linears(projector)
    work = at_least_float32(l1.weight.dtype)
    matrix = l2.weight.to(work) @ l1.weight.to(work)  # [D, Dh] @ [Dh, C] -> [D, C]
    offset = l2.bias.to(work) @ matrix if l2.bias is not None else matrix.new_zeros(matrix.shape[1])  # [C]
    return PullBack(matrix, offset)


def _pull_back(text_embeds: Tensor, l1: nn.Linear, l2: nn.Linear) -> Tensor:
    """[B, Lt, D] LLM embeddings → [B, Lt, C] CLIP space via W2ᵀ then W1ᵀ (adjoint of the projector)."""
    t = text_embeds.to(l2.weight.dtype)
    if l2.bias is not None:
        t = t - l2.bias
    u = t @ l2.weight  # [B, Lt, Dh]  (W2ᵀ t)
    return u.to(l1.weight.dtype) @ l1.weight  # [B, Lt, C]  (W1ᵀ u)


@torch.no_grad()
def text_relevance(
    patch_hidden: Tensor,
    text_embeds: Tensor,
    text_mask: Tensor,
    projector: nn.Module,
    space: str = "vision",
    pull_back: PullBack | None = None,
) -> Tensor:
    """Relevance of each patch to the question, ``[B, N]`` (float32, or float64 for float64 inputs).

    patch_hidden [B, N, C]: CLIP feature-layer patch states (the projector's input, CLS excluded);
    text_embeds [B, Lt, D]: the LLM input embeddings of the question tokens (padded);
    text_mask [B, Lt] bool: True for question tokens to use. An image without any gets zeros.
    pull_back: ``projector_pull_back(projector)``, kept by the caller across requests (``vision``
    space only; without it the two transposes are applied per call).
    """
    if space not in _SPACES:
        raise ValueError(f"space must be one of {_SPACES}, got {space!r}")
    for name, t, nd in (("patch_hidden", patch_hidden, 3), ("text_embeds", text_embeds, 3), ("text_mask", text_mask, 2)):
        if not isinstance(t, Tensor) or t.dim() != nd:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a {nd}-D tensor, got {got}")
    if text_mask.dtype != torch.bool:
        raise ValueError(f"text_mask must be a bool tensor, got {text_mask.dtype}")
    b, _, c = patch_hidden.shape
    if text_embeds.shape[0] != b or tuple(text_mask.shape) != tuple(text_embeds.shape[:2]):
        raise ValueError(
            f"text_embeds [B, Lt, D] and text_mask [B, Lt] must match patch_hidden's B={b}, "
            f"got {tuple(text_embeds.shape)} and {tuple(text_mask.shape)}"
        )
    l1, l2 = _projector_linears(projector)
    if l1.in_features != c or l2.out_features != text_embeds.shape[-1]:
        raise ValueError(
            f"projector maps {l1.in_features} -> {l2.out_features}, but patch_hidden has C={c} "
            f"and text_embeds D={text_embeds.shape[-1]}"
        )
    if pull_back is not None and (space != "vision" or tuple(pull_back.matrix.shape) != (l2.out_features, c)):
        raise ValueError(
            f"pull_back is for space='vision' with a [{l2.out_features}, {c}] matrix, "
            f"got space={space!r} and {tuple(pull_back.matrix.shape)}"
        )
    work = at_least_float32(torch.promote_types(patch_hidden.dtype, text_embeds.dtype))

    if space == "vision":
        patches = patch_hidden.to(work)  # [B, N, C]
        query = (pull_back(text_embeds) if pull_back is not None else _pull_back(text_embeds, l1, l2)).to(work)  # [B, Lt, C]
    else:
        patches = projector(patch_hidden.to(l1.weight.dtype)).to(work)  # [B, N, D]
        query = text_embeds.to(work)  # [B, Lt, D]

    # mean of cosines = unit patch · mean of unit question tokens
    weights = text_mask.to(work)  # [B, Lt]
    unit_q = F.normalize(query, dim=-1) * weights.unsqueeze(-1)  # [B, Lt, E]
    mean_q = unit_q.sum(1) / weights.sum(1, keepdim=True).clamp_min(1)  # [B, E]
    return (F.normalize(patches, dim=-1) @ mean_q.unsqueeze(-1)).squeeze(-1)  # [B, N]
