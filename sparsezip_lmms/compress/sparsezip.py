"""SparseZip: hybrid (optionally text-aware) patch scores, dynamic-K dominant tokens, k-means merging.

Per image (CLS kept and counted among the dominant tokens, as in VisionZip):

1. hybrid visual score v_n of every patch n = 1..N (:func:`hybrid_scores`); ranking score
   s_n = v_n (its attention term alone with ``skip_hybrid_attn``) + ``cross_beta · zscore(text_relevance)_n``;
2. K = clamp(round(c + scale · log(Var_n(v_n) + eps)), k_min, k_max) dominant tokens (:func:`dynamic_k`),
   i.e. CLS + the top-(K−1) patches by s;
3. the other patches merged into ``merging.contextual_num`` tokens (k-means on the normalised keys,
   or VisionZip's merge).

On LLaVA-NeXT the crops of one image can share one budget (``groups``, the ``next_budget: per_image``
key): K is read from the image's patch scores pooled over its crops, and the image's
crops x (K - CLS) dominant patches are ranked jointly across them (:func:`grouped_log_variance`,
:func:`spread_group_budget`).

Config keys switch each step to the seed's executed code (W1nd55/VisionZip-exp 7a86f65,
``model_configs/sparsezip_seed_*.yaml``). See ``docs/ALGORITHMS.md`` for the equations and each switch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import SparseZipConfig
from .cluster import cluster_merge
from .text import seed_zscore, zscore
from .types import Compressed, assemble, check_patch_scores, check_scoring_inputs, merge_members, score_dtype
from .visionzip import top_mask, visionzip_merge

__all__ = [
    "SparseZipTrace",
    "dynamic_k",
    "dynamic_k_from_statistic",
    "dynamic_k_statistic",
    "fit_dynamic_k",
    "grouped_log_variance",
    "k_from_log_var",
    "log_variance",
    "hybrid_scores",
    "hybrid_terms",
    "minmax",
    "normalise",
    "sparsezip",
    "sparsezip_trace",
    "spread_group_budget",
]

# token weights in the cluster average: min-max score + this floor, so every member counts a little
_WEIGHT_FLOOR = 1e-3


def minmax(x: Tensor, dim: int = -1) -> Tensor:
    """Min–max normalisation to [0, 1] along ``dim``; a constant row maps to zeros."""
    lo = x.amin(dim=dim, keepdim=True)
    span = x.amax(dim=dim, keepdim=True) - lo
    return (x - lo) / span.clamp_min(torch.finfo(x.dtype).eps)


def normalise(x: Tensor, mode: str, dim: int = -1) -> Tensor:
    """Per-image normalisation of a score term: ``minmax`` (:func:`minmax`) or ``zscore`` (the seed's,
    unbiased std + 1e-12, :func:`seed_zscore`)."""
    if mode == "minmax":
        return minmax(x, dim)
    if mode == "zscore":
        return seed_zscore(x, dim)
    raise ValueError(f"score normalisation must be 'minmax' or 'zscore', got {mode!r}")


def hybrid_terms(
    cls_attn: Tensor,
    keys: Tensor,
    tau_feat: float,
    tau_sim: float,
    key_dtype: torch.dtype | None = None,
    raw_entropy: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Raw per-patch terms, each [B, N]: attention in the score dtype (float32/float64), entropy and
    mutual in ``key_dtype`` (default: the score dtype; float32 = the seed's ``keys.float()``).

    attention: CLS-row attention averaged over heads;
    entropy:   H(softmax(k̂_n / tau_feat)) / log Ck over the channels of the unit key k̂_n (of the raw
               key k_n with ``raw_entropy``, as the seed);
    mutual:    1 − H(softmax_{m≠n}(k̂_n·k̂_m / tau_sim)) / log(N−1), a mutual-information proxy
               (low when a patch is similar to many others, high when it has few close neighbours).
    """
    work = score_dtype(cls_attn, keys)
    attn = cls_attn[:, :, 1:].to(work).mean(1)  # [B, N]
    unit = F.normalize(keys[:, 1:].to(key_dtype or work), dim=-1)  # [B, N, Ck]
    n, ck = unit.shape[1], unit.shape[2]

    # raw_entropy: the seed's softmax of the raw (not unit) keys over the channels
    p = torch.softmax((keys[:, 1:].to(unit.dtype) if raw_entropy else unit) / tau_feat, dim=-1)  # [B, N, Ck]
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
    norm: str = "minmax",
    key_dtype: torch.dtype | None = None,
    raw_entropy: bool = False,
) -> Tensor:
    """s = a_attn·nm(attention) + a_ent·nm(entropy) + a_mut·nm(mutual), [B, N]; nm = per-image
    :func:`normalise` (``minmax`` or the seed's ``zscore``).

    ``attention_only`` drops the entropy and mutual terms (and does not compute them).
    """
    a_attn, a_ent, a_mut = alphas
    if attention_only:
        work = score_dtype(cls_attn, keys)
        return a_attn * normalise(cls_attn[:, :, 1:].to(work).mean(1), norm)  # [B, N]
    attn, entropy, mutual = hybrid_terms(cls_attn, keys, tau_feat, tau_sim, key_dtype, raw_entropy)
    return a_attn * normalise(attn, norm) + a_ent * normalise(entropy, norm) + a_mut * normalise(mutual, norm)  # [B, N]


