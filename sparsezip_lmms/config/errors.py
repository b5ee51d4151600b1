"""The one exception every config problem raises."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A config name, file, key or value is wrong. The message names what and where."""
