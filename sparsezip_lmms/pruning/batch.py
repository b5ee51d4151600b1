"""Ragged batches of the pruning decoder: one unpadded sequence per sample, padded on the left again at
every stage (every sample keeps its own number of tokens), and the checks of the decoder's inputs.

Shapes: ``B`` samples, ``L`` padded length, ``n`` one sample's rows, ``d`` hidden size, ``R`` query
rows, ``M`` rows computed by the pruning layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..compress.dtypes import at_least_float32
from ..compress.in_llm import FastVRule, PruningRule
from ..compress.sparsevlm_recycle import select_raters

__all__ = [
    "RECYCLED_ID_BASE",
    "Padded",
    "Sample",
    "gather_rows",
    "needed_padded_rows",
    "pad_left",
    "pad_stack",
    "query_rows",
    "recycled_id_base",
    "split_samples",
    "validate_inputs",
    "visual_counts",
]

RECYCLED_ID_BASE = 1000  # recycled token c of stage s (0-based) has identity 1000 * (s + 1) + c


def recycled_id_base(span: int) -> int:
    """The identity base of recycled tokens for a visual span of ``span`` tokens: 1000 (the parity
    sets' convention) for LLaVA-1.5's 576, the next power of ten above longer spans (LLaVA-NeXT)."""
    base = RECYCLED_ID_BASE
    while base <= span:
        base *= 10
    return base


@dataclass
class Sample:
    """One sample's current (unpadded) sequence: [system | visual span | text]."""

    hidden: torch.Tensor  # [n, d]
    positions: torch.Tensor  # [n] long, position id of every row ([3, n]: M-RoPE's t, h, w rows)
    v_start: int  # first visual token (system prompt length, never changes)
    v_num: int  # visual tokens now (kept + recycled)
    raters: torch.Tensor  # [R] query rows relative to the first text token (empty for deferred pruning)
    span_ids: torch.Tensor  # [v_num] identity of every visual token
    generator: torch.Generator
    prompt_length: int  # unpruned prompt length (where original positions continue when decoding)
    keep: torch.Tensor | None = None  # [v_num] bool, the given selection (deferred pruning)
    recycled_base: int = RECYCLED_ID_BASE  # identities of recycled tokens start here (recycled_id_base)
    next_position: int = 0  # where original positions continue when decoding: the unpruned maximum + 1

    @property
    def text_start(self) -> int:
        return self.v_start + self.v_num

    @property
    def length(self) -> int:
        return self.hidden.shape[0]


@dataclass
class Padded:
    """The samples of one stage, left padded to a common length."""

    hidden: torch.Tensor  # [B, L, d] left padded with zeros
    valid: torch.Tensor  # [B, L] bool
    position_ids: torch.Tensor  # [B, L] each sample's position ids on valid rows, 0 on padding ([3, B, L]: M-RoPE)
    pad: list[int]  # padding rows of each sample
    lengths: list[int]  # valid rows of each sample


# --------------------------------------------------------------------------- samples


def split_samples(
    inputs_embeds: torch.Tensor,  # [B, L, d]
    attention_mask: torch.Tensor,  # [B, L]
    image_start: torch.Tensor,  # [B]
    num_visual: Sequence[int],  # [B] visual tokens of each row
    seed: int,
    rule: PruningRule,
    visual_keep: torch.Tensor | None,  # [B, V_max] bool (deferred pruning)
    position_ids: torch.Tensor | None = None,  # [B, L] or [3, B, L] the unpruned prompt's positions (M-RoPE)
) -> list[Sample]:
    """Unpad every row, locate its visual span and pick its query rows (SparseVLM: raters from the raw
    embeddings). Positions: ``position_ids`` at the row's tokens, else 0..n-1."""
    valid = attention_mask.detach().to("cpu", torch.bool)  # [B, L] (one transfer: sizes are needed)
    if position_ids is not None:
        position_ids = position_ids.to(inputs_embeds.device, torch.long)
        masked = position_ids.masked_fill(~attention_mask.bool().to(position_ids.device), -1)  # [(3,) B, L]
        next_positions = (masked.amax(dim=-1) if masked.dim() == 2 else masked.amax(dim=(0, 2))) + 1  # [B]
        next_positions = next_positions.tolist()  # one transfer: where decoding continues
    starts = image_start.detach().to("cpu", torch.long).tolist()
    length = valid.shape[1]
    fixed = isinstance(rule, FastVRule) and rule.fixed_span
    samples = []
    for b, (start, count) in enumerate(zip(starts, num_visual, strict=True)):
        if not (0 <= start and start + count <= length and bool(valid[b, start : start + count].all())):
            raise ValueError(
                f"row {b}: the {count} visual tokens from image_start={start} must lie inside the row's unpadded tokens"
            )
        rows = torch.nonzero(valid[b], as_tuple=False).flatten().to(inputs_embeds.device)  # [n_b]
        hidden = inputs_embeds[b].index_select(0, rows)  # [n_b, d]
        v_start = int(valid[b, :start].sum())
        if fixed:  # the official hard-coded span: positions 35..35+575 of the prompt, whatever it holds
            v_start = FastVRule.FIXED_START
            if v_start + count >= hidden.shape[0]:
                raise ValueError(f"row {b}: FastV's fixed span {v_start}..{v_start + count - 1} needs a longer prompt")
        t_start = v_start + count
        if rule.queries != "none" and t_start >= hidden.shape[0]:
            raise ValueError(
                f"row {b}: no text after the image; {rule.name} rates visual tokens with the text that follows the "
                "image (prompts without an image or without text must be run unpruned)"
            )
        if rule.queries == "raters":
            raters = _raters(hidden[v_start:t_start], hidden[t_start:])  # [R_b]
        elif rule.queries == "last":
            raters = torch.tensor([hidden.shape[0] - 1 - t_start], device=hidden.device)  # the last prompt token
        else:
            raters = torch.zeros(0, dtype=torch.long, device=hidden.device)
        keep = None
        if rule.queries == "none":
            if visual_keep is None:
                raise ValueError(f"{rule.name} pruning needs visual_keep (the vision-side selection)")
            keep = visual_keep[b, :count].to(hidden.device, torch.bool)  # [count]
        span_ids = torch.arange(count, device=hidden.device)  # [count]
        if position_ids is None:
            positions, next_position = torch.arange(hidden.shape[0], device=hidden.device), hidden.shape[0]  # [n_b]
        else:
            positions, next_position = position_ids[..., b, :].index_select(-1, rows), int(next_positions[b])  # [(3,) n_b]
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        samples.append(
            Sample(
                hidden, positions, v_start, count, raters, span_ids, generator, hidden.shape[0], keep,
                recycled_id_base(count), next_position,
            )  # fmt: skip
        )
    return samples


def _raters(
    visual: torch.Tensor,  # [n_v, d] raw embeddings of the visual span
    text: torch.Tensor,  # [n_t, d] raw embeddings of the text after it
) -> torch.Tensor:
    """Official rule on the raw embeddings ([R] rows relative to the first text token); when it selects
    nobody (all text relevances equal, e.g. a single text token, where the official code would average
    over an empty set) every text token rates."""
    dtype = at_least_float32(visual.dtype)
    raters = select_raters(visual.to(dtype), text.to(dtype))  # [R]
    if raters.numel() == 0:
        raters = torch.arange(text.shape[0], device=text.device)
    return raters


# --------------------------------------------------------------------------- padding


def pad_left(samples: Sequence[Sample]) -> Padded:
    """The samples left padded with zeros to the longest one."""
    lengths = [s.length for s in samples]
    width = max(lengths)
    first = samples[0].hidden
    hidden = first.new_zeros(len(samples), width, first.shape[-1])  # [B, L, d]
    valid = torch.zeros(len(samples), width, dtype=torch.bool, device=first.device)  # [B, L]
    pad = [width - n for n in lengths]
    rows = samples[0].positions.shape[:-1]  # () or (3,)
    position_ids = torch.zeros(*rows, len(samples), width, dtype=torch.long, device=first.device)  # [(3,) B, L]
    for b, sample in enumerate(samples):
        hidden[b, pad[b] :] = sample.hidden
        valid[b, pad[b] :] = True
        position_ids[..., b, pad[b] :] = sample.positions
    return Padded(hidden, valid, position_ids, pad, lengths)


def pad_stack(rows: Sequence[torch.Tensor], fill: float) -> torch.Tensor:
    """Right-pad tensors [..., n_b] to [..., B, max_len] with ``fill`` (1-D rows: [B, max_len]; M-RoPE
    positions [3, n_b]: [3, B, max_len])."""
    width = max(r.shape[-1] for r in rows)
    lead = rows[0].shape[:-1]
    out = rows[0].new_full((*lead, len(rows), width), fill)  # [..., B, max_len]
    for b, r in enumerate(rows):
        out[..., b, : r.shape[-1]] = r
    return out


def gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x [B, L, D], rows [B, R] -> [B, R, D]."""
    return x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1]))


def query_rows(samples: Sequence[Sample], padded: Padded) -> torch.Tensor:
    """Padded-row index of every query row: [B, R]; sample b's R_b rows come first, the rest point at the
    last row (computed, then ignored)."""
    count = max(s.raters.numel() for s in samples)
    width = padded.hidden.shape[1]
    rows = torch.full((len(samples), count), width - 1, dtype=torch.long, device=padded.hidden.device)  # [B, R]
    for b, sample in enumerate(samples):
        rows[b, : sample.raters.numel()] = sample.raters + (padded.pad[b] + sample.text_start)
    return rows


def needed_padded_rows(needed: Sequence[torch.Tensor], pad: Sequence[int]) -> torch.Tensor:
    """[B, M] padded-row indices of each sample's unpadded rows ``needed[b]`` [M_b]; a sample with fewer
    rows repeats its last one (computed, then ignored)."""
    width = max(r.numel() for r in needed)
    out = torch.stack([torch.cat([r, r[-1:].expand(width - r.numel())]) for r in needed])  # [B, M]
    return out + torch.tensor(pad, device=out.device)[:, None]


# --------------------------------------------------------------------------- inputs


def visual_counts(num_visual_tokens: int | Sequence[int] | torch.Tensor, batch: int) -> list[int]:
    """[B] visual tokens of every row, from one int or one count per row."""
    if isinstance(num_visual_tokens, torch.Tensor):
        counts = num_visual_tokens.detach().to("cpu").flatten().tolist()
    elif isinstance(num_visual_tokens, int):
        counts = [num_visual_tokens] * batch
    else:
        counts = [int(c) for c in num_visual_tokens]
    if len(counts) != batch:
        raise ValueError(f"num_visual_tokens needs one count per row ({batch}), got {len(counts)}")
    if any(int(c) < 1 for c in counts):
        raise ValueError("num_visual_tokens must be >= 1 (prompts without an image are run unpruned)")
    return [int(c) for c in counts]


def validate_inputs(
    inputs_embeds: torch.Tensor,  # [B, L, d]
    attention_mask: torch.Tensor | None,  # [B, L]
    image_start: torch.Tensor,  # [B]
    max_new_tokens: int,
    recycle_noise: Sequence[torch.Tensor] | None,  # per pruning layer: [B, n]
    n_prune: int,
    visual_keep: torch.Tensor | None,  # [B, V]
) -> None:
    """Refuse inputs of the wrong shape (ValueError)."""
    if inputs_embeds.dim() != 3:
        raise ValueError(f"inputs_embeds must be [B, L, d], got shape {tuple(inputs_embeds.shape)}")
    batch, length = inputs_embeds.shape[:2]
    if attention_mask is not None and tuple(attention_mask.shape) != (batch, length):
        raise ValueError(f"attention_mask must be [{batch}, {length}], got {tuple(attention_mask.shape)}")
    if tuple(image_start.shape) != (batch,):
        raise ValueError(f"image_start must be [{batch}], got {tuple(image_start.shape)}")
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if recycle_noise is not None:
        if len(recycle_noise) != n_prune:
            raise ValueError(f"recycle_noise needs one tensor per pruning layer ({n_prune}), got {len(recycle_noise)}")
        for s, noise in enumerate(recycle_noise):
            if noise.dim() != 2 or noise.shape[0] != batch:
                raise ValueError(f"recycle_noise[{s}] must be [{batch}, n], got {tuple(noise.shape)}")
    if visual_keep is not None and (visual_keep.dim() != 2 or visual_keep.shape[0] != batch):
        raise ValueError(f"visual_keep must be [{batch}, V], got {tuple(visual_keep.shape)}")
