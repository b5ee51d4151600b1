"""What a model kept for each request, as a compact JSON record (logged as ``eff_selection``).

One record per request (format version 1; ``docs/ALGORITHMS.md``, "Selection records")::

    {"version": 1, "method": "visionzip", "grid": [24, 24],
     "images": [{"image": "3fa2c1d09b7e", "tokens": 64, "cls": true, "kept": "3,7-9,120",
                 "merged": ["0-2,24", ...], "layers": {"2": "0-9,300"}, "prune_layer": 3}]}

Patches are numbered 0..rows·cols−1 row-major on the CLIP grid; sets are range strings
(``ranges.format_ranges``). ``kept``: patches that enter the LLM as their own token;
``merged``: the member patches of each merged token (VisionZip's and SparseZip's contextual tokens,
pooling cells); ``layers``: in-LLM methods, the patches still in the sequence after pruning at that
decoder layer; ``prune_layer``: deferred pruning, the layer from which ``kept`` holds.

LLaVA-NeXT entries add ``crops`` and ``tile_grid``; a selection made crop by crop describes the base
view in ``kept`` / ``merged`` / ``cls`` (``base_tokens``), each tile in ``tiles`` and the kept newline
tokens in ``newlines``; the in-LLM methods' ``layers`` hold positions in the packed sequence, and
``layer_tiles`` / ``layer_newlines`` the same by tile.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch

from ..ranges import format_ranges
from .features import ImageTokens

SELECTION_VERSION = 1


def image_fingerprint(image: Any) -> str:
    """12 hex digits identifying an image's pixels (the same picture gives the same string)."""
    digest = hashlib.sha1(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()[:12]


def patch_grid(n_patches: int) -> list[int]:
    """[rows, cols] of a square CLIP patch grid."""
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise ValueError(f"a selection record needs a square patch grid, got {n_patches} patches")
    return [side, side]


def image_selections(selected: ImageTokens | None, n_images: int, n_patches: int) -> list[dict[str, Any]]:
    """Per image: ``tokens``, ``cls``, ``kept`` and ``merged`` of the tokens ``selected`` sends into the
    LLM (``source_index`` None: all patches, as LLaVA's own feature path). One host transfer."""
    if n_images == 0:
        return []
    if selected is None or selected.source_index is None:
        tokens = selected.counts.tolist() if selected is not None else [n_patches] * n_images
        everything = format_ranges(range(n_patches))
        return [{"tokens": int(t), "cls": False, "kept": everything} for t in tokens]
    index, valid = selected.source_index, selected.valid  # [n, T]
    is_kept = valid & (index >= 0)  # [n, T]
    slot = torch.where(is_kept, index, n_patches + 1)  # [n, T] merged tokens and padding -> a spare column
    kept = torch.zeros(n_images, n_patches + 2, dtype=torch.bool, device=index.device)  # [n, 1+N+1]
    kept.scatter_(1, slot, is_kept)  # duplicate positions (DivPrune's repeats) all write True
    kept = kept[:, : n_patches + 1]  # [n, 1+N] by CLIP position
    ordered = slot.sort(dim=1).values  # [n, T] kept positions ascending, the spare column last
    repeated = ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] <= n_patches)).sum(dim=1)  # [n] slots sent twice
    is_merged = valid & (index < 0)  # [n, T]
    members = selected.members  # [n, T, 1+N] or None
    merged_rows = members[is_merged][:, 1:].cpu() if members is not None else None  # [n_merged, N]
    owner = is_merged.nonzero()[:, 0].tolist()  # image of each merged row
    kept_cpu, counts, repeats = kept.cpu(), selected.counts.tolist(), repeated.tolist()
    out = []
    for i in range(n_images):
        entry = {
            "tokens": int(counts[i]),
            "cls": bool(kept_cpu[i, 0]),
            "kept": format_ranges(kept_cpu[i, 1:].nonzero()[:, 0].tolist()),
        }
        if repeats[i]:  # a patch sent more than once (DivPrune's official picks in half precision)
            entry["repeated"] = int(repeats[i])
        if merged_rows is not None:
            entry["merged"] = [
                format_ranges(merged_rows[j].nonzero()[:, 0].tolist()) for j, image in enumerate(owner) if image == i
            ]
        out.append(entry)
    return out


