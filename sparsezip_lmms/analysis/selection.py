"""Patch selections as logged in ``eff_selection``: range strings (the format is described in
:mod:`sparsezip_lmms.ranges`) read back into grid positions. :func:`parse_ranges` is the inverse of
:func:`format_ranges`, which the models write with and which is importable from here too.
"""

from __future__ import annotations

from ..ranges import format_ranges

__all__ = ["format_ranges", "parse_ranges"]


def _bound(text: str, item: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"bad range item {item!r}: {text!r} is not a non-negative integer")
    return int(text)


def parse_ranges(text: str, size: int | None = None) -> list[int]:
    """The ascending indices a range string names; ValueError naming the item that is malformed,
    descending (``5-3``), not above the previous one (overlap or wrong order) or, with ``size``
    (the number of grid positions), reaching past ``size - 1``."""
    if not isinstance(text, str):
        raise ValueError(f"a range string must be a str, not {type(text).__name__}")
    if text == "":
        return []
    indices: list[int] = []
    for item in text.split(","):
        first_text, dash, last_text = item.partition("-")
        first = _bound(first_text, item)
        last = _bound(last_text, item) if dash else first
        if last < first:
            raise ValueError(f"bad range item {item!r}: descending range")
        if indices and first <= indices[-1]:
            raise ValueError(f"bad range item {item!r}: overlaps or precedes the item before it (ends at {indices[-1]})")
        if size is not None and last >= size:
            raise ValueError(f"bad range item {item!r}: past the last position {size - 1}")
        indices.extend(range(first, last + 1))
    return indices
