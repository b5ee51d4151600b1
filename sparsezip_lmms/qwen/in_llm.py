"""Qwen2.5-VL with a method that prunes inside the LLM (DART, FastV, SparseVLM v2.0 and v1.5): the whole image
enters the language model and the one pruning decoder (``sparsezip_lmms.pruning``) prunes it at the rule's
layers, with the M-RoPE positions of the unpruned prompt.

* the vision tower runs once on the batch; every image's merged tokens are spliced in at its
  ``<|image_pad|>`` tokens;
* the unpruned prompt's 3-row positions (the model's own ``get_rope_index``) go to the decoder, which
  slices them for the tokens it keeps (never renumbered: rules that renumber are refused) and continues
  decoding at each row's ``max_position + n``;
* the visual span of a row is its image tokens; the text after it starts at ``<|vision_end|>`` (DART's
  text pivots are searched from there, as its official Qwen port does);
* the rule reads the family ``"qwen2_5_vl"`` (DART's budget ``T = int(N (1 - r) / (Pi + Pt))``; SparseVLM
  v1.5 keeps original positions, a recycled token at its density-peak centre's position).

One image per row (the in-LLM rules score one visual span per prompt).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..compress.dtypes import at_least_float32
from .positions import prompt_positions
from .vision import refuse_non_finite, vision_forward

__all__ = ["in_llm_generate"]


def in_llm_generate(
    model: nn.Module,
    input_ids: Tensor,  # [B, L] left-padded
    attention_mask: Tensor,  # [B, L]
    pixel_values: Tensor,  # [P, 1176]
    image_grid_thw: Tensor,  # [B, 3]: one image per row
    config: object,
    max_new_tokens: int,
    counts: tuple[int, ...],  # N of every image
    rows: list[int],  # the row of every image
    eos_token_id: int | None,
    method_timer: object | None = None,  # efficiency.clock.MethodTimer: the rule's own steps
) -> dict:
    """The pruned generation; returns the fields of ``QwenGeneration`` (see ``generate``)."""
    from ..pruning import pruned_generate

    batch = input_ids.shape[0]
    if rows != list(range(batch)):  # images come in row-major order: one per row is exactly 0..B-1
        raise ValueError(
            f"{config.method} prunes inside the LLM one image per prompt; the rows hold "
            f"{[rows.count(b) for b in range(batch)]} images"
        )
    lm = model.model.language_model
    image_token = model.config.image_token_id
    image_mask = input_ids == image_token  # [B, L]
    embeds = lm.embed_tokens(input_ids)  # [B, L, E]
    vis = vision_forward(model.model.visual, pixel_values.to(input_ids.device), image_grid_thw.to(input_ids.device), score=False)
    refuse_non_finite(vis.embeds)
    embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), vis.embeds.to(embeds.dtype))  # [B, L, E]
    positions, _ = prompt_positions(model, input_ids, attention_mask, image_grid_thw, image_token)  # [3, B, L]
    image_start = image_mask.int().argmax(dim=1)  # [B] first image token of each row
    row_counts = list(counts)  # [B]: image b is row b's
    out = pruned_generate(
        model, embeds, attention_mask, image_start, config, max_new_tokens, num_visual_tokens=row_counts,
        eos_token_id=eos_token_id, family="qwen2_5_vl", position_ids=positions, return_step_logits=True,
        method_timer=method_timer,
    )  # fmt: skip
    dtype = at_least_float32(out.prefill_logits.dtype)
    logits = torch.cat([out.prefill_logits[:, None], out.step_logits], dim=1).to(dtype)  # [B, T, V]
    # per row: the kept image tokens at the last pruning layer (SparseVLM v1.5's recycled tokens, identities
    # >= N, are not image tokens: they count in the per-layer numbers, not here)
    kept_rows = [k[(k >= 0) & (k < n)].cpu() for k, n in zip(out.kept[-1], counts)]
    final = out.positions[-1].cpu()  # [3, B, n_max] positions the last layer used (-1 padded)
    position_ids = [final[:, b][:, final[0, b] >= 0] for b in range(batch)]  # per row [3, L']
    starts = (image_start - (~attention_mask.bool()).sum(dim=1)).tolist()  # [B] in the row's own tokens
    lengths = attention_mask.sum(dim=1).tolist()
    keep_seq = [
        torch.cat([torch.arange(s), s + k, torch.arange(s + n, int(length))])
        for s, k, n, length in zip(starts, kept_rows, row_counts, lengths)
    ]  # per row: kept sequence positions over its attended tokens
    return {
        "sequences": out.sequences,
        "logits": logits,
        "kept": kept_rows,  # per image = per row
        "position_ids": position_ids,
        "keep_seq": keep_seq,
        "decode_positions": out.decode_positions[:, :, 0],  # [B, T - 1] the same in every layer
        "image_rows": rows,
        "pruned": out,
    }
