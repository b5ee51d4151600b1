"""Patch selections as logged in ``eff_selection``: sets of grid positions written as range strings.

A range string is comma-separated items, each ``a`` or ``a-b`` (inclusive), ascending and without
overlaps; ``""`` is the empty set. ``[0, 1, 2, 5, 7, 8]`` is written ``"0-2,5,7-8"``.
"""

from __future__ import annotations

from collections.abc import Iterable


def format_ranges(indices: Iterable[int]) -> str:
    """The range string of ``indices`` (any order, repeats allowed): sorted, consecutive runs collapsed."""
    items: list[str] = []
    ordered = sorted(set(indices))
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            first, last = ordered[start], ordered[i - 1]
            items.append(str(first) if first == last else f"{first}-{last}")
            start = i
    return ",".join(items)


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
