"""Rules of the methods that prune visual tokens inside the LLM (pure tensor code, one sample at a time).

The pruning decoder (``sparsezip_lmms.pruning``) runs the LLM layer by layer and, at each
pruning layer, hands a rule what it asked for: the attention probabilities of a few query rows over the
visual span (``probs [H, R, n]``, post-RoPE, causal, of that layer) and, when the rule corrects them, the
RoPE-only term of those rows x columns. The rule answers with the span positions to keep. It also
states where it acts and how positions continue, so that one decoder serves every method:

============  =================  ==========  =================  ==========  ============
rule          pruning layers     queries     score              keep        positions
============  =================  ==========  =================  ==========  ============
SparseVLM1.5  after 2, 6, 15     raters      head mean          schedule    0..n-1 again
SparseVLM2.0  after 2, 6, 15     raters      P / RoPE, 14 heads schedule    original
FastV         after K-1          last token  head mean          int(n R)    original
DART          after K-1          states      key L1 + dissim.   Pi+P*T      original
Deferred      after L-1          none        (given selection)  selection   either
============  =================  ==========  =================  ==========  ============

A ``"states"`` rule (DART, ``compress.dart``) reads the pruning layer's post-RoPE keys and its
final-normed output at every row instead of attention probabilities (``decide_states``).

"after layer l" = the output of layer l is pruned, i.e. layer l + 1 is the first to see fewer tokens.
A new method is a new :class:`PruningRule` subclass, passed to ``pruned_generate`` as its ``config``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from ..config import ConfigError
from ..config.schemas import layer_order_problem
from .sparsevlm_recycle import keep_count, recycle_sizes, topk_keep

__all__ = [
    "DeferredRule",
    "FastVRule",
    "PruningRule",
    "SparseVLM2Rule",
    "SparseVLMQwenRule",
    "SparseVLMRule",
    "check_pruning_layers",
    "fastv_keep_count",
    "priority_head_scores",
    "rope_bias",
    "rule_for_config",
]

Queries = Literal["raters", "last", "states", "none"]


# --------------------------------------------------------------------------- pure pieces


def rope_bias(
    cos_rows: Tensor,  # [R, hd] rotary tables at the query rows' position ids
    sin_rows: Tensor,  # [R, hd]
    cos_cols: Tensor,  # [n, hd] at the visual columns' position ids
    sin_cols: Tensor,  # [n, hd]
    scaling: float,
) -> Tensor:
    """SparseVLM v2.0's RoPE-only term ``B[i, j] = RoPE(1; p_i) . RoPE(1; p_j) * scaling`` ([R, n]): an
    all-ones query and key rotated with the layer's own tables (``(2 / sqrt(d)) sum_f cos((p_i - p_j) theta_f)``)."""
    ones = torch.ones_like(cos_rows[:1])  # [1, hd]
    half = ones.shape[-1] // 2
    rotated_ones = torch.cat([-ones[..., half:], ones[..., :half]], dim=-1)  # rotate_half(1)
    q = ones * cos_rows + rotated_ones * sin_rows  # [R, hd]
    k = ones * cos_cols + rotated_ones * sin_cols  # [n, hd]
    return (q @ k.transpose(0, 1)) * scaling  # [R, n]


def priority_head_scores(probs: Tensor, bias: Tensor, heads: int) -> tuple[Tensor, Tensor]:
    """SparseVLM v2.0 relevance of every visual column.

    probs: [H, R, n] attention probabilities of the rater rows on the visual columns; bias: [R, n] > 0.
    Returns (scores [n], priority heads [min(heads, H)] in descending-mass order): the ``heads`` heads with
    the largest corrected mass ``sum(P / B)`` are kept; scores = their mean of P / B, then the raters' mean.
    """
    corrected = probs / bias[None]  # [H, R, n]
    mass = corrected.sum(dim=(1, 2))  # [H]
    chosen = torch.topk(mass, min(int(heads), mass.shape[0])).indices  # [h]
    return corrected[chosen].mean(dim=0).mean(dim=0), chosen  # [n], [h]


