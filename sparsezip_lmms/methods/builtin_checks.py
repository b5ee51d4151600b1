"""Load-time limits of the built-in methods (``MethodSpec.max_tokens`` and ``MethodSpec.check``).

``geometry`` is a ``budgets.Geometry``: what the checkpoint's ``config.json`` says (``patches`` per
image or crop, ``llm_layers``, ``any_resolution`` for LLaVA-NeXT). Each check raises ``ConfigError``
naming the key and the limit.
"""

from __future__ import annotations

from typing import Any

from ..config.errors import ConfigError

__all__ = [
    "at_most", "cdpruner_max", "check_fastv", "check_keep", "check_schedule", "check_sparsezip", "check_visionzip",
    "divprune_check", "divprune_max", "keep_max", "sparsezip_max", "visionzip_max",
]  # fmt: skip


def at_most(key: str, value: int, limit: int, what: str) -> None:
    if value > limit:
        raise ConfigError(f"key {key!r}: {value} exceeds {what}; at most {limit}")


def visionzip_max(config: Any, patches: int) -> int:
    tokens = patches + 1  # CLS + patches: what VisionZip chooses from
    return config.dominant + min(config.contextual, tokens - config.dominant)


def sparsezip_max(config: Any, patches: int) -> int:
    tokens = patches + 1
    k_max = max(config.k_max, config.dominant) if config.dynk.widen_to_dominant else config.k_max
    dominant = (config.dominant if config.skip_dynamic_k else k_max) + (0 if config.k_counts_cls else 1)  # + CLS
    merged = 0 if (config.merge == "none" and not config.skip_ctx_merge) else config.merging.contextual_num
    return dominant + min(merged, tokens - dominant)


def keep_max(config: Any, patches: int) -> int:
    return config.keep


cdpruner_max = keep_max


def divprune_max(config: Any, patches: int) -> int:
    return config.budget(patches)


def check_visionzip(config: Any, geometry: Any) -> None:
    n = geometry.patches
    at_most("dominant", config.dominant, n + 1, f"the {n + 1} tokens per image (CLS + {n} patches)")


def check_sparsezip(config: Any, geometry: Any) -> None:
    n = geometry.patches
    limit, what = (n + 1, f"the {n + 1} tokens per image (CLS + {n} patches)") if config.k_counts_cls else (n, f"the {n} patches per image")
    if config.skip_dynamic_k:
        at_most("dominant", config.dominant, limit, what)
    else:
        at_most("k_max", config.k_max, limit, what)


def check_keep(config: Any, geometry: Any) -> None:
    n = geometry.patches
    if config.keep >= n:
        raise ConfigError(
            f"key 'keep': {config.keep} is not below the {n} patches per image: nothing is compressed "
            f"(at most {n - 1}; for no compression use config keep_all)"
        )


def divprune_check(config: Any, geometry: Any) -> None:
    if geometry.any_resolution:
        return  # it chooses from each image's packed sequence, whose length varies: checked per request
    n = geometry.patches
    if config.keep_ratio is not None:
        if config.budget(n) < 1:
            raise ConfigError(
                f"key 'keep_ratio': int(round({config.keep_ratio} * {n})) keeps no image token; at least {0.5 / n:.6f}"
            )
    else:
        check_keep(config, geometry)


def check_fastv(config: Any, geometry: Any) -> None:
    n = geometry.patches
    if geometry.any_resolution and config.span == "fixed":
        raise ConfigError("span: fixed is FastV's LLaVA-1.5 span (positions 35..610); on a LLaVA-NeXT checkpoint use span: image")
    if config.layer > geometry.llm_layers - 1:
        raise ConfigError(
            f"key 'layer': K = {config.layer} prunes at the input of layer {config.layer}, but this checkpoint's "
            f"LLM has {geometry.llm_layers} layers (K at most {geometry.llm_layers - 1})"
        )
    if int(n * config.ratio) < 1:
        raise ConfigError(f"key 'ratio': int({n} * {config.ratio}) keeps no visual token; at least {1 / n:.6f}")


def check_schedule(config: Any, geometry: Any) -> None:
    n, last = geometry.patches, geometry.llm_layers - 1
    beyond = [layer for layer in config.pruning_layers if layer > last]
    if beyond:
        raise ConfigError(
            f"key 'pruning_layers': {config.pruning_layers} names layer {beyond[0]}, but this checkpoint's LLM "
            f"has {geometry.llm_layers} layers (0..{last})"
        )
    if config.schedule[0] >= n:
        raise ConfigError(
            f"key 'schedule': {config.schedule} keeps {config.schedule[0]} of the {n} visual tokens at the first "
            f"pruning layer: nothing is pruned (at most {n - 1}; for no pruning use config keep_all)"
        )
