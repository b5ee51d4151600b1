"""DART (Wen et al., 2025, "Stop Looking for Important Tokens in Multimodal Language Models: Duplication
Matters More"): in the LLM prefill, a few pivot tokens are chosen by the L1 norm of their keys at layer
K-1, and every pivot keeps the visual tokens least similar to it (the duplicates of the pivots go).

The rules of the official code (ZichenWen1/DART 5a19452, ``get_retained_image_token``), reproduced here:

* keys = layer K-1's keys after RoPE (its cache), heads concatenated per token, scored by their L1 norm;
  ``pivot_image`` image pivots = the top-k over the visual span, ``pivot_text`` text pivots = the top-k
  over every token after the image (the assistant prompt included);
* states = the final RMSNorm (with its weight) of layer K-1's output; the pool = the span minus the image
  pivots; each pivot in turn keeps the ``T`` pool tokens of least cosine similarity to it (most
  dissimilar first) and removes them from the pool; text pivots pick image tokens too and stay ordinary
  text tokens themselves;
* the pivots are processed in the iteration order of CPython's ``set(image_pivots + text_pivots)`` over
  the tokens' absolute (unpadded) positions (:func:`pivot_processing_order`, ``pivot_order: set``); top-k
  order or ascending order keep different tokens (ablations ``pivot_order: topk`` / ``ascending``);
* kept = image pivots + every pick: ``Pi + (Pi + Pt) * T`` visual tokens, where
  ``T = max_tokens // (Pi + Pt)`` (the scripts' ``max_num_trunction``), or ``(N (1 - r)) // (Pi + Pt)``
  without it; on LLaVA-NeXT ``T = min(next_retain, N - Pi) // (Pi + Pt)`` whatever the other keys; on
  Qwen2.5-VL (the official port) ``T = int(N (1 - r) / (Pi + Pt))``, ``max_tokens`` ignored
  (:func:`dart_picks`). The kept tokens keep their position ids; decoding continues at the unpruned length.

Batched: one sample's pivots are a handful of host integers (their processing order must be known); the
pool, the similarities and the picks of every sample run together on the device, one pivot step at a
time. Similarities and norms are computed in at least float32.

Shapes: ``B`` samples, ``L`` padded rows, ``d`` hidden size, ``N`` longest visual span, ``P`` pivots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .dtypes import at_least_float32
from .in_llm import Decision, PruningRule

__all__ = ["DartRule", "DartSelection", "dart_picks", "dart_select", "pivot_processing_order"]

PivotOrder = Literal["set", "topk", "ascending"]


def dart_picks(
    n_visual: int,
    pivot_image: int,
    pivot_text: int,
    max_tokens: int | None,
    reduction_ratio: float,
    family: str = "llava",
    next_retain: int = 320,
) -> int:
    """T, the tokens each pivot keeps, as the official code counts it (``TOKEN_TOPK``).

    LLaVA-1.5 (``family`` "llava"): ``max_tokens // P`` (``ceil`` of a floor division in the official code:
    a floor), or ``(n_visual * (1 - r)) // P`` when ``max_tokens`` is None. LLaVA-NeXT ("llava_next"):
    ``int(min(next_retain, n_visual - Pi) // P)``, the other keys ignored, as the official v1.6 path.
    Qwen2.5-VL ("qwen2_5_vl"): ``int(n_visual * (1 - r) / P)`` (true division, truncated in binary double),
    ``max_tokens`` ignored, as the official Qwen port."""
    pivots = pivot_image + pivot_text
    if family == "llava_next":
        return int(min(next_retain, n_visual - pivot_image) // pivots)
    if family == "qwen2_5_vl":
        return int(n_visual * (1 - reduction_ratio) / pivots)
    if max_tokens is not None:
        return int(max_tokens) // pivots
    return int((n_visual * (1 - reduction_ratio)) // pivots)


def pivot_processing_order(image_pivots: Sequence[int], text_pivots: Sequence[int], order: PivotOrder = "set") -> list[int]:
    """The order in which the pivots (absolute positions, each list in top-k order) are processed.

    ``"set"``: the official ``for item in list(set(image_pivots + text_pivots))``, i.e. CPython's set
    iteration order over these ints (hash(v) = v: ascending in v mod the table size, collisions moved to a
    later free slot); the order is taken from a real ``set`` built the same way. ``"topk"``: the image
    pivots then the text pivots, each in top-k order. ``"ascending"``: by position."""
    pivots = [int(v) for v in image_pivots] + [int(v) for v in text_pivots]
    if order == "set":
        return list(set(pivots))
    if order == "topk":
        return pivots
    if order == "ascending":
        return sorted(pivots)
    raise ValueError(f"pivot_order must be 'set', 'topk' or 'ascending', got {order!r}")


@dataclass(frozen=True)
class DartSelection:
    """What :func:`dart_select` decided for B samples."""

    kept: list[Tensor]  # per sample: [k_b] kept span positions, ascending
    pivots: Tensor  # [B, P] absolute (unpadded) positions of the pivots, in processing order
    picks: Tensor  # [B, P, T_max] span positions each pivot kept, most dissimilar first (-1 past T_b)
    key_norms: list[Tensor]  # per sample: [n_b] L1 norm of the span's keys (the image pivots' score)


def _span_gather(x: Tensor, start: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Rows ``start[b] + 0..width-1`` of x [B, L, ...] (clamped to L-1): ([B, width, ...], index [B, width])."""
    index = (start[:, None] + torch.arange(width, device=x.device)[None]).clamp(max=x.shape[1] - 1)  # [B, width]
    shape = index.shape + x.shape[2:]
    gathered = x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand(shape))
    return gathered, index


