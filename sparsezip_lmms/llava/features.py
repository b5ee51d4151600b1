"""Image tokens for the LLM: CLIP once, scoring inputs, compression, projector.

``image_tokens`` is the one place where pixels become the visual tokens a LLaVA language model
reads. For a ``"stock"`` or ``"llm"`` method (keep-all, SparseVLM, FastV) it is LLaVA's own feature
path, so the uncompressed models are the stock model; a ``"vision"`` method compresses the CLIP layer -2
states before the projector, a ``"projected"`` one selects among the projector's outputs
(``llava.projected``).
"""

from __future__ import annotations

import torch

from ..config import CompressionConfig
from ..efficiency.clock import MethodTimer, method_step
from ..methods.registry import method_of
from .image_tokens import ImageTokens, check_feature_path, llava_parts
from .projected import next_projected_selection, projected_selection


def uses_stock_features(config: CompressionConfig) -> bool:
    """True when every image reaches the LLM as LLaVA's own tokens (keep-all, the in-LLM methods)."""
    return method_of(config).stage in ("stock", "llm")


def stock_image_tokens(model, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None) -> ImageTokens:
    """All visual tokens exactly as the llava-hf model computes them: LLaVA-1.5's 576 per image, or
    LLaVA-NeXT's packed sequence per image (base view, unpadded tiles with a newline token ending each
    row; ``image_sizes`` [n_images, 2] from the processor), padded to the longest."""
    inner = getattr(model, "model", model)
    if image_sizes is None:
        out = inner.get_image_features(pixel_values=pixel_values, return_dict=True)
    else:
        out = inner.get_image_features(pixel_values=pixel_values, image_sizes=image_sizes, return_dict=True)
    per_image = list(out.pooler_output)  # n_images x [T_i, D_llm]
    features = torch.nn.utils.rnn.pad_sequence(per_image, batch_first=True)  # [n_images, T_max, D_llm]
    lengths = torch.tensor([t.shape[0] for t in per_image], device=features.device)  # [n_images]
    valid = torch.arange(features.shape[1], device=features.device)[None, :] < lengths[:, None]  # [n, T_max]
    return ImageTokens(features, valid, None)


def text_pull_back(model, config: CompressionConfig):
    """The folded question pull-back (``compress.PullBack``) of ``model``'s projector when ``config``
    compares the question with the patches in CLIP space; None otherwise. Made once per model."""
    from ..compress import needs_text, projector_pull_back

    if not needs_text(config) or getattr(config, "text_space", None) != "vision" or config.text_source != "projector":
        return None
    return projector_pull_back(llava_parts(model)[1])