def dynamic_k(scores: Tensor, c: float, eps: float, scale: float, k_min: int, k_max: int) -> Tensor:
    """K_b = clamp(round(c + scale · log(Var_n(scores[b, n]) + eps)), k_min, k_max), [B] long.

    Var is the population variance over the N patch scores of each image.
    """
    return k_from_log_var(log_variance(scores, eps), c, scale, k_min, k_max)


def log_variance(scores: Tensor, eps: float, groups: Tensor | None = None) -> Tensor:
    """The statistic dynamic K reads: log(Var_n(scores[b, n]) + eps), [B] (population variance); with
    ``groups``, each row's group's pooled statistic (:func:`grouped_log_variance`)."""
    if groups is not None:
        return grouped_log_variance(scores, groups, eps)
    return torch.log(scores.var(dim=1, unbiased=False) + eps)


def _check_groups(groups: Tensor, b: int, device: torch.device) -> None:
    if groups.shape != (b,) or groups.dtype != torch.long or groups.device != device:
        raise ValueError(f"groups must be a [{b}] long tensor on {device} (ids in 0..{b - 1}), got {tuple(groups.shape)} {groups.dtype}")


def grouped_log_variance(scores: Tensor, groups: Tensor, eps: float) -> Tensor:
    """log(Var + eps) of the scores pooled over every row of a group, [B] (each row gets its group's).

    scores [B, N]; groups [B] long, group ids in 0..B-1 (the crops of one image share an id). The
    population variance over the group's rows·N scores, two-pass: within-row spread plus the spread
    of the row means. One group per row is :func:`log_variance`.
    """
    b, n = scores.shape
    _check_groups(groups, b, scores.device)
    # sums per group as a product with the [G, B] membership matrix: deterministic on CUDA, where a
    # floating-point index_add_ accumulates with atomics in a varying order
    member = (groups[None, :] == torch.arange(b, device=scores.device)[:, None]).to(scores.dtype)  # [G, B]
    rows = member.sum(dim=1)  # [G]
    size = (rows * n).clamp_min(1)  # [G] scores per group (G = B bins, unused bins empty)
    mean = (member @ scores.sum(dim=1)) / size  # [G]
    square = ((scores - mean[groups, None]) ** 2).sum(dim=1)  # [B]
    var = (member @ square) / size  # [G]
    return torch.log(var + eps)[groups]  # [B]