def dart_select(
    keys: Tensor,  # [B, H_kv, L, hd] layer K-1's post-RoPE keys (its cache), padded rows included
    states: Tensor,  # [B, L, d] final-normed output of layer K-1
    span_start: Sequence[int],  # [B] padded row of each sample's first visual token
    span_len: Sequence[int],  # [B] visual tokens of each sample
    pad: Sequence[int],  # [B] padding rows of each sample (absolute position = padded row - pad)
    picks: Sequence[int],  # [B] T of each sample
    pivot_image: int,
    pivot_text: int,
    order: PivotOrder = "set",
) -> DartSelection:
    """DART's selection for a left-padded batch (every sample's text runs to the last row)."""
    batch, _, length, _ = keys.shape
    device = states.device
    dtype = at_least_float32(states.dtype)
    for b in range(batch):
        text = length - span_start[b] - span_len[b]
        if pivot_image > span_len[b]:
            raise ValueError(f"row {b}: pivot_image={pivot_image} is more than its {span_len[b]} visual tokens")
        if pivot_text > text:
            raise ValueError(f"row {b}: pivot_text={pivot_text} is more than the {text} tokens after its image")
        pool = span_len[b] - pivot_image
        if (pivot_image + pivot_text) * picks[b] > pool:
            raise ValueError(
                f"row {b}: {pivot_image + pivot_text} pivots x {picks[b]} picks exceed the {pool} visual tokens "
                "left after the image pivots (the official code crashes here)"
            )
    starts = torch.tensor(list(span_start), device=device)  # [B]
    lens = torch.tensor(list(span_len), device=device)  # [B]
    width = max(span_len)
    norms = keys.to(device).transpose(1, 2).reshape(batch, length, -1).to(dtype).abs().sum(dim=-1)  # [B, L]

    # pivots: top-k of the key norms over the span, and over the rows after it
    span_norms, _ = _span_gather(norms, starts, width)  # [B, N]
    span_valid = torch.arange(width, device=device)[None] < lens[:, None]  # [B, N]
    image_pivots = span_norms.masked_fill(~span_valid, float("-inf")).topk(pivot_image, dim=1).indices  # [B, Pi]
    text_starts = starts + lens  # [B]
    text_width = max(1, length - min(s + n for s, n in zip(span_start, span_len, strict=True)))
    text_norms, text_index = _span_gather(norms, text_starts, text_width)  # [B, Tt]
    text_valid = (text_starts[:, None] + torch.arange(text_width, device=device)[None]) < length  # [B, Tt]
    text_pivots = text_norms.masked_fill(~text_valid, float("-inf")).topk(pivot_text, dim=1).indices  # [B, Pt]

    # processing order on the host (a few ints per sample), in absolute positions
    offsets = torch.tensor(list(pad), device=device)[:, None]  # [B, 1]
    image_abs = (image_pivots + starts[:, None] - offsets).tolist()
    text_abs = (text_index.gather(1, text_pivots) - offsets).tolist()
    ordered = [pivot_processing_order(i, t, order) for i, t in zip(image_abs, text_abs, strict=True)]
    pivots = torch.tensor(ordered, dtype=torch.long, device=device).reshape(batch, -1)  # [B, P]

    # duplicates: each pivot keeps the T pool tokens least similar to it
    span_states, _ = _span_gather(states, starts, width)  # [B, N, d]
    span_states = span_states.to(dtype)
    pivot_states = states.gather(1, (pivots + offsets)[..., None].expand(-1, -1, states.shape[-1])).to(dtype)  # [B, P, d]
    t = torch.tensor(list(picks), device=device)  # [B]
    t_max = max(picks)
    pool = span_valid.clone()  # [B, N]
    pool.scatter_(1, image_pivots, False)
    kept = ~span_valid  # [B, N] the image pivots and the picks (padding marked, removed at the end)
    kept.scatter_(1, image_pivots, True)
    taken = torch.arange(t_max, device=device)[None] < t[:, None]  # [B, T_max]
    added = []
    for step in range(pivots.shape[1]):
        dissimilarity = -F.cosine_similarity(pivot_states[:, step, None], span_states, dim=-1)  # [B, N]
        chosen = dissimilarity.masked_fill(~pool, float("-inf")).topk(t_max, dim=1).indices  # [B, T_max]
        mark = torch.zeros_like(pool).scatter_(1, chosen, taken)  # [B, N]
        pool &= ~mark
        kept |= mark
        added.append(chosen.masked_fill(~taken, -1))
    kept &= span_valid
    kept_rows = [torch.nonzero(kept[b], as_tuple=False).flatten() for b in range(batch)]  # sizes are needed
    added_picks = torch.stack(added, dim=1) if added else torch.zeros(batch, 0, t_max, dtype=torch.long, device=device)
    return DartSelection(
        kept=kept_rows,
        pivots=pivots,
        picks=added_picks,
        key_norms=[span_norms[b, : span_len[b]] for b in range(batch)],
    )