def image_tokens(
    model,
    pixel_values: torch.Tensor,  # [n_images, 3, H, W]
    config: CompressionConfig,
    text_embeds: torch.Tensor | None = None,  # [n_images, L_text, D_llm] question embeddings per image
    text_mask: torch.Tensor | None = None,  # [n_images, L_text] bool
    pull_back=None,  # compress.PullBack of this model's projector (text_space "vision"), made once by the caller
    image_keys: torch.Tensor | None = None,  # [n_images] compress.image_keys of the float32 pixels (random)
    clip_text=None,  # llava.clip_text.ClipText (CDPruner), loaded once by the caller
    question_embeds: tuple[torch.Tensor, torch.Tensor] | None = None,  # CDPruner: CLIP text embeds, mask
    with_patches: bool = False,  # also return every projected patch token (deferred pruning)
    image_sizes: torch.Tensor | None = None,  # [n_images, 2] LLaVA-NeXT: each image's (height, width)
    grid_pinpoints: list | None = None,  # LLaVA-NeXT: the tile grid the processor used (None: the checkpoint's)
    groups: torch.Tensor | None = None,  # [n_images] long: rows sharing one budget (NeXT crops, SparseZip per_image)
    timer: MethodTimer | None = None,  # times the method's own steps (efficiency.clock)
) -> ImageTokens:
    """Visual tokens entering the LLM for each image under ``config`` (its selection, before the LLM)."""
    if uses_stock_features(config):
        return stock_image_tokens(model, pixel_values, image_sizes)
    stage = method_of(config).stage
    if image_sizes is not None and stage == "projected":
        return next_projected_selection(
            model, pixel_values, image_sizes, config, clip_text, question_embeds, grid_pinpoints, timer=timer
        )
    if image_sizes is not None:
        return next_image_tokens(
            model, pixel_values, image_sizes, config, text_embeds, text_mask, pull_back, image_keys, timer=timer
        )
    if stage == "projected":
        return projected_selection(model, pixel_values, config, clip_text, question_embeds, with_patches, timer=timer)

    from ..compress import compress, needs_text, text_relevance
    from .scoring import scoring_inputs

    vision_tower, projector, llava_config = llava_parts(model)
    inputs = scoring_inputs(vision_tower, pixel_values, layer=check_feature_path(llava_config))  # hidden [n, 1+N, C]
    with method_step(timer):  # the method's own steps: text relevance, scoring, selection, merging
        relevance = None
        if needs_text(config) and text_embeds is not None and config.text_source == "seed_keys":
            from ..compress import seed_key_relevance  # the seed's (reproduction only): question mean vs unit keys

            relevance = seed_key_relevance(inputs.keys, text_embeds, text_mask)[:, 1:]  # [n, N]
        elif needs_text(config) and text_embeds is not None:
            relevance = text_relevance(
                inputs.hidden[:, 1:], text_embeds, text_mask, projector, space=config.text_space, pull_back=pull_back
            )  # [n, N]
        compressed = compress(
            inputs.hidden, inputs.cls_attn, inputs.keys, config, text_relevance=relevance, image_keys=image_keys,
            groups=groups,
        )  # fmt: skip
    features = projector(compressed.tokens)  # [n, T_max, D_llm]
    patches = projector(inputs.hidden[:, 1:]) if with_patches else None  # [n, N, D_llm]
    return ImageTokens(features, compressed.valid, compressed.index, patches, compressed.members)


def next_image_tokens(
    model,
    pixel_values: torch.Tensor,  # [n_images, crops_max, 3, H, W]
    image_sizes: torch.Tensor,  # [n_images, 2] (height, width)
    config: CompressionConfig,
    text_embeds: torch.Tensor | None = None,  # [n_images, L_text, D_llm]
    text_mask: torch.Tensor | None = None,  # [n_images, L_text]
    pull_back=None,
    image_keys: torch.Tensor | None = None,  # [C] compress.image_keys of every crop (random)
    timer: MethodTimer | None = None,
) -> ImageTokens:
    """LLaVA-NeXT: every crop (base view and tiles) compressed as a LLaVA-1.5 image (a text-aware
    method scores each crop against its image's question), then laid out per image in VisionZip's
    official NeXT order (``llava.next.per_crop_layout``; SparseZip uses the same, each crop with its
    own dynamic budget, or with ``next_budget: per_image`` one budget per image shared by its crops)."""
    from .next import crop_counts, crop_owners, flatten_crops, per_crop_layout, tile_grids

    if "llava_next" not in method_of(config).families:
        raise ValueError(f"method {config.method!r} does not run on LLaVA-NeXT's tiles")
    _, _, llava_config = llava_parts(model)
    counts = crop_counts(image_sizes, llava_config)
    repeat = torch.tensor(counts, device=pixel_values.device)  # [n_images] crops of each image
    if text_embeds is not None:
        text_embeds = text_embeds.repeat_interleave(repeat, dim=0)  # [C, L_text, D_llm]
        text_mask = text_mask.repeat_interleave(repeat, dim=0)  # [C, L_text]
    flat = flatten_crops(pixel_values, counts)  # [C, 3, H, W]
    groups = None
    if getattr(config, "next_budget", "per_crop") == "per_image":
        groups = crop_owners(counts, pixel_values.device)  # [C] image of each crop
    crops = image_tokens(
        model, flat, config, text_embeds, text_mask, pull_back=pull_back, image_keys=image_keys, groups=groups,
        timer=timer,
    )  # [C, T, D]  # fmt: skip
    side = llava_config.vision_config.image_size // llava_config.vision_config.patch_size
    return per_crop_layout(crops, counts, tile_grids(image_sizes, llava_config), side)


