"""Keyword names that differ across the transformers 5.x releases this package supports.

transformers 5.24 renamed the KV-cache keyword of the decoder layers, the models and
``create_causal_mask`` from ``past_key_values`` to ``cache`` (the old name warns and is announced for
removal in 5.40); earlier 5.x releases only know ``past_key_values``. The name is read from each
callable's own signature, so every supported release gets the keyword it documents and no
deprecation path is taken.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any, Callable

__all__ = ["cache_keyword", "cache_kwargs"]


@lru_cache(maxsize=None)
def cache_keyword(fn: Callable[..., Any]) -> str:
    """``"cache"`` when ``fn`` takes a ``cache`` parameter, else ``"past_key_values"``.

    Pass the plain function (``type(module).forward``, ``create_causal_mask``): a class attribute is
    hashable and stable, a bound method is made anew at every attribute access.
    """
    parameters = inspect.signature(fn).parameters  # follows functools.wraps of deprecation decorators
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(fn: Callable[..., Any], cache: Any) -> dict[str, Any]:
    """``{cache_keyword(fn): cache}``, to splat into a call of ``fn``."""
    return {cache_keyword(fn): cache}
