"""Model families: what the pipeline needs from a kind of checkpoint (``families.llava``)."""

from .llava import LlavaFamily, family_for

__all__ = ["LlavaFamily", "family_for"]