def spread_group_budget(scores: Tensor, groups: Tensor, budget: Tensor) -> Tensor:
    """[B, N] bool: each group's ``budget`` highest scores, ranked jointly over all rows of the group.

    scores [B, N]; groups [B] long (ids in 0..B-1); budget [B] long, each row's share of its group's
    total (the total is their sum, so a group of C rows with K each takes C·K patches wherever they
    score highest). Ties keep the lower row, then the lower position. No host sync.
    """
    b, n = scores.shape
    _check_groups(groups, b, scores.device)
    total = torch.zeros(b, dtype=torch.long, device=scores.device).index_add_(0, groups, budget)  # [G]
    row_of = torch.arange(b, device=scores.device).repeat_interleave(n)  # [B·N]
    order = torch.sort(scores.flatten(), descending=True, stable=True).indices  # [B·N] by score
    order = order[torch.sort(groups[row_of[order]], stable=True).indices]  # grouped, by score within a group
    group_sorted = groups[row_of[order]]  # [B·N]
    sizes = torch.zeros(b, dtype=torch.long, device=scores.device).index_add_(0, groups, torch.full_like(budget, n))
    starts = torch.cumsum(sizes, 0) - sizes  # [G] first slot of each group
    rank = torch.arange(b * n, device=scores.device) - starts[group_sorted]  # [B·N] rank within the group
    take = rank < total[group_sorted]  # [B·N]
    return torch.zeros(b * n, dtype=torch.bool, device=scores.device).scatter_(0, order, take).view(b, n)


def k_from_log_var(log_var: Tensor, c: float, scale: float, k_min: int, k_max: int) -> Tensor:
    """clamp(round(c + scale · log_var), k_min, k_max), [B] long."""
    return torch.round(c + scale * log_var).clamp(min=k_min, max=k_max).long()


def _k_bounds(config: SparseZipConfig, n: int) -> tuple[int, int]:
    """(lower, upper) bound of dynamic K on n patches (CLS counted when ``k_counts_cls``)."""
    lo, hi = config.k_min, config.k_max
    if config.dynk.widen_to_dominant:  # the seed's bounds
        lo, hi = min(lo, config.dominant), max(hi, config.dominant)
    bound = min(hi, n + (1 if config.k_counts_cls else 0))
    return min(lo, bound), bound


def dynamic_k_statistic(cls_attn: Tensor, keys: Tensor, config: SparseZipConfig, groups: Tensor | None = None) -> Tensor:
    """``log(Var(scores) + dynk.eps)`` [B] of the score dynamic K reads under ``config``, without a text
    term (what ``python -m sparsezip_lmms calibrate`` collects on a task's images); with ``groups``
    (:func:`sparsezip`), each row gets its group's pooled statistic."""
    a = config.alphas
    attention_only = config.skip_hybrid_attn and config.dynk.source == "ranking"
    scores = hybrid_scores(
        cls_attn, keys, (a.attn, a.entropy, a.mutual), config.tau_feat, config.tau_sim, attention_only=attention_only,
        norm=config.score_norm, key_dtype=torch.float32 if config.key_float32 else None,
        raw_entropy=config.entropy_keys == "raw",
    )  # fmt: skip
    return log_variance(scores, config.dynk.eps, groups)


def dynamic_k_from_statistic(log_var: Tensor, config: SparseZipConfig, n: int = 576) -> Tensor:
    """The K [B] that ``sparsezip`` gives images whose statistic is ``log_var`` (n patches each)."""
    lo, hi = _k_bounds(config, n)
    return k_from_log_var(log_var, config.dynk.c, config.dynk.scale, lo, hi).clamp_min(1)


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


