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

from .image_tokens import ImageTokens


def fixed_2x2_pinpoints(llava_config) -> list[list[int]]:
    """The one any-resolution grid CDPruner's official code allows: 2 x 2 tiles (672 x 672 for 336-px crops)."""
    size = int(llava_config.vision_config.image_size)
    return [[2 * size, 2 * size]]


def crop_counts(image_sizes: torch.Tensor, llava_config, pinpoints: list | None = None) -> list[int]:
    """Vision-tower crops of each image (base view + tiles) for its (height, width); ``pinpoints``
    replaces the checkpoint's ``image_grid_pinpoints``."""
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    size = llava_config.vision_config.image_size
    grid = pinpoints or llava_config.image_grid_pinpoints
    return [int(image_size_to_num_patches(hw, grid, size)) for hw in image_sizes.tolist()]


def tile_grids(image_sizes: torch.Tensor, llava_config, pinpoints: list | None = None) -> list[tuple[int, int]]:
    """(rows, cols) of each image's tile grid (``pinpoints`` as in :func:`crop_counts`)."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    size = llava_config.vision_config.image_size
    grid = pinpoints or llava_config.image_grid_pinpoints
    return [tuple(int(v) for v in get_anyres_image_grid_shape(hw, grid, size)) for hw in image_sizes.tolist()]


def crop_owners(counts: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """[sum(counts)] long: the image of each crop, for crops laid out image by image (``counts`` per image)."""
    return torch.repeat_interleave(torch.arange(len(counts), device=device), torch.tensor(counts, device=device))


def first_crops(counts: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """[len(counts)] long: the row of each image's first crop (its base view) among the crops."""
    counts_t = torch.tensor(counts, device=device)
    return torch.cumsum(counts_t, 0) - counts_t


NEWLINE = -1  # packed_sources: an image-newline token
PADDING = -2  # packed_sources: batch padding


def packed_sources(image_sizes: torch.Tensor, counts: list[int], grids: list[tuple[int, int]], side: int) -> torch.Tensor:
    """Where every token of LLaVA-NeXT's packed image sequence comes from, for all images at once.

    The stock packing (llava-hf ``pack_image_features``, the same in the official LLaVA-NeXT code):
    the base view's side² patches, then the tiles stitched into one (rows·side) x (cols·side) grid,
    unpadded to the image's aspect ratio, a newline token ending every row of it. Returns [n_images,
    L_max] long: ``c · side² + p`` for patch p of the image's crop c (0 = base view, then the tiles
    row-major), :data:`NEWLINE`, or :data:`PADDING` past the image's own length. Built on the host from
    the image sizes (the sequence's shape depends on them); the same ops as the stock packing, applied
    to indices.
    """
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    n = side * side
    rows_out = []
    for (height, width), count, (rows, cols) in zip(image_sizes.tolist(), counts, grids):
        index = torch.arange(count * n).view(count, n)  # [crops, N]
        if count > 1:
            tiles = index[1:].view(rows, cols, side, side).permute(0, 2, 1, 3)  # [rows, side, cols, side]
            tiles = unpad_image(tiles.reshape(1, rows * side, cols * side), (height, width))[0]  # [H', W']
            tiles = torch.cat([tiles, torch.full((tiles.shape[0], 1), NEWLINE)], dim=1)  # [H', W' + 1]
            rows_out.append(torch.cat([index[0], tiles.flatten()]))
        else:  # a base view alone ends with one newline
            rows_out.append(torch.cat([index[0], torch.tensor([NEWLINE])]))
    return torch.nn.utils.rnn.pad_sequence(rows_out, batch_first=True, padding_value=PADDING)  # [n, L_max]


def crop_patch_index(sources: torch.Tensor, counts: list[int], n: int) -> torch.Tensor:
    """[n_images, L] long: each packed token's row in every crop's patches flattened image by image
    ([C·N]: crop c's patch p is c·N + p), or −1 for a newline or padding token. sources
    [n_images, L] from :func:`packed_sources`."""
    first = first_crops(counts, sources.device)[:, None]  # [n_images, 1]
    return torch.where(sources >= 0, first * n + sources, torch.full_like(sources, -1))


def gather_packed(patches: torch.Tensor, newline: torch.Tensor, sources: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed sequences' tokens: patches [C, N, D] of every crop (image by image), the newline
    embedding [D], sources [n, L] from :func:`packed_sources`. Returns (features [n, L, D] zero at
    padding, valid [n, L])."""
    n_crops, n, width = patches.shape
    sources = sources.to(patches.device)
    flat_index = crop_patch_index(sources, counts, n).clamp(min=0)  # [n, L] row of patches.flatten(0, 1)
    features = patches.reshape(n_crops * n, width)[flat_index]  # [n, L, D]
    features = torch.where((sources == NEWLINE)[..., None], newline.to(features.dtype), features)
    valid = sources != PADDING  # [n, L]
    return features * valid[..., None], valid


def packed_selection_crops(sources: torch.Tensor, keep: torch.Tensor, counts: list[int], n: int) -> ImageTokens:
    """Per crop, the patches a selection over the packed sequence kept (for the selection record).

    sources [n_images, L] (:func:`packed_sources`), keep [n_images, L] bool. Returns ImageTokens over
    the crops (image by image) whose ``source_index`` holds the kept CLIP positions (1..N), ascending."""
    device = keep.device
    flat_index = crop_patch_index(sources.to(device), counts, n)  # [n_images, L]
    is_patch = keep & (flat_index >= 0)  # [n_images, L]
    global_index = torch.where(is_patch, flat_index, torch.full_like(flat_index, sum(counts) * n))
    mask = torch.zeros(sum(counts) * n + 1, dtype=torch.bool, device=device)
    mask[global_index.flatten()] = True
    mask = mask[:-1].view(sum(counts), n)  # [C, N]
    width = max(int(mask.sum(dim=1).max()), 1) if mask.numel() else 1  # one host sync: the record's width
    positions = torch.arange(n, device=device).expand_as(mask)
    order = torch.where(mask, positions, positions + n).sort(dim=1).values[:, :width]  # [C, width] kept first
    valid = order < n
    index = torch.where(valid, order + 1, torch.full_like(order, -1))  # CLIP positions (CLS = 0)
    empty = torch.zeros(*valid.shape, 0, device=device)
    return ImageTokens(empty, valid, index)


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
    image_of_crop = crop_owners(counts, device)  # [C]
    tile = torch.arange(n_crops, device=device) - first_crops(counts, device)[image_of_crop]  # [C] 0 = base view, then tiles
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


def compact(features: torch.Tensor, positions: torch.Tensor, counts: torch.Tensor) -> ImageTokens:
    """Tokens ``positions`` [n, T] (ascending, those past ``counts`` [n] ignored) of ``features``
    [n, L, D] as padded ImageTokens [n, T, D]."""
    valid = torch.arange(positions.shape[1], device=positions.device)[None, :] < counts[:, None]  # [n, T]
    index = positions.clamp(0, features.shape[1] - 1)
    out = features.gather(1, index[..., None].expand(-1, -1, features.shape[-1]))  # [n, T, D]
    return ImageTokens(out * valid[..., None], valid, None)


def positions_mask(positions: torch.Tensor, length: int) -> torch.Tensor:
    """[n, length] bool: True at every position of ``positions`` [n, T]; entries equal to ``length``
    (past a row's own count) mark nothing. They are scattered into a spare column, so they can never
    overwrite a kept last position."""
    mask = torch.zeros(positions.shape[0], length + 1, dtype=torch.bool, device=positions.device)
    return mask.scatter_(1, positions, True)[:, :length]
