"""Compression methods: the registry and the contract a method implements.

    from sparsezip_lmms.methods import MethodConfig, MethodSpec

``docs/ADDING_A_METHOD.md`` shows a method written outside the package, registered through the
entry-point group ``sparsezip_lmms.methods`` and run with ``--model llava_compressed``.
"""

from ..config.schemas import ConfigError, MethodConfig
from .registry import ENTRY_POINT_GROUP, all_methods, broken_methods, get_method, method_names, method_of, register, reload
from .spec import FAMILIES, INPUTS, STAGES, MethodSpec, ProjectedInputs, VisionInputs

__all__ = [
    "ConfigError",
    "ENTRY_POINT_GROUP",
    "FAMILIES",
    "INPUTS",
    "MethodConfig",
    "MethodSpec",
    "ProjectedInputs",
    "STAGES",
    "VisionInputs",
    "all_methods",
    "broken_methods",
    "get_method",
    "method_names",
    "method_of",
    "register",
    "reload",
]
