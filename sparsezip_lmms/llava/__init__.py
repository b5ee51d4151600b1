"""LLaVA-side helpers."""

from .scoring import ScoringInputs, scoring_inputs
from .sparsevlm import SparseVLMOutput, sparsevlm_generate

__all__ = ["ScoringInputs", "scoring_inputs", "SparseVLMOutput", "sparsevlm_generate"]
