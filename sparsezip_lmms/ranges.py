"""Range strings: the compact text form of a set of grid positions, as ``eff_selection`` logs them.

A range string is comma-separated items, each ``a`` or ``a-b`` (inclusive), ascending and without
overlaps; ``""`` is the empty set. ``[0, 1, 2, 5, 7, 8]`` is written ``"0-2,5,7-8"``. The models
write them (:func:`format_ranges`); ``analysis.selection.parse_ranges`` reads them back.
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
