"""The YAML dialect of config files and ``--model_args`` overrides (see ``sparsezip_lmms.config``)."""

from __future__ import annotations

import re
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["load_yaml", "parse_value", "split_args_string", "split_top_level"]


_INT, _FLOAT, _BOOL = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with decimal-only integers, no sexagesimal numbers, true/false booleans
    only, and floats as Python writes them (``1e-1``, ``.5``, ``inf``, ``.nan``)."""


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT, _BOOL)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_StrictLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_StrictLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.?(?:inf|Inf|INF)$|^\.?(?:nan|NaN|NAN)$"),
    list("-+0123456789.iInN"),
)
_StrictLoader.add_constructor(_INT, lambda loader, node: int(loader.construct_scalar(node), 10))


def _construct_float(loader: yaml.SafeLoader, node: yaml.Node) -> float:
    text = loader.construct_scalar(node).lower()
    if text.lstrip("+-") in (".inf", ".nan"):  # YAML spells them with a dot, Python without
        text = text.replace(".", "", 1)
    return float(text)


_StrictLoader.add_constructor(_FLOAT, _construct_float)


def load_yaml(text: str) -> Any:
    """Parse YAML text in this package's dialect (see the module docstring)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def parse_value(value: Any) -> Any:
    """An override value as given on a command line (a string) -> the value it denotes.

    ``54`` / ``054`` -> 54, ``-3`` -> -3, ``1e-1`` -> 0.1, ``true`` -> True, ``[66,30,17]`` -> a list,
    ``kmeans`` / ``1:30`` / ``yes`` -> the string itself; non-strings are returned unchanged.
    """
    if not isinstance(value, str) or not value.strip():
        return value
    try:
        return load_yaml(value)
    except yaml.YAMLError:
        return value


def split_top_level(text: str, strict: bool = False) -> list[str]:
    """``a,[1,2],"b,c"`` -> ``["a", "[1,2]", '"b,c"']`` (items stripped): commas inside brackets or
    quotes do not split. ``strict``: unbalanced brackets or quotes are a ConfigError."""
    items, current, depth, quote = [], [], 0, None
    for char in text.strip():
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
            if depth < 0 and strict:
                raise ConfigError(f"unbalanced brackets in {text!r}")
        elif char == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    if strict and (depth or quote):
        raise ConfigError(f"unbalanced {'quotes' if quote else 'brackets'} in {text!r}")
    items.append("".join(current).strip())
    return items


def split_args_string(text: str) -> dict[str, str]:
    """``key=value,key2=[1,2],...`` -> {key: raw value}: commas inside brackets or quotes do not split.

    The one reader of ``--model_args`` strings (model classes, leaderboard); values stay strings.
    """
    items = split_top_level(text)
    out = {}
    for item in (part.strip() for part in items):
        if not item:
            continue
        if "=" not in item:
            raise ConfigError(f"model_args entry {item!r} is not key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out
