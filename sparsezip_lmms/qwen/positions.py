"""M-RoPE positions of a pruned Qwen2.5-VL prompt, and the left re-padding of the kept tokens.

Official rules 7 and 8 (``tests/data/visionzip_qwen/README.md``):

* the 3-D (t, h, w) positions of the **unpruned** prompt (the model's own ``get_rope_index``) are sliced by
  the kept sequence positions; nothing is renumbered (the positions have gaps);
* the n-th fed-back token (n = 1, 2, ...) gets ``max_position + n`` on all three rows, max_position being
  the largest position of the row's unpruned prompt (the official ``cache_position + rope_delta``; 5.x's own
  rule, ``cache.get_seq_length() + rope_deltas``, would be wrong with a pruned cache).

Rows are re-padded on the left after pruning; each keeps its own length L'_b.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

__all__ = ["decode_position_ids", "left_pack", "prompt_positions"]


def prompt_positions(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, image_grid_thw: Tensor | None, image_token_id: int
) -> tuple[Tensor, Tensor]:
    """(positions [3, B, L], max_position [B]) of the unpruned prompt: ``model.model.get_rope_index`` on the
    unpruned ids, grids and mask (padding gets 0); max_position over the row's attended tokens."""
    inner = model.model
    kwargs = {"image_grid_thw": image_grid_thw, "attention_mask": attention_mask}
    if "mm_token_type_ids" in inspect.signature(inner.get_rope_index).parameters:  # 5.24: token type 1 = image
        kwargs["mm_token_type_ids"] = (input_ids == image_token_id).int()
    positions, _ = inner.get_rope_index(input_ids, **kwargs)  # [3, B, L]
    positions = positions.to(input_ids.device)
    attended = attention_mask.bool()  # [B, L]
    max_position = positions.masked_fill(~attended.unsqueeze(0), torch.iinfo(positions.dtype).min).amax(dim=(0, 2))  # [B]
    return positions, max_position


def left_pack(keep: Tensor) -> tuple[Tensor, Tensor, int]:
    """Left re-padding of the kept tokens of each row.

    keep [B, L] bool. Returns (index [B, L'] long: the source column of each packed slot, valid [B, L'] bool:
    False on the left padding, L' = max_b keep[b].sum()), one host sync for L'. Padding slots point at a kept
    column of their row (or 0) and must be masked by ``valid``.
    """
    b = keep.shape[0]
    lengths = keep.sum(1)  # [B]
    packed = int(lengths.max()) if b else 0  # host sync: the packed width must be known
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :packed]  # [B, L'] kept columns first
    shift = (packed - lengths).unsqueeze(1)  # [B, 1] left padding of each row
    slots = torch.arange(packed, device=keep.device).unsqueeze(0)  # [1, L']
    valid = slots >= shift  # [B, L']
    index = order.gather(1, (slots - shift).clamp(min=0))  # [B, L']
    return index, valid, packed


def decode_position_ids(max_position: Tensor, n: int) -> Tensor:
    """[3, B, 1] position of the n-th fed-back token of each row: max_position + n on all three rows."""
    return (max_position + n).view(1, -1, 1).expand(3, -1, 1)
