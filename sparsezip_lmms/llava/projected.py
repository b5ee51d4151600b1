"""``"projected"`` methods on LLaVA: the projector runs on every patch, the method's ``select`` picks
among the projected tokens, and the picks enter the LLM in ascending order.

LLaVA-1.5: one row per image, its N patches. LLaVA-NeXT (``MethodSpec.next_candidates``):

* ``"crops"`` (CDPruner's official NeXT path, and a user's method by default): one row per crop (base
  view and tiles) with its N patches, ``groups`` naming each crop's image; the stock packing then
  applies the per-crop picks: newline tokens always stay, picks in the unpadded-away border drop out.
* ``"packed"`` (DivPrune's official NeXT path): one row per image holding its whole stock packed
  sequence (base view, unpadded tiles, newline tokens), ``valid`` marking each row's length; the picks
  are kept in sequence order.
"""

from __future__ import annotations

import torch

from ..efficiency.clock import MethodTimer, method_step
from ..methods.registry import method_of
from ..methods.spec import ProjectedInputs
from .image_tokens import ImageTokens, check_feature_path, llava_parts
from .next import (
    NEWLINE, compact, crop_counts, crop_owners, crop_patch_index, flatten_crops, gather_packed, packed_selection_crops,
    packed_sources, positions_mask, tile_grids,
)  # fmt: skip
from .scoring import feature_layer_hidden

__all__ = ["checked_picks", "next_projected_selection", "projected_selection"]


def checked_picks(order: object, rows: int, length: int, method: str) -> torch.Tensor:
    """A ``select`` result as ``[rows, k]`` long indices in ``[0, length)``, -1 for unused slots; refused by
    name otherwise."""
    if not isinstance(order, torch.Tensor) or order.dtype != torch.long or order.dim() != 2 or order.shape[0] != rows:
        got = f"{order.dtype} {tuple(order.shape)}" if isinstance(order, torch.Tensor) else type(order).__name__
        raise ValueError(f"method {method!r}: select must return a LongTensor [{rows}, k] of token indices, got {got}")
    if order.numel() and bool(((order < -1) | (order >= length)).any()):
        raise ValueError(f"method {method!r}: select returned indices outside [0, {length}) (-1 marks an unused slot)")
    return order


def _ascending(order: torch.Tensor, length: int) -> torch.Tensor:
    """[rows, k] picks in ascending order, unused slots (-1) moved to the end as ``length``."""
    return torch.where(order < 0, torch.full_like(order, length), order).sort(dim=1).values


def _inputs(spec, config, projected, valid, side, hidden, vision_tower, clip_text, question, groups) -> ProjectedInputs:
    clip_patches = clip_question = None
    if spec.needs("clip_text", config):
        from ..compress.cdpruner import cdpruner_patch_embeds

        if clip_text is None or question is None:
            raise ValueError(f"{spec.name} needs the CLIP text tower and the question embeds")
        clip_patches = cdpruner_patch_embeds(hidden, vision_tower.post_layernorm, clip_text.visual_projection)  # [B, N, P]
        clip_question = question
    return ProjectedInputs(projected, valid, (side, side), hidden, clip_patches, clip_question, groups)


def projected_selection(
    model,
    pixel_values: torch.Tensor,  # [n_images, 3, H, W]
    config,
    clip_text=None,  # llava.clip_text.ClipText ("clip_text" methods)
    question_embeds: tuple[torch.Tensor, torch.Tensor] | None = None,  # CLIP text embeds [n, M, P], mask [n, M]
    with_patches: bool = False,
    timer: MethodTimer | None = None,  # times the method's own inputs and selection
) -> ImageTokens:
    """LLaVA-1.5: the method picks among each image's N projected patches; the picks enter the LLM in
    ascending patch order (repeats stay, as DivPrune's official code keeps them)."""
    spec = method_of(config)
    vision_tower, projector, llava_config = llava_parts(model)
    hidden = feature_layer_hidden(vision_tower, pixel_values, layer=check_feature_path(llava_config))  # [n, 1+N, C]
    patches = projector(hidden[:, 1:])  # [n, N, D_llm]
    n_images, n_patches = patches.shape[:2]
    side = int(round(n_patches**0.5))
    valid = torch.ones(patches.shape[:2], dtype=torch.bool, device=patches.device)  # [n, N]
    with method_step(timer):
        inputs = _inputs(spec, config, patches, valid, side, hidden, vision_tower, clip_text, question_embeds, None)
        order = checked_picks(spec.select(inputs, config), n_images, n_patches, spec.name)  # [n, k]
    kept = _ascending(order, n_patches)  # [n, k] ascending patch index, unused slots last
    picked = kept < n_patches  # [n, k]
    features = patches.gather(1, kept.clamp(max=n_patches - 1)[..., None].expand(-1, -1, patches.shape[-1]))  # [n, k, D]
    features = features * picked[..., None]
    index = torch.where(picked, kept + 1, torch.full_like(kept, -1))  # CLIP positions (CLS = 0)
    return ImageTokens(features, picked, index, patches if with_patches else None)