def next_selections(selected: ImageTokens, crops: list[int], n_patches: int) -> list[dict[str, Any]]:
    """Per LLaVA-NeXT image selected crop by crop (``selected.crops``): its base view's selection as
    ``kept`` / ``merged`` / ``cls`` (``base_tokens`` of them), ``tokens`` of the whole image, each
    tile's selection in ``tiles`` (row-major over the tile grid), and the image-newline tokens kept
    (``newlines``: DivPrune and CDPruner keep the stock packing's; counted from the tokens sent, 0 where
    the crops are compressed one by one)."""
    per_crop = image_selections(selected.crops, sum(crops), n_patches)
    newline_counts = selected.newlines.tolist() if selected.newlines is not None else [0] * len(crops)
    out, start = [], 0
    for count, tokens, newlines in zip(crops, selected.counts.tolist(), newline_counts):
        base, tiles = per_crop[start], per_crop[start + 1 : start + count]
        out.append({**base, "tokens": int(tokens), "base_tokens": base["tokens"], "tiles": tiles, "newlines": int(newlines)})
        start += count
    return out


def next_layout(entries: list[dict[str, Any]], crops: list[int], grids: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """LLaVA-NeXT records: each image's ``crops`` (base view + tiles) and ``tile_grid`` [rows, cols]
    (its tiles in ``tiles`` run row-major over that grid)."""
    return [{**entry, "crops": count, "tile_grid": list(grid)} for entry, count, grid in zip(entries, crops, grids)]


def layer_kept_patches(kept: list[torch.Tensor], layers: tuple[int, ...], spans: int | list[int]) -> list[dict[str, str]]:
    """Per row, {decoder layer: range string} of the span identities (0..span−1) each pruning layer kept.

    kept: the pruning decoder's ``PrunedOutput.kept``, per pruning layer [B, k_max] identities padded
    with −1; spans: each row's own visual span (LLaVA-1.5: the N patches; NeXT: the row's packed length),
    or one for all rows. Recycled tokens (ids from ``recycled_id_base`` of the row's span) and anything
    past the row's span are left out, so a row's record does not depend on the other rows of its batch."""
    if not kept:
        return []
    rows = kept[0].shape[0]
    spans = [spans] * rows if isinstance(spans, int) else list(spans)
    out: list[dict[str, str]] = [{} for _ in range(rows)]
    for layer, ids in zip(layers, kept):
        for row, values in enumerate(ids.tolist()):
            out[row][str(layer)] = format_ranges(v for v in values if 0 <= v < spans[row])
    return out


def next_layer_tiles(kept: list[torch.Tensor], layers: tuple[int, ...], sources: torch.Tensor, n_patches: int) -> list[dict[str, Any]]:
    """Per row (one LLaVA-NeXT image each), what each pruning layer kept of the packed sequence, by crop:
    ``{"layer_tiles": {layer: [range string per tile, row-major]}, "layer_newlines": {layer: count}}``.
    The base view's patches are the packed positions below ``n_patches`` (``layer_kept_patches``).

    kept: the pruning decoder's ``PrunedOutput.kept`` (per layer [B, k_max] packed positions, −1
    padding, recycled ids past the span); sources: ``llava.next.packed_sources`` of the rows' images."""
    from .next import NEWLINE

    sources = sources.cpu()
    rows, length = sources.shape
    out: list[dict[str, Any]] = [{"layer_tiles": {}, "layer_newlines": {}} for _ in range(rows)]
    tiles_of = (sources.clamp(min=0) // n_patches).amax(dim=1).tolist()  # [B] tiles of each image
    for layer, ids in zip(layers, kept):
        ids = ids.cpu()
        for row in range(rows):
            position = ids[row][(ids[row] >= 0) & (ids[row] < length)]
            source = sources[row, position]  # crop·N + patch, NEWLINE, or padding
            crop, patch = source // n_patches, source % n_patches
            tiles = [format_ranges(sorted(patch[(source >= 0) & (crop == t)].tolist())) for t in range(1, tiles_of[row] + 1)]
            out[row]["layer_tiles"][str(layer)] = tiles
            out[row]["layer_newlines"][str(layer)] = int((source == NEWLINE).sum())
    return out


def request_records(
    method: str,
    n_patches: int,
    images: list[dict[str, Any]],
    fingerprints: list[str],
    images_per_row: list[int],
    layers: list[dict[str, str]] | None = None,
    prune_layer: int | None = None,
    row_fields: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One record per prompt from its images' selections (``image_selections``, prompt order);
    ``row_fields``: more keys for the images of each prompt (``next_layer_tiles``)."""
    grid = patch_grid(n_patches)
    records, start = [], 0
    for row, count in enumerate(images_per_row):
        entries = []
        for offset in range(count):
            entry = {"image": fingerprints[start + offset], **images[start + offset]}
            if layers is not None:
                entry["layers"] = layers[row]
            if prune_layer is not None:
                entry["prune_layer"] = prune_layer
            if row_fields is not None:
                entry.update(row_fields[row])
            entries.append(entry)
        start += count
        records.append({"version": SELECTION_VERSION, "method": method, "grid": grid, "images": entries})
    return records