@dataclass(frozen=True)
class SparseZipTrace:
    """What :func:`sparsezip_trace` computed on the way (for parity checks and analysis).

    ``scores`` [B, N]: the ranking score of patches 1..N; ``k`` [B]: dominant patches (CLS not counted);
    ``top`` [B, Kmax]: positions 1..N of the dominant patches in descending score order (−1 padding);
    ``labels`` [B, N]: contextual cluster / slot of each non-dominant patch (−1 for dominant patches; k-means
    ids ≥ contextual_num produce nothing); ``kmeans_init`` [B, K0] or None: the replayed seeds.
    """

    compressed: Compressed
    scores: Tensor
    k: Tensor
    top: Tensor
    labels: Tensor | None


def sparsezip(
    hidden: Tensor,
    cls_attn: Tensor,
    keys: Tensor,
    config: SparseZipConfig,
    text_relevance: Tensor | None = None,
    kmeans_init: Tensor | None = None,
    kmeans_reinit: Tensor | None = None,
    groups: Tensor | None = None,
) -> Compressed:
    """SparseZip compression of a batch: per image CLS + the dominant patches in ascending source
    position, then up to ``merging.contextual_num`` contextual tokens; padded to the batch maximum.

    hidden [B, 1+N, C]; cls_attn [B, H, 1+N]; keys [B, 1+N, Ck]; text_relevance [B, N] or None (the
    text term is skipped when None or when ``cross_beta`` is 0). Budgets larger than the 1+N tokens
    are clamped for dynamic-K (bounds); a fixed ``dominant`` beyond the tokens is an error.
    ``kmeans_init`` [B, K0] / ``kmeans_reinit`` [B, R] long replay recorded k-means++ seeds / empty-cluster
    re-seeds (indices into each image's remaining list, ascending position, in draw order); without them
    the draws come from a CPU generator seeded by ``config.seed`` (deterministic).
    ``groups`` [B] long (ids in 0..B-1): rows sharing an id (the crops of one LLaVA-NeXT image) share
    one budget: K from their pooled scores (or ``dominant``), their members x (K - CLS) dominant
    patches chosen jointly over them (:func:`spread_group_budget`); every row keeps its CLS.
    """
    return sparsezip_trace(hidden, cls_attn, keys, config, text_relevance, kmeans_init, kmeans_reinit, groups).compressed


