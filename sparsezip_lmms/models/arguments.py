"""The model arguments of the lmms-eval adapter, checked before any weight is loaded.

``--model_args`` split into the upstream adapter's own arguments, ours and config overrides; the
checkpoint's ``config.json`` read and checked against the config (``budgets.check_fits``); CDPruner's
CLIP text tower checked against the vision tower; device placement defaults.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from lmms_eval.models.simple.llava_hf import LlavaHf as _LlavaHfSimple

from ..budgets import Geometry
from ..config import CompressionConfig, ConfigError
from ..methods.registry import method_of

__all__ = [
    "check_checkpoint", "check_clip_text_tower", "class_default_config", "count_arg", "flag_arg", "from_arg_string",
    "load_accepted_config", "placement", "split_model_args",
]  # fmt: skip

# Constructor arguments of the upstream adapter; everything else is ours or a config override.
PARENT_ARGS = frozenset(inspect.signature(_LlavaHfSimple.__init__).parameters) - {"self", "kwargs"}
# Our own model_args (besides config overrides).
OWN_ARGS = frozenset({"config", "warmup", "clip_text_tower", "log_selection"})


def class_default_config(model_id: str) -> str | None:
    """The default config of a model id, read from its class (through lmms-eval's registry; None for the
    generic ``llava_compressed``, which needs ``config=``)."""
    from lmms_eval.models import get_model

    return get_model(model_id).default_config


def from_arg_string(cls, arg_string: str, additional_config: dict | None, parent_args: frozenset[str]):
    """``cls`` built from the raw ``--model_args`` string: the upstream adapter's own arguments
    (``parent_args``) read as lmms-eval reads them; ours and the config overrides stay strings until
    :mod:`..config` parses them, exactly as ``show-config`` does (lmms-eval would turn ``054`` into 54 but
    ``-3`` into -3.0)."""
    from lmms_eval.utils import handle_arg_string

    from ..config import split_args_string

    try:
        raw = split_args_string(arg_string)
    except ConfigError as err:
        raise ConfigError(f"{cls.model_id} --model_args: {err}") from None
    args = {k: (handle_arg_string(v) if k in parent_args else v) for k, v in raw.items()}
    extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
    return cls(**args, **extra)


def split_model_args(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(upstream adapter args, our own args, config overrides) from the ``--model_args`` mapping."""
    parent = {k: v for k, v in kwargs.items() if k in PARENT_ARGS}
    own = {k: v for k, v in kwargs.items() if k in OWN_ARGS}
    overrides = {k: v for k, v in kwargs.items() if k not in PARENT_ARGS and k not in OWN_ARGS}
    return parent, own, overrides


def count_arg(model_id: str, key: str, value: Any) -> int:
    """A non-negative integer model argument (``warmup``), read like a config value."""
    from ..config import parse_value

    parsed = parse_value(value)
    if isinstance(parsed, bool) or not isinstance(parsed, int) or parsed < 0:
        raise ConfigError(f"{model_id} --model_args: {key} must be a whole number >= 0, got {value!r}")
    return parsed

def flag_arg(model_id: str, key: str, value: Any) -> bool:
    """A true/false model argument (``log_selection``), read like a config value."""
    from ..config import parse_value

    parsed = parse_value(value)
    if not isinstance(parsed, bool):
        raise ConfigError(f"{model_id} --model_args: {key} must be true or false, got {value!r}")
    return parsed

def check_checkpoint(model_id: str, pretrained: str, parent_args: dict[str, Any], compression: CompressionConfig) -> Geometry:
    """Everything that can be known from the checkpoint's config.json, before any weight is read.

    Only LLaVA-1.5-style checkpoints (one CLIP grid per image, ``model_type`` "llava"): the token
    budget, the placeholder resizing and SparseVLM's visual span assume it. The config's budgets
    and layers are checked against the checkpoint's geometry (``budgets.check_fits``), and
    float64 with eager attention is refused for padded batches.
    """
    from transformers import AutoConfig

    from ..budgets import check_fits

    text = str(pretrained)
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1  # a hub id is "name" or "org/name"
    if looks_local and not os.path.isdir(os.path.expanduser(text)):
        raise ValueError(f"{model_id}: pretrained={text}: no such folder (and not a hub id such as llava-hf/llava-1.5-7b-hf)")
    config = AutoConfig.from_pretrained(
        pretrained,
        revision=parent_args.get("revision", "main"),
        trust_remote_code=bool(parent_args.get("trust_remote_code", False)),
    )
    model_type = getattr(config, "model_type", None)
    if model_type not in ("llava", "llava_next"):
        raise ValueError(
            f"{model_id}: {pretrained} is a {model_type!r} checkpoint; this model supports llava-hf LLaVA-1.5 "
            "(model_type 'llava', e.g. llava-hf/llava-1.5-7b-hf) and LLaVA-NeXT (model_type 'llava_next', e.g. "
            "llava-hf/llava-v1.6-vicuna-7b-hf) checkpoints; video models are not supported."
        )
    geometry = Geometry.from_llava_config(config)
    try:
        check_fits(compression, geometry)
    except ConfigError as err:
        raise ConfigError(f"{model_id} --model_args: {err} ({pretrained})") from None
    attention = parent_args.get("attn_implementation") or getattr(config, "_attn_implementation", None)
    batch_size = str(parent_args.get("batch_size", 1) or 1)
    if str(parent_args.get("dtype")) == "float64" and attention == "eager" and batch_size != "1":
        raise ConfigError(
            f"{model_id}: dtype=float64 with attn_implementation=eager gives NaN for left-padded rows in "
            "transformers' eager attention; use sdpa (the default) or float32, or batch size 1"
        )
    return geometry

