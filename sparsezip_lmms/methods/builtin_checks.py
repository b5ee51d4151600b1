"""Load-time limits of the built-in methods (``MethodSpec.max_tokens`` and ``MethodSpec.check``).

``geometry`` is a ``budgets.Geometry``: what the checkpoint's ``config.json`` says (``patches`` per
image or crop, ``llm_layers``, ``any_resolution`` for LLaVA-NeXT). Each check raises ``ConfigError``
naming the key and the limit.
"""

from __future__ import annotations

from typing import Any

from ..compress.dart import dart_picks
from ..config.errors import ConfigError

__all__ = [
    "at_most", "cdpruner_max", "check_dart", "check_fastv", "check_vispruner", "dart_budget_note", "dart_max", "vispruner_max", "check_keep", "check_schedule", "check_sparsezip", "check_visionzip",
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
    if config.by_ratio:
        raise ConfigError(
            "keys 'dominant_ratio', 'contextual_ratio' are Qwen2.5-VL's budget (a ratio of each image's merged "
            "tokens); on a LLaVA checkpoint VisionZip counts tokens: use 'dominant' and 'contextual' (visionzip_64)"
        )
    at_most("dominant", config.dominant, n + 1, f"the {n + 1} tokens per image (CLS + {n} patches)")


def _qwen_only(config: Any, key: str, hint: str) -> None:
    if getattr(config, key, None) is not None:
        raise ConfigError(f"key {key!r} is Qwen2.5-VL's per-image budget; on a LLaVA checkpoint the config counts tokens ({hint})")


def check_sparsezip(config: Any, geometry: Any) -> None:
    _qwen_only(config, "reference_tokens", "sparsezip_64")
    n = geometry.patches
    limit, what = (n + 1, f"the {n + 1} tokens per image (CLS + {n} patches)") if config.k_counts_cls else (n, f"the {n} patches per image")
    if config.skip_dynamic_k:
        at_most("dominant", config.dominant, limit, what)
    else:
        at_most("k_max", config.k_max, limit, what)


def check_keep(config: Any, geometry: Any) -> None:
    _qwen_only(config, "keep_ratio", "use 'keep'")
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


def check_dart(config: Any, geometry: Any) -> None:
    if config.layer > geometry.llm_layers - 1:
        raise ConfigError(
            f"key 'layer': K = {config.layer} prunes at the input of layer {config.layer}, but this checkpoint's "
            f"LLM has {geometry.llm_layers} layers (K at most {geometry.llm_layers - 1})"
        )
    if geometry.any_resolution:
        return  # T = min(next_retain, N - Pi) // (Pi + Pt) fits every image's span by construction
    n, pivots = geometry.patches, config.pivot_image + config.pivot_text
    at_most("pivot_image", config.pivot_image, n, f"the {n} visual tokens per image")
    picks = dart_picks(n, config.pivot_image, config.pivot_text, config.max_tokens, config.reduction_ratio)
    pool = n - config.pivot_image
    if pivots * picks > pool:
        key = "max_tokens" if config.max_tokens is not None else "reduction_ratio"
        raise ConfigError(
            f"key {key!r}: {pivots} pivots x {picks} picks = {pivots * picks} visual tokens, more than the {pool} "
            f"left after the {config.pivot_image} image pivots of this checkpoint's {n} (the official code crashes here)"
        )
    if config.pivot_image + pivots * picks < 1:
        raise ConfigError(f"key {'max_tokens' if config.max_tokens is not None else 'reduction_ratio'!r}: no visual token would be kept")


def dart_max(config: Any, patches: int) -> int:
    """Visual tokens kept from layer K on (LLaVA-1.5's count; the first K layers see every token)."""
    picks = dart_picks(patches, config.pivot_image, config.pivot_text, config.max_tokens, config.reduction_ratio)
    return config.pivot_image + (config.pivot_image + config.pivot_text) * picks


def vispruner_max(config: Any, patches: int) -> int:
    return config.budget(patches)


def check_vispruner(config: Any, geometry: Any) -> None:
    n = geometry.patches
    if config.budget(n) >= n:
        raise ConfigError(
            f"key {'keep' if config.keep_ratio is None else 'keep_ratio'!r}: {config.budget(n)} is not below the {n} "
            "patches per image: nothing is compressed (for no compression use config keep_all)"
        )
    if int(config.budget(n) * config.important_ratio) > n:
        raise ConfigError(f"key 'important_ratio': int({config.keep} * {config.important_ratio}) exceeds the {n} patches")


def dart_budget_note(config: Any) -> str:
    """DART's own count, stated next to an over-budget flag: the row is the official setting."""
    pivots = config.pivot_image + config.pivot_text
    if config.max_tokens is None:
        count = f"{config.pivot_image} + {pivots} x ((N x (1 - {config.reduction_ratio})) // {pivots})"
    else:
        picks = config.max_tokens // pivots
        count = f"{config.pivot_image} + {pivots} x {picks} = {config.pivot_image + pivots * picks}"
    return (
        f"DART's official count keeps {count} visual tokens from layer {config.layer}'s input on (LLaVA-NeXT: "
        f"{config.pivot_image} + {pivots} x (min({config.next_retain}, N - {config.pivot_image}) // {pivots})), and layers "
        f"0..{config.layer - 1} see every token: the official setting, not a fault"
    )
