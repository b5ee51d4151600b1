"""Drawing the mini datasets' images: the one shape primitive their scenes and pictures share."""

from __future__ import annotations

from PIL import ImageDraw


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: int, y: int, side: int, fill) -> None:
    """A ``square``, ``circle`` or (any other name) upward ``triangle`` in the ``side``-wide box at (x, y)."""
    if shape == "square":
        draw.rectangle([x, y, x + side, y + side], fill=fill)
    elif shape == "circle":
        draw.ellipse([x, y, x + side, y + side], fill=fill)
    else:
        draw.polygon([(x, y + side), (x + side // 2, y), (x + side, y + side)], fill=fill)
