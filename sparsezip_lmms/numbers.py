"""Numbers as the printed tables show them, and the mean over values that may be missing.

Shared by the leaderboard, ``analyze`` and the HTML report; depends on nothing else in the package.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

MISSING = "—"  # a missing value in every table


def mean(values: Iterable[float | None], *, exact: bool = True) -> float | None:
    """Mean of the values that are not None; None when there are none. ``exact``: summed with
    :func:`math.fsum` (correctly rounded); else with :func:`sum`, left to right."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return (math.fsum(present) if exact else sum(present)) / len(present)


def format_value(value: Any, *, markdown: bool = False, fixed_from: float | None = 1000.0) -> str:
    """A table cell: None as :data:`MISSING`; a float to 4 significant digits, from magnitude
    ``fixed_from`` up to one decimal (``fixed_from=None``: always 4 significant digits); anything
    else as ``str``, with ``markdown`` its ``|`` escaped for a Markdown table."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.4g}" if fixed_from is None or abs(value) < fixed_from else f"{value:.1f}"
    text = str(value)
    return text.replace("|", "\\|") if markdown else text
