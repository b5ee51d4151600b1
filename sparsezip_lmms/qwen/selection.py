"""What a Qwen2.5-VL model kept for each request, as a selection record (logged as ``eff_selection``).

The format is ``llava.selection``'s (version 1; ``docs/ALGORITHMS.md``, "Selection records"), with one
field more: every image carries its own ``grid``, since the images of a request differ in size::

    {"version": 1, "method": "visionzip", "grid": [8, 12],
     "images": [{"image": "3fa2c1d09b7e", "grid": [8, 12], "tokens": 67, "cls": false, "kept": "3,7-9,40"}]}

Positions are the image's merged tokens (2 × 2 patches: 28 × 28 pixels of the image as the processor
resized it), numbered row-major on its merged grid ``[h / 2, w / 2]`` of ``image_grid_thw``. ``kept``: the
merged tokens whose slots enter the LLM (``QwenGeneration.kept``: VisionZip's dominant tokens and contextual
targets, pool's and SparseZip's anchors: a token built from several sits at its anchor's slot); ``tokens``:
how many enter; ``cls`` is always false (no CLS token). In-LLM methods (every merged token enters) add
``layers``: per pruning layer the merged tokens still in the sequence after it (recycled tokens left out).
The record's own ``grid`` is the one its images share (every single-image record), else null.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..llava.selection import SELECTION_VERSION, layer_kept_patches
from ..ranges import format_ranges

__all__ = ["MERGED_TOKEN_PIXELS", "merged_grid", "qwen_selections"]

MERGED_TOKEN_PIXELS = 28  # side of one merged token in the resized image: patch 14 x spatial merge 2


def merged_grid(grid_thw: list[int] | tuple[int, int, int], merge: int) -> list[int]:
    """[rows, cols] of an image's merged tokens from its ``image_grid_thw`` row (t, h, w) in patches."""
    t, h, w = (int(v) for v in grid_thw)
    if t != 1:
        raise ValueError(f"a selection record describes one frame per image, got t={t}")
    return [h // merge, w // merge]


def qwen_selections(
    method: str,
    grids_thw: list[list[int]],
    merge: int,
    image_rows: list[int],
    kept: list[Tensor],
    fingerprints: list[str],
    rows: int,
    pruned: Any | None = None,
) -> list[dict[str, Any]]:
    """One record per prompt of a batch of ``rows`` prompts.

    grids_thw: (t, h, w) of every image of the batch, in batch order; image_rows: the prompt of each image;
    kept: per image its kept merged-token indices (CPU, ascending; ``QwenGeneration.kept``); fingerprints:
    ``llava.selection.image_fingerprint`` of each image; pruned: the in-LLM methods' ``PrunedOutput`` (one
    image per prompt: its rows are the images). Built once per batch on the host; a record depends on its own
    prompt only, never on the rest of the batch."""
    grids = [merged_grid(grid, merge) for grid in grids_thw]
    counts = [r * c for r, c in grids]  # N of each image
    layers = None
    if pruned is not None:  # one image per row: image i is row i, its span its N merged tokens
        layers = layer_kept_patches(pruned.kept, tuple(pruned.pruning_layers), counts)
    entries: list[list[dict[str, Any]]] = [[] for _ in range(rows)]
    for image, (grid, n, row) in enumerate(zip(grids, counts, image_rows)):
        if pruned is not None:  # every merged token enters the LLM; the layers keep fewer
            entry = {"image": fingerprints[image], "grid": grid, "tokens": n, "cls": False,
                     "kept": format_ranges(range(n)), "layers": layers[row] if layers else {}}  # fmt: skip
        else:
            picked = kept[image].tolist()  # [kept] ascending merged-token indices
            entry = {"image": fingerprints[image], "grid": grid, "tokens": len(picked), "cls": False,
                     "kept": format_ranges(picked)}  # fmt: skip
        entries[row].append(entry)
    records = []
    for images in entries:
        shared = [list(g) for g in {tuple(entry["grid"]) for entry in images}]
        records.append({
            "version": SELECTION_VERSION, "method": method, "grid": shared[0] if len(shared) == 1 else None,
            "images": images,
        })  # fmt: skip
    return records
