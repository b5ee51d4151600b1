"""Kept patches drawn on the image: one panel per method (and per pruning layer of in-LLM methods).

A panel shows the image as the vision tower saw it (shortest side resized, centre crop, as LLaVA-1.5's
CLIP processor does) with its patch grid: patches kept as their own token stay bright with a thin
outline, the member patches of each merged token are tinted in that token's colour, dropped patches
are darkened. Drawn with PIL on the patch grid (no per-patch matplotlib artists), laid out and titled
with matplotlib.

A LLaVA-NeXT image selected crop by crop (its record has ``tiles``) is drawn as one wider picture:
the base view (the whole image squashed to one crop) with the base view's selection, then the tile
mosaic (the image resized into the tile grid and padded, as llava-hf's ``LlavaNextImageProcessor``
does) with each tile's selection on its own patch grid.

A Qwen2.5-VL record gives each image its own merged grid (``qwen.selection``): its panels show the
image as Qwen's processor resized it (``smart_resize``: rows·28 × cols·28 pixels), a cell of
28 × 28 pixels per merged token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .selection import parse_ranges

DROPPED_ALPHA = 0.72  # darkening of a dropped patch
MERGED_ALPHA = 0.5  # tint of a merged token's member patches
KEPT_EDGE = (255, 214, 0)  # outline of a kept patch
LEGEND = "bright, outlined: kept patch · tinted: merged into a token (one colour per token) · dark: dropped"
TILE_CROP = 336  # LLaVA-NeXT: side of one tile (the vision tower's input size)
TILE_GAP = 4  # white pixels between the tiles of a drawn mosaic
BASE_GAP = 16  # white pixels between a NeXT panel's base view and its tile mosaic
BACKGROUND = (255, 255, 255)  # around the pictures of a NeXT panel (the figure's colour)
MERGED_TOKEN_PIXELS = 28  # Qwen2.5-VL: side of one merged token in the resized image (qwen.selection)


@dataclass(frozen=True)
class Panel:
    """One drawing: a title and the patch sets to show on the image. A LLaVA-NeXT panel also holds
    each tile's selection (``tiles``, row-major over ``tile_grid``); its own sets are the base view's."""

    title: str
    grid: tuple[int, int]  # (rows, cols) of the patch grid (of one crop, for NeXT)
    kept: frozenset[int]  # patches kept as their own token
    merged: tuple[tuple[int, ...], ...] = ()  # member patches of each merged token
    tiles: tuple[Panel, ...] = ()  # NeXT: one untitled panel per tile, rows·cols of them
    tile_grid: tuple[int, int] | None = None  # NeXT: (rows, cols) of the tiles
    pixels: tuple[int, int] | None = None  # Qwen2.5-VL: (height, width) of the resized image the grid covers


def model_view(image: Image.Image, resize: int = 336, crop: tuple[int, int] = (336, 336), squash: bool = False) -> Image.Image:
    """The part of ``image`` the vision tower sees: shortest side to ``resize`` (bicubic), centre crop
    ``crop`` (height, width), RGB. ``squash``: LLaVA-NeXT's base view, the whole image resized to
    ``crop`` (the panels then show the base view's selection)."""
    image = image.convert("RGB")
    if squash:
        return image.resize((crop[1], crop[0]), Image.Resampling.BICUBIC)
    width, height = image.size
    scale = resize / min(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = image.resize(size, Image.Resampling.BICUBIC)
    crop_h, crop_w = crop
    left, top = (size[0] - crop_w) // 2, (size[1] - crop_h) // 2
    return resized.crop((left, top, left + crop_w, top + crop_h))


def qwen_view(image: Image.Image, grid: tuple[int, int]) -> Image.Image:
    """``image`` as Qwen2.5-VL's processor saw it: RGB, resized (bicubic) to its merged ``grid`` (rows,
    cols) × 28 pixels, the size ``smart_resize`` gave it (``models.qwen_pipeline.resize_image``)."""
    rows, cols = grid
    size = (cols * MERGED_TOKEN_PIXELS, rows * MERGED_TOKEN_PIXELS)  # (width, height)
    return image.convert("RGB").resize(size, Image.Resampling.BICUBIC)


def patch_output_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of an image of ``size`` (width, height) resized, aspect ratio kept, to fit
    inside ``target`` (width, height): the side with the smaller scale fills the target, the other
    is rounded up (``transformers.image_processing_utils.get_patch_output_size``)."""
    width, height = size
    target_width, target_height = target
    scale_w, scale_h = target_width / width, target_height / height
    if scale_w < scale_h:
        return target_width, min(math.ceil(height * scale_w), target_height)
    return min(math.ceil(width * scale_h), target_width), target_height


def tile_view(image: Image.Image, tile_grid: tuple[int, int], crop: int = TILE_CROP) -> Image.Image:
    """LLaVA-NeXT's tile mosaic of ``image`` for ``tile_grid`` (rows, cols): the image resized
    (bicubic, aspect ratio kept) to fit (cols·crop) × (rows·crop), centred on a black canvas of
    exactly that size (the left / top padding gets the smaller half). Tile (r, c) is the crop×crop
    square at (c·crop, r·crop). RGB, size (cols·crop, rows·crop)."""
    rows, cols = tile_grid
    target = (cols * crop, rows * crop)  # (width, height)
    image = image.convert("RGB")
    size = patch_output_size(image.size, target)
    canvas = Image.new("RGB", target, (0, 0, 0))
    canvas.paste(image.resize(size, Image.Resampling.BICUBIC), ((target[0] - size[0]) // 2, (target[1] - size[1]) // 2))
    return canvas


def tile_origin(row: int, col: int, crop: int = TILE_CROP, gap: int = TILE_GAP) -> tuple[int, int]:
    """(x, y) of tile (row, col)'s top-left pixel in a mosaic drawn by :func:`draw_tiles`."""
    return col * (crop + gap), row * (crop + gap)


def draw_tiles(mosaic: Image.Image, panel: Panel, crop: int = TILE_CROP, gap: int = TILE_GAP) -> Image.Image:
    """``mosaic`` (a :func:`tile_view`) with each of ``panel.tiles`` drawn on its crop×crop tile, the
    tiles pasted back ``gap`` white pixels apart: size (cols·crop + (cols−1)·gap, rows·crop + (rows−1)·gap)."""
    rows, cols = panel.tile_grid
    out = Image.new("RGB", (cols * crop + (cols - 1) * gap, rows * crop + (rows - 1) * gap), BACKGROUND)
    for index, tile in enumerate(panel.tiles[: rows * cols]):
        row, col = divmod(index, cols)
        piece = mosaic.crop((col * crop, row * crop, (col + 1) * crop, (row + 1) * crop))  # [crop, crop]
        out.paste(draw_panel(piece, tile), tile_origin(row, col, crop, gap))
    return out


def draw_next_panel(view: Image.Image, mosaic: Image.Image, panel: Panel, crop: int = TILE_CROP) -> Image.Image:
    """One LLaVA-NeXT picture: ``view`` (the base view) with the base selection, then, ``BASE_GAP``
    pixels to its right, the tile mosaic with each tile's selection (:func:`draw_tiles`); the base
    view is centred vertically on the mosaic's height, at the same pixel scale as the tiles.
    Size (base width + BASE_GAP + mosaic width, the larger height)."""
    base = draw_panel(view, panel)
    tiles = draw_tiles(mosaic, panel, crop)
    height = max(base.height, tiles.height)
    out = Image.new("RGB", (base.width + BASE_GAP + tiles.width, height), BACKGROUND)
    out.paste(base, (0, (height - base.height) // 2))
    out.paste(tiles, (base.width + BASE_GAP, (height - tiles.height) // 2))
    return out


def _grid_of(entry: dict[str, Any]) -> tuple[int, int] | None:
    """A NeXT record's (rows, cols) of tiles, or None (LLaVA-1.5, or a malformed ``tile_grid``)."""
    tile_grid = entry.get("tile_grid")
    if not tile_grid or len(tile_grid) != 2:
        return None
    rows, cols = (int(v) for v in tile_grid)
    return (rows, cols) if rows >= 1 and cols >= 1 else None


def _tile_panels(entry: dict[str, Any], grid: tuple[int, int]) -> tuple[tuple[Panel, ...], tuple[int, int] | None]:
    """(a panel per tile, the tile grid) of a NeXT record with a complete ``tiles`` list, else ((), None)."""
    tiles, tile_grid = entry.get("tiles"), _grid_of(entry)
    if not tiles or tile_grid is None:
        return (), None
    rows, cols = tile_grid
    if len(tiles) != rows * cols:
        return (), None
    panels = tuple(
        Panel("", grid, frozenset(parse_ranges(tile.get("kept", ""))), tuple(tuple(parse_ranges(m)) for m in tile.get("merged") or ()))
        for tile in tiles
    )  # fmt: skip
    return panels, (rows, cols)


def _own_grid(entry: dict[str, Any]) -> tuple[int, int] | None:
    """A Qwen2.5-VL record's (rows, cols) of the image's own merged grid, or None (no valid ``grid``)."""
    grid = entry.get("grid")
    if not isinstance(grid, list) or len(grid) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in grid):
        return None
    return grid[0], grid[1]


def panels_of(entry: dict[str, Any], grid: tuple[int, int], label: str, answer: str | None = None) -> list[Panel]:
    """The panels of one image's selection record: :func:`_panels` on ``grid``, or, for a Qwen2.5-VL
    record, on the image's own merged grid, the panels then holding the resized image's ``pixels``."""
    own = _own_grid(entry)
    if own is None:
        return _panels(entry, grid, label, answer)
    pixels = (own[0] * MERGED_TOKEN_PIXELS, own[1] * MERGED_TOKEN_PIXELS)
    return [replace(panel, pixels=pixels) for panel in _panels(entry, own, label, answer)]


def _panels(entry: dict[str, Any], grid: tuple[int, int], label: str, answer: str | None = None) -> list[Panel]:
    """The panels of one image's selection record (``llava.selection`` format): one for a vision-side
    method, one per pruning layer for an in-LLM method. Titles name the method, the tokens it kept and
    (when given) the answer it generated. A LLaVA-NeXT record with ``tiles`` gives one panel holding
    the base view's and every tile's selection (titled with the image's tokens, the base view's and
    the tile count); an in-LLM method's NeXT record with ``layer_tiles`` gives such a panel per pruning
    layer; other NeXT records show the base view."""
    said = ("\n" + (f'"{_short(answer)}"' if answer.strip() else "(empty answer)")) if answer is not None else ""
    newlines = f"{entry['newlines']} newlines" if entry.get("newlines") else ""  # DivPrune and CDPruner keep some
    layers = entry.get("layers") or {}
    if layers:
        panels = []
        by_tile, tile_grid = entry.get("layer_tiles") or {}, _grid_of(entry)
        for layer, ranges in sorted(layers.items(), key=lambda item: int(item[0])):
            kept = frozenset(parse_ranges(ranges))
            tiles = by_tile.get(layer)
            if tile_grid is not None and tiles is not None and len(tiles) == tile_grid[0] * tile_grid[1]:
                # LLaVA-NeXT: packed positions below the crop's patch count are the base view's patches
                base = frozenset(k for k in kept if k < grid[0] * grid[1])
                tile_panels = tuple(Panel("", grid, frozenset(parse_ranges(t))) for t in tiles)
                counts = [f"{len(kept)} tokens", f"base view {len(base)}", f"tiles {sum(len(p.kept) for p in tile_panels)}"]
                counts += [f"{entry['layer_newlines'][layer]} newlines"] if (entry.get("layer_newlines") or {}).get(layer) else []
                title = f"{label}\nafter layer {layer}: {' · '.join(counts)}{said}"
                panels.append(Panel(title, grid, base, (), tile_panels, tile_grid))
                continue
            extra = f" · {newlines}" if newlines else ""
            panels.append(Panel(f"{label}\nafter layer {layer}: {len(kept)} patches{extra}{said}", grid, kept))
        return panels
    kept = frozenset(parse_ranges(entry.get("kept", "")))
    merged = tuple(tuple(parse_ranges(m)) for m in entry.get("merged") or ())
    tokens = entry.get("tokens", len(kept) + len(merged))
    parts = ["CLS"] if entry.get("cls") else []
    parts.append(f"{len(kept)} kept")
    if merged:
        parts.append(f"{len(merged)} merged")
    when = f", from layer {entry['prune_layer']}" if entry.get("prune_layer") is not None else ""
    tiles, tile_grid = _tile_panels(entry, grid) if entry.get("crops") else ((), None)
    if tile_grid is not None:  # LLaVA-NeXT, selected crop by crop: base view, then the tiles
        rows, cols = tile_grid
        base_tokens = entry.get("base_tokens", len(kept) + len(merged) + int(bool(entry.get("cls"))))
        counts = [f"{tokens} tokens", f"base view {base_tokens}", f"{len(tiles)} tiles ({rows}×{cols})"]
        counts += [newlines] if newlines else []
        title = f"{label}\n{' · '.join(counts)}\nbase: {' · '.join(parts)}{when}{said}"
        return [Panel(title, grid, kept, merged, tiles, tile_grid)]
    if entry.get("crops"):  # LLaVA-NeXT: the panel shows the base view's selection
        when += f"\nbase view of {entry['crops']} crops" + (f" · {newlines}" if newlines else "")
    elif newlines:
        when += f"\n{newlines}"
    return [Panel(f"{label}\n{' · '.join([f'{tokens} tokens', *parts])}{when}{said}", grid, kept, merged)]


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def group_colours(n: int) -> np.ndarray:
    """[n, 3] uint8 distinct colours (matplotlib's tab20, cycled)."""
    import matplotlib

    table = np.array([matplotlib.colormaps["tab20"](i % 20)[:3] for i in range(max(n, 1))])
    return (table[:n] * 255).astype(np.uint8)


def draw_panel(view: Image.Image, panel: Panel) -> Image.Image:
    """``view`` (the model's view of the image) with ``panel``'s selection drawn on its patch grid."""
    rows, cols = panel.grid
    base = np.asarray(view.convert("RGB"), dtype=np.float32)  # [H, W, 3]
    height, width = base.shape[:2]
    cell_rows = (np.arange(height) * rows) // height  # [H] grid row of each pixel row
    cell_cols = (np.arange(width) * cols) // width  # [W]
    cell = cell_rows[:, None] * cols + cell_cols[None, :]  # [H, W] patch index of each pixel

    n_cells = rows * cols
    tint = np.zeros((n_cells, 3), dtype=np.float32)
    alpha = np.full(n_cells, DROPPED_ALPHA, dtype=np.float32)  # dropped: blend towards black
    colours = group_colours(len(panel.merged)).astype(np.float32)
    for colour, members in zip(colours, panel.merged):  # first token wins a shared patch (pool windows)
        members = [m for m in members if 0 <= m < n_cells and alpha[m] == DROPPED_ALPHA]
        tint[members] = colour
        alpha[members] = MERGED_ALPHA
    kept = [k for k in panel.kept if 0 <= k < n_cells]
    alpha[kept] = 0.0
    a = alpha[cell][..., None]  # [H, W, 1]
    out = Image.fromarray((base * (1 - a) + tint[cell] * a).clip(0, 255).astype(np.uint8))

    draw = ImageDraw.Draw(out)
    for k in kept:
        r, c = divmod(k, cols)
        x0, x1 = c * width // cols, (c + 1) * width // cols - 1
        y0, y1 = r * height // rows, (r + 1) * height // rows - 1
        draw.rectangle([x0, y0, x1, y1], outline=KEPT_EDGE, width=1)
    return out


def panel_picture(panel: Panel, view: Image.Image, image: Image.Image | None = None, crop: int = TILE_CROP) -> Image.Image:
    """What one panel shows: ``view`` with the panel's selection, and for a LLaVA-NeXT panel with
    tiles (given the original ``image``) the base view ``view`` next to ``image``'s tile mosaic for
    the panel's own tile grid (:func:`draw_next_panel`). A Qwen2.5-VL panel (``pixels``) is drawn on
    ``image`` resized as Qwen's processor resized it (:func:`qwen_view`; without ``image``, on ``view``
    stretched to that size)."""
    if panel.pixels is not None:
        return draw_panel(qwen_view(image if image is not None else view, panel.grid), panel)
    if panel.tile_grid is None or image is None:
        return draw_panel(view, panel)
    return draw_next_panel(view, tile_view(image, panel.tile_grid, crop), panel, crop)


def layout(spans: list[int], columns: int) -> list[tuple[int, int, int]]:
    """(row, first column, span) of cells ``spans`` columns wide, filled row by row into ``columns``
    columns (a cell that does not fit the rest of a row starts the next one)."""
    out, row, col = [], 0, 0
    for span in spans:
        span = max(1, min(span, columns))
        if col + span > columns:
            row, col = row + 1, 0
        out.append((row, col, span))
        col += span
    return out


def _span(picture: Image.Image) -> int:
    """Columns a picture takes in the figure: about its width / height (1 for a square view)."""
    return max(1, round(picture.width / picture.height))


def overlay_figure(
    view: Image.Image,
    panels: list[Panel],
    path: str | Path,
    title: str | None = None,
    columns: int = 4,
    dpi: int = 110,
    image: Image.Image | None = None,
    tile_crop: int = TILE_CROP,
) -> Path:
    """Write a PNG with the image once (left) and every panel; returns its path. ``image``: the
    original image, from which LLaVA-NeXT panels with tiles draw their tile mosaic (``view`` being
    the base view); such panels are wider and take several columns. Without it they show ``view``.
    Qwen2.5-VL panels draw on ``image`` as Qwen resized it; when every panel is one, so does the first cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if image is not None and panels and all(panel.pixels is not None for panel in panels):
        view = qwen_view(image, panels[0].grid)
    cells = [("image", view)] + [(p.title, panel_picture(p, view, image, tile_crop)) for p in panels]
    spans = [_span(picture) for _, picture in cells]
    columns = max(1, min(columns, sum(spans)))
    places = layout(spans, columns)  # [(row, column, span)] per cell
    n_rows = places[-1][0] + 1
    fig = plt.figure(figsize=(3.1 * columns, 3.9 * n_rows + 0.5))
    grid = fig.add_gridspec(n_rows, columns)
    starts = {(row, col): span for row, col, span in places}
    taken = {(row, col + i) for row, col, span in places for i in range(span)}
    axes = {}
    for row in range(n_rows):  # row-major, every free slot a blank axes, as plt.subplots makes them
        for col in range(columns):
            if (row, col) in starts:
                axes[row, col] = fig.add_subplot(grid[row, col : col + starts[row, col]])
            elif (row, col) not in taken:
                fig.add_subplot(grid[row, col]).axis("off")
    for (name, picture), (row, col, _) in zip(cells, places):
        ax = axes[row, col]
        ax.axis("off")
        ax.imshow(picture)
        ax.set_title(name, fontsize=7.5, pad=4)
    if title:
        fig.suptitle(_short(title, 110), fontsize=10)
    fig.text(0.5, 0.005, LEGEND, ha="center", va="bottom", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97 if title else 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
