"""Compression configs: YAML files selected by name or path, dotted overrides, strict validation.

A config file is plain data::

    # model_configs/sparsezip_64.yaml
    method: sparsezip
    dominant: 54
    merging:
      contextual_num: 10

`method` picks the schema (one pydantic model per method); every other key must belong to that
schema. A file may start from another one with ``base: NAME_OR_PATH`` and change a few keys, which
is how the ablations in ``model_configs/ablations/`` are written.

    >>> cfg = load_config("sparsezip_64", {"merging.contextual_num": 16, "cross_beta": 0.3})

Every problem raises :class:`ConfigError` (a ``ValueError``) whose message names the offending key.

Files and overrides are read by one YAML dialect (:func:`parse_value`) without YAML 1.1's
surprises: integers are decimal (``054`` is 54, not octal 44), ``1:30`` stays a string instead of
becoming 5400, booleans are ``true``/``false`` only, and ``1e-1`` is a float. ``--model_args`` reach
the model classes as the raw string (:func:`split_args_string`), so ``show-config`` and lmms-eval
read every override the same way. Floats must be finite.
"""

from .dialect import load_yaml, parse_value, split_args_string, split_top_level
from .errors import ConfigError
from .loading import (
    CompressionConfig, available_configs, config_dir, config_to_dict, load_config, parse_config, prunes_in_llm,
)  # fmt: skip
from .schemas import (
    CDPrunerConfig, DARTConfig, DeferrableConfig, DivPruneConfig, FastVConfig, KeepAllConfig, MethodConfig, PoolConfig,
    RandomKeepConfig, ScheduleConfig, SparseVLM2Config, SparseVLMConfig, VisionZipConfig, VisPrunerConfig,
)  # fmt: skip
from .sparsezip_schema import DynamicKConfig, HybridWeights, MergingConfig, SparseZipConfig

__all__ = [
    "CDPrunerConfig", "CompressionConfig", "ConfigError", "DARTConfig", "VisPrunerConfig", "DeferrableConfig", "DivPruneConfig", "DynamicKConfig",
    "FastVConfig", "HybridWeights", "KeepAllConfig", "MergingConfig", "MethodConfig", "PoolConfig", "RandomKeepConfig",
    "ScheduleConfig", "SparseVLM2Config", "SparseVLMConfig", "SparseZipConfig", "VisionZipConfig", "available_configs",
    "config_dir", "config_to_dict", "load_config", "load_yaml", "parse_config", "parse_value", "prunes_in_llm",
    "split_args_string", "split_top_level",
]  # fmt: skip