@dataclass(frozen=True)
class DartRule(PruningRule):
    """DART as a rule of the pruning decoder: scored on layer K-1's keys and final-normed output, pruned
    at layer K's input, original positions. ``family``: the budget rule (:func:`dart_picks`)."""

    layer: int  # K >= 1
    max_tokens: int | None
    reduction_ratio: float
    pivot_image: int
    pivot_text: int
    pivot_order: PivotOrder = "set"
    next_retain: int = 320
    family: str = "llava"
    name: ClassVar[str] = "dart"
    queries: ClassVar[str] = "states"  # type: ignore[assignment]
    original_positions: ClassVar[bool] = True

    @property
    def pruning_layers(self) -> tuple[int, ...]:  # type: ignore[override]
        return (self.layer - 1,)

    def for_family(self, family: str) -> "DartRule":
        from dataclasses import replace

        return replace(self, family=family)

    def picks(self, n_visual: int) -> int:
        return dart_picks(
            n_visual, self.pivot_image, self.pivot_text, self.max_tokens, self.reduction_ratio,
            self.family, self.next_retain,
        )  # fmt: skip

    def keep_count(self, stage: int, n_visual: int) -> int:
        return self.pivot_image + (self.pivot_image + self.pivot_text) * self.picks(n_visual)

    def decide_states(
        self,
        keys: Tensor,  # [B, H_kv, L, hd]
        states: Tensor,  # [B, L, d]
        span_start: Sequence[int],
        span_len: Sequence[int],
        pad: Sequence[int],
    ) -> tuple[list[Decision], list[Tensor]]:
        """Per sample: the decision and the score of every span token (its keys' L1 norm)."""
        picks = [self.picks(n) for n in span_len]
        chosen = dart_select(
            keys, states, span_start, span_len, pad, picks, self.pivot_image, self.pivot_text, self.pivot_order
        )
        decisions = [
            Decision(kept, kept[:0], 0, None, chosen.pivots[b]) for b, kept in enumerate(chosen.kept)
        ]
        return decisions, chosen.key_norms
