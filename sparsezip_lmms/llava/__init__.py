"""LLaVA-side helpers."""

from .scoring import ScoringInputs, scoring_inputs

__all__ = ["ScoringInputs", "scoring_inputs"]