def sparsezip_trace(
    hidden: Tensor,
    cls_attn: Tensor,
    keys: Tensor,
    config: SparseZipConfig,
    text_relevance: Tensor | None = None,
    kmeans_init: Tensor | None = None,
    kmeans_reinit: Tensor | None = None,
    groups: Tensor | None = None,
) -> SparseZipTrace:
    """:func:`sparsezip` and its intermediate decisions (:class:`SparseZipTrace`)."""
    if not isinstance(config, SparseZipConfig):
        raise ValueError(f"config must be a SparseZipConfig, got {type(config).__name__}")
    b, n, _ = check_scoring_inputs(hidden, cls_attn, keys)
    if text_relevance is not None:
        check_patch_scores("text_relevance", text_relevance, b, n, hidden.device)

    a = config.alphas
    alphas = (a.attn, a.entropy, a.mutual)
    norm = config.score_norm
    key_dtype = torch.float32 if config.key_float32 else None
    d = config.dynk
    k_reads_visual = not config.skip_dynamic_k and d.source == "visual"
    # dynamic-K reads the hybrid score (source visual): skip_hybrid_attn changes which patches, not how many
    hybrid = None  # [B, N]
    if not config.skip_hybrid_attn or k_reads_visual:
        hybrid = hybrid_scores(
            cls_attn, keys, alphas, config.tau_feat, config.tau_sim, norm=norm, key_dtype=key_dtype,
            raw_entropy=config.entropy_keys == "raw",
        )
    visual = hybrid_scores(cls_attn, keys, alphas, attention_only=True, norm=norm) if config.skip_hybrid_attn else hybrid
    scores = visual  # [B, N] ranking score
    if text_relevance is not None and config.cross_beta > 0:
        rel = text_relevance.to(visual.dtype)
        z = seed_zscore(rel, dim=1) if norm == "zscore" else zscore(rel, dim=1)  # [B, N]
        if config.text_weight == "relative":  # the text term's spread = cross_beta × the visual spread
            z = z * visual.std(dim=1, unbiased=False, keepdim=True)
        scores = visual + config.cross_beta * z  # [B, N]

    cls_off = 1 if config.k_counts_cls else 0  # CLS among the K dominant tokens
    if config.skip_dynamic_k:
        if config.dominant - cls_off > n:
            raise ValueError(f"config.dominant ({config.dominant}) exceeds the {n + cls_off} tokens of hidden")
        bound = config.dominant
        k = torch.full((b,), bound, dtype=torch.long, device=hidden.device)  # [B]
    else:
        lower, bound = _k_bounds(config, n)
        # how many: by default from the hybrid score without the text term (its unit-variance z-score
        # would flatten log Var); source "ranking" reads the ranking score as the seed
        source = hybrid if k_reads_visual else scores
        k = k_from_log_var(log_variance(source, d.eps, groups), d.c, d.scale, lower, bound).clamp_min(1)  # [B]

    n_patch = k - cls_off  # [B] dominant patches
    if groups is None:
        keep_patch = top_mask(scores, n_patch, bound - cls_off)  # [B, N]
    else:  # one budget per group, ranked jointly: a row takes any share of it, up to its N patches
        keep_patch = spread_group_budget(scores, groups, n_patch)  # [B, N]
        n_patch = keep_patch.sum(dim=1)  # [B]
        k = n_patch + cls_off
        bound = min(n, b * (bound - cls_off)) + cls_off  # static: no row holds more than its group's total
    keep = torch.cat([keep_patch.new_ones(b, 1), keep_patch], dim=1)  # [B, 1+N] CLS always kept
    width = max(0, min(bound - cls_off, n))
    top = scores.topk(width, dim=1).indices + 1 if width else scores.new_zeros(b, 0, dtype=torch.long)  # [B, W]
    top = top.masked_fill(torch.arange(width, device=hidden.device) >= n_patch.unsqueeze(1), -1)

    n_ctx = config.merging.contextual_num
    merge = "visionzip" if config.skip_ctx_merge else config.merge  # skip_ctx_merge: the seed's meaning
    labels = None
    if merge == "none" or n_ctx == 0:
        out = assemble(hidden, keep)
    elif merge == "visionzip":
        ctx, ctx_valid, slot = visionzip_merge(hidden, keys, ~keep, n_ctx)  # [B, S, C], [B, S], [B, 1+N]
        slots = torch.arange(ctx.shape[1], device=hidden.device).expand(b, -1)  # [B, S] token s = slot s
        out = assemble(hidden, keep, ctx, ctx_valid, merged_members=merge_members(slot, slots))
        labels = slot[:, 1:]
    else:
        m = config.merging
        weights = minmax(scores) + _WEIGHT_FLOOR if m.weighting == "score" else None  # [B, N] > 0
        trace: dict = {}
        ctx, ctx_valid = cluster_merge(
            hidden[:, 1:].to(score_dtype(hidden)),
            keys[:, 1:].to(key_dtype or scores.dtype),
            ~keep_patch,
            weights,
            n_ctx,
            init_factor=m.kmeans_init_factor,
            iters=m.kmeans_iters,
            agglomerative=m.agglomerative,
            seed=config.seed,
            seeds=m.seeds,
            linkage=m.linkage,
            order=m.order,
            empty=m.empty,
            empty_token=m.empty_token,
            init=kmeans_init,
            reinit=kmeans_reinit,
            trace=trace,
        )  # [B, S, C], [B, S]
        labels = trace["labels"]  # [B, N]
        with_cls = torch.cat([labels.new_full((b, 1), -1), labels], dim=1)  # [B, 1+N]
        out = assemble(hidden, keep, ctx, ctx_valid, merged_members=merge_members(with_cls, trace["token_labels"]))
    return SparseZipTrace(out, scores, k - cls_off, top, labels)
