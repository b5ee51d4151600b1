"""LLaVA-side helpers."""

from .pruning_decoder import PrunedOutput, pruned_generate
from .scoring import ScoringInputs, scoring_inputs
from .sparsevlm import SparseVLMOutput, sparsevlm_generate

__all__ = ["PrunedOutput", "pruned_generate", "ScoringInputs", "scoring_inputs", "SparseVLMOutput", "sparsevlm_generate"]
