"""Speed benchmark of every part: ``python -m sparsezip_lmms bench [--device cpu|cuda] [--quick] [--json PATH]``."""

from .cli import main

__all__ = ["main"]
