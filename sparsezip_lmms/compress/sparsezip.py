"""SparseZip: hybrid (optionally text-aware) patch scores, dynamic-K dominant tokens, k-means merging.

Per image (CLS kept and counted among the dominant tokens, as in VisionZip):

1. hybrid visual score v_n of every patch n = 1..N (:func:`hybrid_scores`); ranking score
   s_n = v_n (its attention term alone with ``skip_hybrid_attn``) + ``cross_beta · zscore(text_relevance)_n``;
2. K = clamp(round(c + scale · log(Var_n(v_n) + eps)), k_min, k_max) dominant tokens (:func:`dynamic_k`),
   i.e. CLS + the top-(K−1) patches by s;
3. the other patches merged into ``merging.contextual_num`` tokens (k-means on the normalised keys,
   or VisionZip's merge).

See ``docs/ALGORITHMS.md`` for the equations and each switch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import SparseZipConfig
from .cluster import cluster_merge
from .text import zscore
from .types import Compressed, assemble, check_patch_scores, check_scoring_inputs, score_dtype
from .visionzip import top_mask, visionzip_merge

__all__ = ["dynamic_k", "fit_dynamic_k", "hybrid_scores", "hybrid_terms", "minmax", "sparsezip"]

# token weights in the cluster average: min-max score + this floor, so every member counts a little
_WEIGHT_FLOOR = 1e-3


def minmax(x: Tensor, dim: int = -1) -> Tensor:
    """Min–max normalisation to [0, 1] along ``dim``; a constant row maps to zeros."""
    lo = x.amin(dim=dim, keepdim=True)
    span = x.amax(dim=dim, keepdim=True) - lo
    return (x - lo) / span.clamp_min(torch.finfo(x.dtype).eps)


def hybrid_terms(cls_attn: Tensor, keys: Tensor, tau_feat: float, tau_sim: float) -> tuple[Tensor, Tensor, Tensor]:
    """Raw per-patch terms, each [B, N] in the score dtype (float32/float64).

    attention: CLS-row attention averaged over heads;
    entropy:   H(softmax(k̂_n / tau_feat)) / log Ck over the channels of the unit key k̂_n;
    mutual:    1 − H(softmax_{m≠n}(k̂_n·k̂_m / tau_sim)) / log(N−1), a mutual-information proxy
               (low when a patch is similar to many others, high when it has few close neighbours).
    """
    work = score_dtype(cls_attn, keys)
    attn = cls_attn[:, :, 1:].to(work).mean(1)  # [B, N]
    unit = F.normalize(keys[:, 1:].to(work), dim=-1)  # [B, N, Ck]
    n, ck = unit.shape[1], unit.shape[2]

    p = torch.softmax(unit / tau_feat, dim=-1)  # [B, N, Ck]
    entropy = torch.special.entr(p).sum(-1) / math.log(max(ck, 2))  # [B, N]

    sim = unit @ unit.transpose(1, 2)  # [B, N, N] cosine similarities
    eye = torch.eye(n, dtype=torch.bool, device=unit.device)
    q = torch.softmax((sim / tau_sim).masked_fill(eye, float("-inf")), dim=-1)  # [B, N, N], q_nn = 0
    q = torch.nan_to_num(q)  # N == 1: a row of -inf has no distribution
    mutual = 1 - torch.special.entr(q).sum(-1) / math.log(max(n - 1, 2))  # [B, N]
    return attn, entropy, mutual


def hybrid_scores(
    cls_attn: Tensor,
    keys: Tensor,
    alphas: tuple[float, float, float] = (1.0, 0.6, 0.8),
    tau_feat: float = 0.15,
    tau_sim: float = 0.08,
    attention_only: bool = False,
) -> Tensor:
    """s = a_attn·mm(attention) + a_ent·mm(entropy) + a_mut·mm(mutual), [B, N]; mm = per-image min–max.

    ``attention_only`` drops the entropy and mutual terms (and does not compute them).
    """
    a_attn, a_ent, a_mut = alphas
    if attention_only:
        work = score_dtype(cls_attn, keys)
        return a_attn * minmax(cls_attn[:, :, 1:].to(work).mean(1))  # [B, N]
    attn, entropy, mutual = hybrid_terms(cls_attn, keys, tau_feat, tau_sim)
    return a_attn * minmax(attn) + a_ent * minmax(entropy) + a_mut * minmax(mutual)  # [B, N]


def dynamic_k(scores: Tensor, c: float, eps: float, scale: float, k_min: int, k_max: int) -> Tensor:
    """K_b = clamp(round(c + scale · log(Var_n(scores[b, n]) + eps)), k_min, k_max), [B] long.

    Var is the population variance over the N patch scores of each image.
    """
    var = scores.var(dim=1, unbiased=False)  # [B]
    k = torch.round(c + scale * torch.log(var + eps))  # [B]
    return k.clamp(min=k_min, max=k_max).long()


def fit_dynamic_k(
    log_var: Tensor, k_min: int, k_max: int, quantiles: tuple[float, float] = (0.1, 0.9)
) -> tuple[float, float]:
    """(c, scale) that map the given quantiles of observed ``log(Var + eps)`` values to k_min / k_max.

    A calibration helper: collect ``log(scores.var(1, unbiased=False) + eps)`` of the visual hybrid
    scores on a sample of images, then put the returned values into ``dynk.c`` / ``dynk.scale``.
    """
    lo, hi = torch.quantile(log_var.double().flatten(), torch.tensor(quantiles, dtype=torch.float64)).tolist()
    if not hi > lo:
        raise ValueError(f"log_var must spread (quantiles {quantiles} give {lo} and {hi})")
    scale = (k_max - k_min) / (hi - lo)
    return k_min - scale * lo, scale


def sparsezip(
    hidden: Tensor,
    cls_attn: Tensor,
    keys: Tensor,
    config: SparseZipConfig,
    text_relevance: Tensor | None = None,
) -> Compressed:
    """SparseZip compression of a batch: per image CLS + (K_b − 1) dominant patches in ascending source
    position, then up to ``merging.contextual_num`` contextual tokens; padded to the batch maximum.

    hidden [B, 1+N, C]; cls_attn [B, H, 1+N]; keys [B, 1+N, Ck]; text_relevance [B, N] or None (the
    text term is skipped when None or when ``cross_beta`` is 0). Budgets larger than the 1+N tokens
    are clamped for dynamic-K (bounds); a fixed ``dominant`` > 1+N is an error.
    """
    if not isinstance(config, SparseZipConfig):
        raise ValueError(f"config must be a SparseZipConfig, got {type(config).__name__}")
    b, n, _ = check_scoring_inputs(hidden, cls_attn, keys)
    if text_relevance is not None:
        check_patch_scores("text_relevance", text_relevance, b, n, hidden.device)

    a = config.alphas
    alphas = (a.attn, a.entropy, a.mutual)
    # dynamic-K always reads the hybrid score: skip_hybrid_attn changes which patches, not how many
    hybrid = None  # [B, N]
    if not (config.skip_hybrid_attn and config.skip_dynamic_k):
        hybrid = hybrid_scores(cls_attn, keys, alphas, config.tau_feat, config.tau_sim)
    visual = hybrid_scores(cls_attn, keys, alphas, attention_only=True) if config.skip_hybrid_attn else hybrid
    scores = visual  # [B, N] ranking score
    if text_relevance is not None and config.cross_beta > 0:
        scores = visual + config.cross_beta * zscore(text_relevance.to(visual.dtype), dim=1)  # [B, N]

    if config.skip_dynamic_k:
        if config.dominant > n + 1:
            raise ValueError(f"config.dominant ({config.dominant}) exceeds the 1+N={n + 1} tokens of hidden")
        bound = config.dominant
        k = torch.full((b,), bound, dtype=torch.long, device=hidden.device)  # [B]
    else:
        bound = min(config.k_max, n + 1)
        d = config.dynk
        # how many: from the hybrid score without the text term (its unit-variance z-score would
        # flatten log Var)
        k = dynamic_k(hybrid, d.c, d.eps, d.scale, min(config.k_min, bound), bound)  # [B]

    keep_patch = top_mask(scores, k - 1, bound - 1)  # [B, N]
    keep = torch.cat([keep_patch.new_ones(b, 1), keep_patch], dim=1)  # [B, 1+N] CLS always kept
    n_ctx = config.merging.contextual_num
    if config.skip_ctx_merge or n_ctx == 0:
        return assemble(hidden, keep)
    if config.merge == "visionzip":
        ctx, ctx_valid = visionzip_merge(hidden, keys, ~keep, n_ctx)  # [B, S, C], [B, S]
    else:
        m = config.merging
        weights = minmax(scores) + _WEIGHT_FLOOR  # [B, N] > 0
        ctx, ctx_valid = cluster_merge(
            hidden[:, 1:].to(score_dtype(hidden)),
            keys[:, 1:].to(scores.dtype),
            ~keep_patch,
            weights,
            n_ctx,
            init_factor=m.kmeans_init_factor,
            iters=m.kmeans_iters,
            agglomerative=m.agglomerative,
            seed=config.seed,
        )  # [B, S, C], [B, S]
    return assemble(hidden, keep, ctx, ctx_valid)