def deferred_span(selected: ImageTokens) -> tuple[ImageTokens, torch.Tensor]:
    """The visual span of deferred pruning and which of its tokens stay from layer L on.

    selected: a vision-side method's tokens with ``patches`` (``image_tokens(..., with_patches=True)``).
    The span holds every patch, plus the selected tokens that are not patches (VisionZip's and
    SparseZip's CLS and merged tokens), in the order the selection itself uses: CLS, patches 1..N,
    merged. So at layer L exactly the tokens of the undeferred method remain, in the same order.
    Returns (span ImageTokens [n, V_max, D] with source_index CLIP position / -1, keep [n, V_max] bool).
    A patch selected twice (DivPrune's repeats) stays once.
    """
    if selected.patches is None or selected.source_index is None:
        raise ValueError("deferred pruning needs the selection's source positions and every projected patch")
    patches = selected.patches  # [n, N, D]
    n_images, n_patches, width = patches.shape
    device = patches.device
    index, valid = selected.source_index, selected.valid  # [n, T]
    has_cls = (valid & (index == 0)).any(dim=1)  # [n]
    merged = valid & (index < 0)  # [n, T]
    lengths = n_patches + has_cls.long() + merged.sum(dim=1)  # [n]
    width_v = int(lengths.max())  # one host sync: the span's size must be known
    slots = torch.arange(width_v, device=device)  # [V]
    span_valid = slots[None, :] < lengths[:, None]  # [n, V]
    features = patches.new_zeros(n_images, width_v, width)  # [n, V, D]
    source = torch.full((n_images, width_v), -1, dtype=torch.long, device=device)  # [n, V]
    keep = torch.zeros(n_images, width_v, dtype=torch.bool, device=device)  # [n, V]
    offset = has_cls.long()[:, None]  # [n, 1] CLS takes slot 0 where selected

    patch_slot = offset + torch.arange(n_patches, device=device)[None, :]  # [n, N]
    features.scatter_(1, patch_slot[..., None].expand(-1, -1, width), patches)
    source.scatter_(1, patch_slot, torch.arange(1, n_patches + 1, device=device).expand(n_images, -1))
    chosen = torch.zeros(n_images, n_patches + 1, dtype=torch.bool, device=device)  # [n, 1+N] by CLIP position
    chosen.scatter_(1, index.clamp(min=0), valid & (index > 0))
    keep.scatter_(1, patch_slot, chosen[:, 1:])

    cls_row = torch.argmax((valid & (index == 0)).long(), dim=1)  # [n] where CLS sits in the selection
    cls_features = selected.features[torch.arange(n_images, device=device), cls_row]  # [n, D]
    features[:, 0] = torch.where(has_cls[:, None], cls_features, features[:, 0])
    source[:, 0] = torch.where(has_cls, torch.zeros_like(source[:, 0]), source[:, 0])
    keep[:, 0] |= has_cls

    rank = merged.long().cumsum(dim=1) - 1  # [n, T] order among the merged tokens
    merged_slot = (offset + n_patches + rank).clamp(min=0, max=width_v - 1)  # [n, T]
    target = torch.where(merged, merged_slot, torch.full_like(merged_slot, width_v))  # non-merged -> a dump column
    dump = torch.zeros(n_images, width_v + 1, width, dtype=features.dtype, device=device)
    dump[:, :width_v] = features
    dump.scatter_(1, target[..., None].expand(-1, -1, width), selected.features.to(features.dtype) * merged[..., None])
    features = dump[:, :width_v]
    keep_dump = torch.zeros(n_images, width_v + 1, dtype=torch.bool, device=device)
    keep_dump[:, :width_v] = keep
    keep_dump.scatter_(1, target, merged)
    keep = keep_dump[:, :width_v] & span_valid
    return ImageTokens(features * span_valid[..., None], span_valid, source, patches), keep
