"""Image placeholders with a per-image number of tokens, spliced into LLaMA input embeddings.

The LLaVA processor expands every ``<image>`` in a prompt to 576 placeholder ids. After
compression image ``i`` contributes ``T_i`` tokens instead, so each placeholder run is resized to
``T_i`` and the rows are left-padded again; the compressed features then fill the placeholder
positions in order, exactly as LLaVA's own ``masked_scatter`` does for 576.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ExpandedPrompt:
    input_ids: torch.LongTensor  # [B, L'] left-padded, T_i placeholder ids per image
    attention_mask: torch.LongTensor  # [B, L']
    lengths: torch.LongTensor  # [B] real (unpadded) lengths


def placeholder_runs(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """Boolean [B, L]: True at the first position of every run of image placeholder ids."""
    is_image = (input_ids == image_token_id) & attention_mask.bool()  # [B, L]
    previous = torch.zeros_like(is_image)
    previous[:, 1:] = is_image[:, :-1]
    return is_image & ~previous


def image_owner(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """Long [B, L]: the global index (row-major over the batch) of the image run each token follows, -1
    before a row's first image run. The question rule of both families: an image's question is the text
    after its run, up to the next image's."""
    starts = placeholder_runs(input_ids, attention_mask, image_token_id)  # [B, L]
    runs_so_far = torch.cumsum(starts.long(), dim=1)  # [B, L]: image runs begun at or before each position
    per_row = starts.long().sum(1)  # [B]
    first_image_of_row = torch.cumsum(per_row, 0) - per_row  # [B]
    return torch.where(runs_so_far > 0, first_image_of_row[:, None] + runs_so_far - 1, -1)


def resize_image_placeholders(
    input_ids: torch.Tensor,  # [B, L] (any padding side)
    attention_mask: torch.Tensor,  # [B, L]
    image_token_id: int,
    tokens_per_image: torch.Tensor,  # [n_images] long, in prompt order (row-major)
    pad_token_id: int,
) -> ExpandedPrompt:
    """Resize each run of image placeholder ids to ``tokens_per_image[i]`` and left-pad the rows."""
    batch, _ = input_ids.shape
    valid = attention_mask.bool()
    is_image = (input_ids == image_token_id) & valid  # [B, L]
    starts = placeholder_runs(input_ids, attention_mask, image_token_id)  # [B, L]
    n_runs = int(starts.sum())
    if n_runs != tokens_per_image.numel():
        raise ValueError(f"the prompts hold {n_runs} images but {tokens_per_image.numel()} token counts were given")

    repeats = valid.long() * (~is_image).long()  # [B, L]: 1 per kept text token
    repeats[starts] = tokens_per_image.to(repeats.device, torch.long)  # run start -> T_i, rest of run -> 0
    lengths = repeats.sum(dim=1)  # [B]
    width = int(lengths.max()) if batch else 0

    flat_ids = torch.repeat_interleave(input_ids.reshape(-1), repeats.reshape(-1))  # [sum lengths]
    row = torch.repeat_interleave(torch.arange(batch, device=input_ids.device), lengths)  # [sum lengths]
    row_start = torch.cumsum(lengths, 0) - lengths  # [B]
    col = torch.arange(flat_ids.numel(), device=input_ids.device) - row_start[row] + (width - lengths)[row]

    new_ids = torch.full((batch, width), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    new_mask = torch.zeros((batch, width), dtype=attention_mask.dtype, device=attention_mask.device)
    new_ids[row, col] = flat_ids
    new_mask[row, col] = 1
    return ExpandedPrompt(new_ids, new_mask, lengths)


def splice_image_features(
    embeddings: torch.nn.Module,
    prompt: ExpandedPrompt,
    image_token_id: int,
    features: torch.Tensor,  # [n_images, T_max, D]
    valid: torch.Tensor,  # [n_images, T_max] bool
) -> torch.Tensor:
    """Token embeddings of the prompt with the image features written at the placeholder positions."""
    inputs_embeds = embeddings(prompt.input_ids)  # [B, L', D]
    slots = (prompt.input_ids == image_token_id) & prompt.attention_mask.bool()  # [B, L']
    flat_features = features[valid].to(inputs_embeds.dtype)  # [sum T_i, D]
    if int(slots.sum()) != flat_features.shape[0]:
        raise ValueError(f"{int(slots.sum())} image slots for {flat_features.shape[0]} image tokens")
    return inputs_embeds.masked_scatter(slots.unsqueeze(-1), flat_features)