def fastv_keep_count(n_visual: int, ratio: float) -> int:
    """FastV's ``int(n_visual * ratio)`` (truncated, as the official code), at least 1 and below n_visual."""
    return max(1, min(int(n_visual * ratio), n_visual - 1))


def check_pruning_layers(layers: Sequence[int], depth: int) -> None:
    """Refuse (ConfigError) pruning layers that a model of ``depth`` decoder layers does not have
    (0..depth-1), or that are not strictly increasing (``config.schemas.layer_order_problem``)."""
    problem = layer_order_problem(list(layers), depth)
    if problem:
        raise ConfigError(problem)


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Decision:
    """One sample's pruning at one layer, in span positions (0-based within the current visual span)."""

    kept: Tensor  # [k] ascending
    recycle_in: Tensor  # [n_in] deleted tokens fed to the recycling (descending score); empty without
    clusters: int  # recycled tokens to make (0 without recycling)
    heads: Tensor | None = None  # [h] the heads the score used (SparseVLM v2.0), else None
    pivots: Tensor | None = None  # [P] absolute positions of the pivots, in processing order (DART), else None


class PruningRule:
    """What one in-LLM method decides; the decoder does everything else.

    ``pruning_layers``: the layers whose output is pruned (ascending). ``queries``: the rows whose
    attention scores the span ("raters": SparseVLM's text raters, "last": the last prompt token, "states": the
    rule reads the layer's keys and final-normed output itself (``decide_states``), "none": the selection
    comes from outside). ``original_positions``: kept tokens keep their position ids and
    decoding continues at the unpruned length (else they are renumbered 0..n-1 and decoding continues at
    each layer's own length). ``rope_corrected``: the decoder also passes the RoPE-only term.
    """

    name: ClassVar[str] = "rule"
    pruning_layers: tuple[int, ...]
    queries: ClassVar[Queries] = "raters"
    original_positions: ClassVar[bool] = False
    rope_corrected: ClassVar[bool] = False

    def for_family(self, family: str) -> "PruningRule":
        """The rule for a model family (``"llava"``, ``"llava_next"``, ``"qwen2_5_vl"``): a rule whose budget
        differs per family returns a changed copy; default: unchanged."""
        return self

    def scores(self, probs: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """probs [H, R, n] -> (scores [n], heads used or None). Default: mean over heads, then over rows."""
        return probs.mean(dim=0).mean(dim=0), None

    def keep_count(self, stage: int, n_visual: int) -> int:
        raise NotImplementedError

    def decide(self, stage: int, scores: Tensor, heads: Tensor | None = None) -> Decision:
        """Keep the best ``keep_count`` (in span order); no recycling."""
        kept, _ = topk_keep(scores, self.keep_count(stage, scores.shape[0]))
        return Decision(kept, kept[:0], 0, heads)


@dataclass(frozen=True)
class SparseVLMRule(PruningRule):
    """SparseVLM v1.5: raters' head-mean attention, ``min(schedule, n - 1)`` kept, the best deleted ones
    recycled by density-peak clustering, positions renumbered."""

    pruning_layers: tuple[int, ...]
    schedule: tuple[int, ...]
    recycle: bool = True
    recycle_ratio: float = 0.3
    cluster_divisor: int = 10
    name: ClassVar[str] = "sparsevlm"

    def for_family(self, family: str) -> "SparseVLMRule":
        """Qwen2.5-VL: :class:`SparseVLMQwenRule` (M-RoPE positions cannot be renumbered 0..n-1)."""
        if family != "qwen2_5_vl":
            return self
        return SparseVLMQwenRule(
            self.pruning_layers, self.schedule, self.recycle, self.recycle_ratio, self.cluster_divisor
        )

    def keep_count(self, stage: int, n_visual: int) -> int:
        return keep_count(self.schedule[stage], n_visual)

    def decide(self, stage: int, scores: Tensor, heads: Tensor | None = None) -> Decision:
        kept, deleted = topk_keep(scores, self.keep_count(stage, scores.shape[0]))
        if not self.recycle or deleted.numel() == 0:
            return Decision(kept, deleted[:0], 0)
        n_in, clusters = recycle_sizes(deleted.numel(), self.recycle_ratio, self.cluster_divisor)
        return Decision(kept, deleted[torch.topk(scores[deleted], n_in).indices], clusters)


@dataclass(frozen=True)
class SparseVLMQwenRule(SparseVLMRule):
    """SparseVLM v1.5 on Qwen2.5-VL: the same scores, counts and recycling, with **original** M-RoPE
    positions (kept tokens keep theirs, a recycled token takes its density-peak centre's; decoding continues
    at the unpruned maximum + 1) instead of the renumbering 0..n-1, which M-RoPE does not define."""

    original_positions: ClassVar[bool] = True

    def for_family(self, family: str) -> "SparseVLMQwenRule":
        return self


@dataclass(frozen=True)
class SparseVLM2Rule(PruningRule):
    """SparseVLM v2.0: raters' attention divided by the RoPE-only term, the ``priority_heads`` heads of
    largest mass, ``min(schedule, n - 1)`` kept, no recycling, original positions."""

    pruning_layers: tuple[int, ...]
    schedule: tuple[int, ...]
    priority_heads: int = 14
    name: ClassVar[str] = "sparsevlm2"
    original_positions: ClassVar[bool] = True
    rope_corrected: ClassVar[bool] = True

    def scores(self, probs: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if bias is None:
            raise ValueError("SparseVLM v2.0 needs the RoPE-only term")
        return priority_head_scores(probs, bias, self.priority_heads)

    def keep_count(self, stage: int, n_visual: int) -> int:
        return keep_count(self.schedule[stage], n_visual)


@dataclass(frozen=True)
class FastVRule(PruningRule):
    """FastV: the last prompt token's head-mean attention at layer K-1; ``int(n * R)`` kept from layer K's
    input; original positions. ``fixed_span``: score positions 35..610 whatever the prompt (official)."""

    layer: int  # K
    ratio: float
    fixed_span: bool = False
    name: ClassVar[str] = "fastv"
    queries: ClassVar[Queries] = "last"
    original_positions: ClassVar[bool] = True

    FIXED_START: ClassVar[int] = 35  # LLaVA-1.5's vicuna_v1 system prompt with BOS, hard-coded officially

    @property
    def pruning_layers(self) -> tuple[int, ...]:  # type: ignore[override]
        return (self.layer - 1,)

    def keep_count(self, stage: int, n_visual: int) -> int:
        return fastv_keep_count(n_visual, self.ratio)


@dataclass(frozen=True)
class DeferredRule(PruningRule):
    """A vision-side method's selection applied inside the LLM: every token enters, the unselected ones
    are dropped at layer L's input (``prune_layer: L``)."""

    layer: int  # L >= 1
    original: bool = True
    name: ClassVar[str] = "deferred"
    queries: ClassVar[Queries] = "none"

    @property
    def pruning_layers(self) -> tuple[int, ...]:  # type: ignore[override]
        return (self.layer - 1,)

    @property
    def original_positions(self) -> bool:  # type: ignore[override]
        return self.original

    def keep_count(self, stage: int, n_visual: int) -> int:
        raise ValueError("deferred pruning keeps the vision-side selection (visual_keep), it does not count")


def rule_for_config(config: Any) -> PruningRule:
    """The rule of an in-LLM config (its method's ``MethodSpec.rule``: ``"fastv_64"``, ``"sparsevlm2_64"``),
    or of a vision-side config deferred into the LLM (``prune_layer`` > 0)."""
    from ..methods.registry import method_of

    spec = method_of(config)
    if spec.stage == "llm":
        return spec.rule(config)
    if getattr(config, "prune_layer", 0) > 0:
        return DeferredRule(config.prune_layer, config.prune_positions == "original")
    raise ConfigError(
        f"config {config!r} does not prune inside the LLM (an in-LLM method, or a vision-side one with prune_layer > 0)"
    )