def next_projected_selection(
    model,
    pixel_values: torch.Tensor,  # [n_images, crops_max, 3, H, W]
    image_sizes: torch.Tensor,  # [n_images, 2] (height, width)
    config,
    clip_text=None,
    question_embeds: tuple[torch.Tensor, torch.Tensor] | None = None,  # [n_images, M, P], [n_images, M]
    pinpoints: list | None = None,
    timer: MethodTimer | None = None,
) -> ImageTokens:
    """LLaVA-NeXT, as the module docstring says. ``pinpoints``: the tile grid the processor used
    (CDPruner's fixed 2 x 2), None: the checkpoint's."""
    spec = method_of(config)
    vision_tower, projector, llava_config = llava_parts(model)
    counts = crop_counts(image_sizes, llava_config, pinpoints)
    grids = tile_grids(image_sizes, llava_config, pinpoints)
    side = llava_config.vision_config.image_size // llava_config.vision_config.patch_size
    n = side * side
    device = pixel_values.device
    flat = flatten_crops(pixel_values, counts)  # [C, 3, H, W]
    hidden = feature_layer_hidden(vision_tower, flat, layer=check_feature_path(llava_config))  # [C, 1+N, Cv]
    patches = projector(hidden[:, 1:])  # [C, N, D]
    sources = packed_sources(image_sizes, counts, grids, side).to(device)  # [n_images, L]
    newline = getattr(model, "model", model).image_newline  # [D]
    packed, valid = gather_packed(patches, newline, sources, counts)  # [n_images, L, D], [n_images, L]
    lengths = valid.sum(dim=1)  # [n_images]

    if spec.next_candidates == "packed":
        inputs = ProjectedInputs(packed, valid, (side, side))
        with method_step(timer):
            order = checked_picks(spec.select(inputs, config), packed.shape[0], packed.shape[1], spec.name)  # [n, k_max]
        positions = _ascending(order, packed.shape[1])
        selected = compact(packed, positions, (positions < packed.shape[1]).sum(dim=1))
        keep = positions_mask(positions, packed.shape[1])  # [n_images, L]
        slot_sources = sources.gather(1, positions.clamp(max=sources.shape[1] - 1))  # [n_images, k_max]
        selected.newlines = ((slot_sources == NEWLINE) & selected.valid).sum(dim=1)  # repeated picks count as sent
        selected.candidates = lengths
    else:
        repeat = torch.tensor(counts, device=device)  # [n_images]
        question = None
        if question_embeds is not None:
            text, text_mask = question_embeds
            question = (text.repeat_interleave(repeat, dim=0), text_mask.repeat_interleave(repeat, dim=0))  # per crop
        groups = crop_owners(counts, device)  # [C] image of each crop
        with method_step(timer):
            inputs = _inputs(spec, config, patches, torch.ones(patches.shape[:2], dtype=torch.bool, device=device), side,
                             hidden, vision_tower, clip_text, question, groups)  # fmt: skip
            order = checked_picks(spec.select(inputs, config), patches.shape[0], n, spec.name)  # [C, k]
        crop_keep = torch.zeros((patches.shape[0], n + 1), dtype=torch.bool, device=device)  # [C, N + 1]: N = unused
        crop_keep = crop_keep.scatter_(1, _ascending(order, n), True)[:, :n]  # [C, N]
        at_source = crop_keep.flatten()[crop_patch_index(sources, counts, n).clamp(min=0)]  # [n_images, L]
        keep = valid & ((sources == NEWLINE) | at_source)  # [n_images, L]
        kept_counts = keep.sum(dim=1)  # [n_images]
        positions = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, : int(kept_counts.max())]
        selected = compact(packed, positions, kept_counts)
        selected.newlines = (keep & (sources == NEWLINE)).sum(dim=1)  # [n_images]
    selected.crops = packed_selection_crops(sources, keep, counts, n)
    return selected
