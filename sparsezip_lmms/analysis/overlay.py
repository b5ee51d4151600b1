"""Kept patches drawn on the image: one panel per method (and per pruning layer of in-LLM methods).

A panel shows the image as the vision tower saw it (shortest side resized, centre crop, as LLaVA-1.5's
CLIP processor does) with its patch grid: patches kept as their own token stay bright with a thin
outline, the member patches of each merged token are tinted in that token's colour, dropped patches
are darkened. Drawn with PIL on the patch grid (no per-patch matplotlib artists), laid out and titled
with matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .selection import parse_ranges

DROPPED_ALPHA = 0.72  # darkening of a dropped patch
MERGED_ALPHA = 0.5  # tint of a merged token's member patches
KEPT_EDGE = (255, 214, 0)  # outline of a kept patch
LEGEND = "bright, outlined: kept patch · tinted: merged into a token (one colour per token) · dark: dropped"


@dataclass(frozen=True)
class Panel:
    """One drawing: a title and the patch sets to show on the image."""

    title: str
    grid: tuple[int, int]  # (rows, cols) of the patch grid
    kept: frozenset[int]  # patches kept as their own token
    merged: tuple[tuple[int, ...], ...] = ()  # member patches of each merged token


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


def panels_of(entry: dict[str, Any], grid: tuple[int, int], label: str, answer: str | None = None) -> list[Panel]:
    """The panels of one image's selection record (``llava.selection`` format): one for a vision-side
    method, one per pruning layer for an in-LLM method. Titles name the method, the tokens it kept and
    (when given) the answer it generated."""
    said = ("\n" + (f'"{_short(answer)}"' if answer.strip() else "(empty answer)")) if answer is not None else ""
    layers = entry.get("layers") or {}
    if layers:
        panels = []
        for layer, ranges in sorted(layers.items(), key=lambda item: int(item[0])):
            kept = frozenset(parse_ranges(ranges))
            panels.append(Panel(f"{label}\nafter layer {layer}: {len(kept)} patches{said}", grid, kept))
        return panels
    kept = frozenset(parse_ranges(entry.get("kept", "")))
    merged = tuple(tuple(parse_ranges(m)) for m in entry.get("merged") or ())
    parts = [f"{entry.get('tokens', len(kept) + len(merged))} tokens"]
    if entry.get("cls"):
        parts.append("CLS")
    parts.append(f"{len(kept)} kept")
    if merged:
        parts.append(f"{len(merged)} merged")
    when = f", from layer {entry['prune_layer']}" if entry.get("prune_layer") is not None else ""
    if entry.get("crops"):  # LLaVA-NeXT: the panel shows the base view's selection
        when += f"\nbase view of {entry['crops']} crops"
    return [Panel(f"{label}\n{' · '.join(parts)}{when}{said}", grid, kept, merged)]


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


def overlay_figure(
    view: Image.Image, panels: list[Panel], path: str | Path, title: str | None = None, columns: int = 4, dpi: int = 110
) -> Path:
    """Write a PNG with the image once (left) and every panel; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [("image", view)] + [(p.title, draw_panel(view, p)) for p in panels]
    columns = max(1, min(columns, len(cells)))
    n_rows = -(-len(cells) // columns)
    fig, axes = plt.subplots(n_rows, columns, figsize=(3.1 * columns, 3.9 * n_rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, picture) in zip(axes.flat, cells):
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