def check_clip_text_tower(model_id: str, compression, geometry: Geometry, name: Any) -> str | None:
    """The CLIP checkpoint CDPruner reads its text tower from; its config is checked against the
    LLaVA vision tower before any weight is loaded. None for methods that do not use one."""
    from ..llava.clip_text import DEFAULT_CLIP_TEXT_TOWER

    if not method_of(compression).needs("clip_text", compression):
        if name not in (None, ""):
            raise ConfigError(
                f"{model_id} --model_args: clip_text_tower is read by cdpruner configs only (methods with the 'clip_text' input)"
            )
        return None
    tower = str(name or DEFAULT_CLIP_TEXT_TOWER)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(tower, trust_remote_code=False)
    except OSError as err:
        raise ValueError(f"{model_id}: clip_text_tower={tower} cannot be read: {err}") from None
    if getattr(config, "model_type", None) != "clip":
        raise ValueError(f"{model_id}: clip_text_tower={tower} is a {config.model_type!r} checkpoint, not a CLIP one")
    width = int(config.vision_config.hidden_size)
    if width != geometry.vision_width:
        raise ValueError(
            f"{model_id}: clip_text_tower={tower}: its visual_projection takes {width}-wide features, but "
            f"the LLaVA vision tower is {geometry.vision_width} wide (use the CLIP checkpoint of that tower)"
        )
    return tower

def placement(parent_args: dict[str, Any]) -> dict[str, Any]:
    """Device placement defaults that the upstream adapter leaves to the user.

    Single process: ``device_map`` follows ``device`` (an empty device_map fails to load).
    Several processes on CPU (``accelerate launch`` without GPUs): each rank loads on CPU.
    A CUDA device asked for (lmms-eval's default) on a machine without one: the model runs on the CPU,
    with one warning saying so (instead of transformers' "Torch not compiled with CUDA enabled").
    """
    import torch
    from accelerate import PartialState

    args = dict(parent_args)
    device = str(args.get("device") or "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        from loguru import logger

        logger.warning(f"--device {device} was asked for, but this machine has no CUDA device: running on the CPU (pass --device cpu to silence this)")
        device = "cpu"
        args["device"] = device
        if str(args.get("device_map") or "").startswith("cuda") or args.get("device_map") == "auto":
            args["device_map"] = "cpu"
    if not args.get("device_map"):
        if PartialState().num_processes == 1 or device == "cpu":
            args["device_map"] = device
    return args


def load_accepted_config(
    model_id: str,
    name_or_path: Any,
    default: str | None,
    overrides: dict[str, Any],
    accepted: tuple[str, ...],
    required_hint: str,
    generic_hint: str,
) -> tuple[CompressionConfig, str]:
    """The config a model id was given (``config=`` or its default), loaded with the overrides and refused
    (ConfigError naming the id) when it is missing, unreadable, or of a method the id does not accept.
    ``required_hint`` says what ``config=`` must name where the id has no default, ``generic_hint`` which id
    accepts every method. Returns (config, the name it was loaded from)."""
    from ..config import load_config

    name = default if name_or_path in (None, "") else name_or_path
    if name is None:
        raise ConfigError(
            f"{model_id} --model_args: config= is required: a config name or a YAML path whose 'method' is {required_hint}"
        )
    if not isinstance(name, str):
        raise ConfigError(f"{model_id}: config must be a name or a path, got {name!r}")
    try:
        config = load_config(name, overrides)
    except ConfigError as err:
        raise ConfigError(f"{model_id} --model_args: {err}") from None
    if config.method not in accepted:
        raise ConfigError(
            f"{model_id} --model_args: config {name!r} is a {config.method!r} config; "
            f"{model_id} accepts {', '.join(accepted)} ({generic_hint})"
        )
    return config, name
