"""LLaVA-NeXT (any-resolution) image layouts: crops, tile grids, and the token order of compressed crops.

A NeXT image reaches the vision tower as crops: the base view (the whole image squashed to 336) and
``rows x cols`` tiles of the resized, padded image, row-major (llava-hf's processor, ``pixel_values``
[n_images, crops_max, 3, 336, 336] with zero crops as batch padding). The stock model packs their
features as base view, then the tiles stitched into one grid, unpadded to the aspect ratio, with a
newline token ending every row.

A method that compresses each crop as LLaVA-1.5 compresses an image (VisionZip's official NeXT path)
sends, per image, the base view's tokens as they are, then the tiles' kept patches in the row-major
order of the stitched tile grid, then each tile's CLS token, then each tile's merged tokens (tile by
tile): no unpadding and no newline tokens, as the official VisionZip code does.
"""

from __future__ import annotations

import torch

from .features import ImageTokens


def crop_counts(image_sizes: torch.Tensor, llava_config) -> list[int]:
    """Vision-tower crops of each image (base view + tiles) for its (height, width)."""
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    size = llava_config.vision_config.image_size
    return [int(image_size_to_num_patches(hw, llava_config.image_grid_pinpoints, size)) for hw in image_sizes.tolist()]


def tile_grids(image_sizes: torch.Tensor, llava_config) -> list[tuple[int, int]]:
    """(rows, cols) of each image's tile grid."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    size = llava_config.vision_config.image_size
    return [tuple(int(v) for v in get_anyres_image_grid_shape(hw, llava_config.image_grid_pinpoints, size)) for hw in image_sizes.tolist()]


def flatten_crops(pixel_values: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """[sum(counts), 3, H, W]: every image's real crops (the batch padding crops dropped), image by image."""
    keep = torch.arange(pixel_values.shape[1], device=pixel_values.device)[None, :] < torch.tensor(
        counts, device=pixel_values.device
    )[:, None]  # [n_images, crops_max]
    return pixel_values[keep]


def per_crop_layout(crops: ImageTokens, counts: list[int], grids: list[tuple[int, int]], side: int) -> ImageTokens:
    """The per-image token sequence of crops compressed one by one (module docstring's order).

    crops: the compressed crops, image by image ([C, T, D] features, ``source_index`` CLIP positions:
    0 = CLS, 1..side² = patches, −1 = merged). Returns per-image tokens [n_images, T_max, D] (padded,
    ``valid``), with ``crops`` kept for the selection record.
    """
    device = crops.features.device
    n_crops, width = crops.valid.shape
    counts_t = torch.tensor(counts, device=device)  # [n]
    image_of_crop = torch.repeat_interleave(torch.arange(len(counts), device=device), counts_t)  # [C]
    first_crop = torch.cumsum(counts_t, 0) - counts_t  # [n]
    tile = torch.arange(n_crops, device=device) - first_crop[image_of_crop]  # [C] 0 = base view, then tiles
    cols = torch.tensor([c for _, c in grids], device=device)[image_of_crop]  # [C] tiles per grid row
    tile_row, tile_col = (tile - 1).clamp(min=0) // cols, (tile - 1).clamp(min=0) % cols  # [C]

    index = crops.source_index  # [C, T]
    slot = torch.arange(width, device=device).expand(n_crops, width)  # [C, T]
    is_tile = (tile > 0)[:, None]  # [C, 1]
    patch_row, patch_col = (index - 1).clamp(min=0) // side, (index - 1).clamp(min=0) % side  # [C, T]
    stitched = (tile_row[:, None] * side + patch_row) * (cols[:, None] * side) + tile_col[:, None] * side + patch_col
    group = torch.where(index > 0, 1, torch.where(index == 0, 2, 3))  # [C, T] tile patch / tile CLS / tile merged
    group = torch.where(is_tile, group, torch.zeros_like(group))  # the base view keeps its own order
    within = torch.where(group == 0, slot, torch.where(group == 1, stitched, tile[:, None] * width + slot))
    span = int(max(stitched.max(), (tile[:, None] * width + slot).max(), width)) + 1  # one host sync
    key = (image_of_crop[:, None] * 4 + group) * span + within  # [C, T] sorts by image, group, position
    key = torch.where(crops.valid, key, torch.full_like(key, torch.iinfo(key.dtype).max))

    order = key.flatten().argsort()  # [C·T] valid tokens image by image, invalid last
    lengths = torch.zeros(len(counts), dtype=torch.long, device=device).index_add_(
        0, image_of_crop, crops.valid.sum(dim=1)
    )  # [n]
    t_max = int(lengths.max())  # one host sync: the padded width must be known
    flat = crops.features.reshape(n_crops * width, -1)[order]  # [C·T, D]
    starts = torch.cumsum(lengths, 0) - lengths  # [n]
    positions = starts[:, None] + torch.arange(t_max, device=device)[None, :]  # [n, T_max]
    valid = torch.arange(t_max, device=device)[None, :] < lengths[:, None]  # [n, T_max]
    features = flat[positions.clamp(max=flat.shape[0] - 1)] * valid[..., None]  # [n, T_max, D]
    return ImageTokens(features, valid, None, crops=crops)
