"""Config files by name or path, ``base:`` inheritance, dotted overrides, validation by the registry."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import BaseModel, ValidationError

from ..methods.registry import get_method, method_names, method_of
from ..paths import model_configs_path
from .dialect import load_yaml, parse_value
from .errors import ConfigError

__all__ = [
    "available_configs", "config_dir", "config_to_dict", "load_config", "parse_config", "prunes_in_llm",
]  # fmt: skip

CompressionConfig = BaseModel  # a loaded config: an instance of its method's schema


def prunes_in_llm(config: Any) -> bool:
    """True when ``config`` prunes visual tokens inside the LLM (an ``llm``-stage method, or a deferred
    vision-side one)."""
    return method_of(config).stage == "llm" or getattr(config, "prune_layer", 0) > 0


def config_dir() -> Path:
    """The folder of the named configs: inside the installed package, or the repo's ``model_configs/``."""
    try:
        return model_configs_path()
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None


def available_configs() -> list[str]:
    """Names accepted by :func:`load_config`, e.g. ``sparsezip_64`` or ``ablations/merge_off``."""
    root = config_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def _resolve(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file not found: {name_or_path}")
        return path
    root = config_dir()
    for candidate in (root / f"{name_or_path}.yaml", root / "ablations" / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"unknown config {name_or_path!r}; available: {', '.join(available_configs())} (or a path to a .yaml file)"
    )


def _deep_merge(base: dict, update: Mapping) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_raw(name_or_path: str, _seen: tuple[Path, ...] = ()) -> dict:
    path = _resolve(name_or_path).resolve()  # one name per file, whatever '..' or links lead to it
    if path in _seen:
        raise ConfigError(f"config {path} includes itself through 'base'")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"config file {path}: 'base' must be a config name or path")
        if not Path(base).is_absolute() and (path.parent / base).suffix in (".yaml", ".yml"):
            base = str(path.parent / base)
        data = _deep_merge(_read_raw(base, _seen + (path,)), data)
    return data


def _apply_overrides(data: dict, overrides: Mapping[str, Any]) -> dict:
    data = copy.deepcopy(data)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if not all(parts):
            raise ConfigError(f"bad config key {dotted!r}")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r} is not a section, cannot set {dotted!r}")
            node = child
        node[parts[-1]] = parse_value(value)
    return data


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r}")
        elif key == "<root>":
            lines.append(item["msg"].removeprefix("Value error, "))
        else:
            lines.append(f"key {key!r}: {item['msg']} (got {item.get('input')!r})")
    return f"invalid config {source}: " + "; ".join(lines)


def parse_config(data: Mapping[str, Any], source: str = "<dict>") -> CompressionConfig:
    """Validate a plain mapping into the schema of the registered method its ``method`` names."""
    data = dict(data)
    if "method" not in data:
        raise ConfigError(f"invalid config {source}: missing key 'method' (one of {', '.join(method_names())})")
    name = data["method"]
    try:
        spec = get_method(name if isinstance(name, str) else repr(name))
    except ConfigError as err:
        raise ConfigError(f"invalid config {source}: {err}") from None
    try:
        return spec.config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def load_config(name_or_path: str | Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> CompressionConfig:
    """Load a named config (``model_configs/NAME.yaml``), a YAML path, or a mapping, then apply
    dotted overrides such as ``{"merging.contextual_num": 16}``."""
    if isinstance(name_or_path, Mapping):
        data, source = dict(name_or_path), "<dict>"
    else:
        data, source = _read_raw(str(name_or_path)), repr(str(name_or_path))
    if overrides:
        data = _apply_overrides(data, overrides)
    return parse_config(data, source)


def config_to_dict(config: CompressionConfig) -> dict[str, Any]:
    """The effective config as plain data (what gets logged and written next to results)."""
    return config.model_dump(mode="json")
