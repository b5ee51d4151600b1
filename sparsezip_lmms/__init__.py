"""Training-free visual-token compression for LLaVA-style models, as an lmms-eval plugin."""

__version__ = "0.1.0"
