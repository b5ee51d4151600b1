"""Where the shipped task YAMLs and model configs are: inside the installed package (wheel) or at
the top of a source checkout (editable install)."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _data_dir(name: str, pattern: str = "*.yaml") -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir() and any(candidate.glob(pattern)):
            return candidate
    raise FileNotFoundError(f"no {name}/ folder next to {_PACKAGE}: the installation is incomplete")


def tasks_path() -> Path:
    """The folder to pass to ``lmms-eval --include_path``."""
    return _data_dir("tasks")


def model_configs_path() -> Path:
    return _data_dir("model_configs")


def lock_path() -> Path:
    """The lock of the tested CPU environment (``constraints/lock.txt``), shipped with the package."""
    return _data_dir("constraints", "lock.txt") / "lock.txt"
