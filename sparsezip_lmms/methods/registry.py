"""The one registry of compression methods.

Every method, built-in or a user's, is an entry point in the group ``sparsezip_lmms.methods`` whose
object is a :class:`MethodSpec` (or a zero-argument callable returning one)::

    # pyproject.toml of a user's package
    [project.entry-points."sparsezip_lmms.methods"]
    my_method = "my_package.my_method:SPEC"

The group is read once per process, on the first lookup; :func:`reload` reads it again (after a
package is installed into a running process). A spec that does not hold together (a name taken twice,
a config schema that accepts unknown keys, a stage without its function) is refused by name; an entry
point that fails to import fails the configs that ask for its method, not the others.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import typing
from typing import Any

from pydantic import BaseModel

from ..config.errors import ConfigError
from .spec import FAMILIES, INPUTS, STAGES, MethodSpec

__all__ = ["ENTRY_POINT_GROUP", "all_methods", "broken_methods", "get_method", "method_names", "method_of", "register", "reload"]

ENTRY_POINT_GROUP = "sparsezip_lmms.methods"

_methods: dict[str, MethodSpec] | None = None
_broken: dict[str, str] = {}  # entry point name -> why it could not be loaded
_origin: dict[str, str] = {}  # method name -> the entry point it came from


def _check_spec(spec: Any, origin: str) -> MethodSpec:
    """``spec`` as a MethodSpec, or a ConfigError naming ``origin`` and what is wrong."""
    if callable(spec) and not isinstance(spec, MethodSpec):
        spec = spec()
    if not isinstance(spec, MethodSpec):
        raise ConfigError(f"{origin}: is a {type(spec).__name__}, not a sparsezip_lmms.methods.MethodSpec")
    where = f"{origin} (method {spec.name!r})"
    if not isinstance(spec.name, str) or not spec.name.isidentifier():
        raise ConfigError(f"{origin}: method name {spec.name!r} is not an identifier")
    if not (isinstance(spec.config, type) and issubclass(spec.config, BaseModel)):
        raise ConfigError(f"{where}: config must be a pydantic model class, got {spec.config!r}")
    if spec.config.model_config.get("extra") != "forbid":
        raise ConfigError(
            f"{where}: config {spec.config.__name__} accepts unknown keys; subclass sparsezip_lmms.methods.MethodConfig"
        )
    if not getattr(spec.config, "__pydantic_complete__", True):
        raise ConfigError(f"{where}: config {spec.config.__name__} is not fully defined (pydantic cannot resolve its annotations)")
    field = spec.config.model_fields.get("method")
    if field is None or typing.get_args(field.annotation) != (spec.name,):
        raise ConfigError(f"{where}: config {spec.config.__name__} needs the field method: Literal[{spec.name!r}]")
    if spec.stage not in STAGES:
        raise ConfigError(f"{where}: stage {spec.stage!r} is not one of {', '.join(STAGES)}")
    if spec.stage in ("vision", "projected") and not callable(spec.select):
        raise ConfigError(f"{where}: a {spec.stage!r} method needs select(inputs, config)")
    if spec.stage == "llm" and not callable(spec.rule):
        raise ConfigError(f"{where}: an 'llm' method needs rule(config) returning a PruningRule")
    unknown = [f for f in spec.families if f not in FAMILIES]
    if unknown or not spec.families:
        raise ConfigError(f"{where}: families {list(spec.families)} must be some of {', '.join(FAMILIES)}")
    if not callable(spec.inputs):
        bad = sorted(set(spec.inputs) - set(INPUTS))
        if bad:
            raise ConfigError(f"{where}: unknown inputs {bad}; known: {', '.join(INPUTS)}")
    if spec.next_candidates not in ("crops", "packed"):
        raise ConfigError(f"{where}: next_candidates must be 'crops' or 'packed', got {spec.next_candidates!r}")
    return spec


def register(spec: Any, origin: str = "register()") -> MethodSpec:
    """Add a method (a MethodSpec, or a zero-argument callable returning one) to this process's registry."""
    methods = _load()
    spec = _check_spec(spec, origin)
    if spec.name in methods:
        raise ConfigError(f"{origin}: method {spec.name!r} is already registered by {_origin[spec.name]}")
    methods[spec.name] = spec
    _origin[spec.name] = origin
    return spec


def _load() -> dict[str, MethodSpec]:
    global _methods
    if _methods is not None:
        return _methods
    _methods = {}
    for entry in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.value):
        origin = f"entry point {entry.name} = {entry.value}"
        try:
            spec = _check_spec(entry.load(), origin)
        except ConfigError as err:
            _broken[entry.name] = str(err)
            continue
        except Exception as err:  # noqa: BLE001 - a user's package must not take the built-ins down
            _broken[entry.name] = f"{origin}: cannot be loaded: {err!r}"
            continue
        if spec.name in _methods or spec.name in _broken:  # two packages claim one name: neither is guessed
            first = _origin.pop(spec.name, None)
            _methods.pop(spec.name, None)
            _broken[spec.name] = f"method {spec.name!r} is declared twice: by {first or _broken[spec.name]} and by {origin}"
            continue
        _methods[spec.name] = spec
        _origin[spec.name] = origin
    return _methods


def reload() -> None:
    """Read the entry points again (after installing a package into this process's ``sys.path``)."""
    global _methods
    _methods = None
    _broken.clear()
    _origin.clear()
    importlib.invalidate_caches()


def broken_methods() -> dict[str, str]:
    """Entry points that could not be registered: name -> why."""
    _load()
    return dict(_broken)


def method_names() -> tuple[str, ...]:
    """Every registered method name, sorted."""
    return tuple(sorted(_load()))


def all_methods() -> list[MethodSpec]:
    """Every registered MethodSpec, sorted by name."""
    methods = _load()
    return [methods[name] for name in sorted(methods)]


def get_method(name: str) -> MethodSpec:
    """The spec of method ``name``; a ConfigError naming the known methods (or why a plugin failed) otherwise."""
    methods = _load()
    if name in methods:
        return methods[name]
    if name in _broken:
        raise ConfigError(f"method {name!r} is registered but broken: {_broken[name]}")
    raise ConfigError(f"'method' must be one of {', '.join(sorted(methods))}, got {name!r}")


def method_of(config: Any) -> MethodSpec:
    """The spec of a loaded config (``load_config(...)``)."""
    name = getattr(config, "method", None)
    if not isinstance(name, str):
        raise ConfigError(f"config must be a compression config from load_config, got {type(config).__name__}")
    return get_method(name)
