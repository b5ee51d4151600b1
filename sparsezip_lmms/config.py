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

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from .paths import model_configs_path

__all__ = [
    "ConfigError",
    "KeepAllConfig",
    "VisionZipConfig",
    "SparseZipConfig",
    "SparseVLMConfig",
    "SparseVLM2Config",
    "FastVConfig",
    "IN_LLM_METHODS",
    "prunes_in_llm",
    "RandomKeepConfig",
    "PoolConfig",
    "DivPruneConfig",
    "CDPrunerConfig",
    "CompressionConfig",
    "config_dir",
    "available_configs",
    "load_config",
    "parse_config",
    "config_to_dict",
    "load_yaml",
    "parse_value",
    "split_args_string",
    "split_top_level",
]


class ConfigError(ValueError):
    """A config name, file, key or value is wrong. The message names what and where."""


class _Schema(BaseModel):
    # strict: no silent str->int or float->int coercion; extra: unknown keys are errors;
    # allow_inf_nan: inf and nan are refused for every float key.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- the YAML dialect

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


# --------------------------------------------------------------------------- methods


class _Deferrable(_Schema):
    """Keys every vision-side method shares: where its selection takes effect."""

    prune_layer: int = Field(
        0,
        ge=0,
        description="0: the selected tokens alone enter the LLM; L > 0: all patch tokens enter the LLM and the "
        "unselected ones are dropped at the input of LLM layer L (deferred pruning)",
    )
    prune_positions: Literal["original", "contiguous"] = Field(
        "original",
        description="deferred pruning: the kept tokens keep their position ids (original) or are renumbered "
        "0..n-1 from layer L on (contiguous)",
    )


class KeepAllConfig(_Schema):
    """No compression: all 576 visual tokens reach the LLM (the reference for every comparison)."""

    method: Literal["none"] = "none"
    seed: int = 0


class VisionZipConfig(_Deferrable):
    """VisionZip (Yang et al., CVPR 2025), official conventions: ``dominant`` counts CLS."""

    method: Literal["visionzip"] = "visionzip"
    dominant: int = Field(54, ge=1, description="kept tokens including CLS")
    contextual: int = Field(10, ge=0, description="merged contextual tokens")
    seed: int = 0


class RandomKeepConfig(_Deferrable):
    """Sanity baseline: keep ``keep`` patches drawn uniformly at random (seeded)."""

    method: Literal["random"] = "random"
    keep: int = Field(64, ge=1)
    seed: int = 0


class PoolConfig(_Deferrable):
    """Sanity baseline: 2-D average pooling of the patch grid down to ``keep`` tokens."""

    method: Literal["pool"] = "pool"
    keep: int = Field(64, ge=1)
    seed: int = 0


class DivPruneConfig(_Deferrable):
    """DivPrune (Alvar et al., CVPR 2025): max–min diverse subset of the post-projector patch tokens.

    ``keep`` is the official budget ``int(round(ratio * N))`` written as the count (64 = ratio 1/9 of
    576 patches). Official: chosen tokens are not masked, so exact duplicates can be picked twice.
    """

    method: Literal["divprune"] = "divprune"
    keep: int = Field(64, ge=1, description="image tokens kept per image (the official int(round(ratio * N)))")
    keep_ratio: float | None = Field(
        None,
        gt=0,
        le=1,
        description="the official budget as a ratio instead of keep: int(round(keep_ratio * N)) of the N image "
        "tokens of each image (LLaVA-NeXT: its whole packed sequence, newline tokens included)",
    )
    mask_chosen: bool = Field(False, description="deviation: never pick a token twice (official: False)")
    distance_dtype: Literal["at_least_float32", "model"] = Field(
        "at_least_float32",
        description="dtype of the cosine distances and the greedy scores: at least float32 (default), or the "
        "model's own dtype as the official code runs (in bfloat16/float16 the self-distance noise makes it pick "
        "chosen tokens again: docs/ALGORITHMS.md)",
    )
    seed: int = 0

    def compute_dtype(self, features_dtype):
        """The ``torch.dtype`` that ``divprune_select`` computes in for features of ``features_dtype``
        (None: theirs, the official behaviour)."""
        import torch

        return None if self.distance_dtype == "model" else torch.promote_types(features_dtype, torch.float32)

    @model_validator(mode="after")
    def _one_budget(self) -> "DivPruneConfig":
        if self.keep_ratio is not None and "keep" in self.model_fields_set:
            raise ValueError(f"keys 'keep' ({self.keep}) and 'keep_ratio' ({self.keep_ratio}) both set: give one budget")
        return self

    def budget(self, n: int) -> int:
        """Image tokens kept of an image with ``n`` candidate tokens."""
        return self.keep if self.keep_ratio is None else int(round(self.keep_ratio * n))


class CDPrunerConfig(_Deferrable):
    """CDPruner (Zhang et al., 2025): conditional DPP over the post-projector patch tokens, the kernel
    weighted by each patch's (negative-cosine) relevance to the question in CLIP space."""

    method: Literal["cdpruner"] = "cdpruner"
    keep: int = Field(
        64, ge=1, description="image tokens kept per image (the official visual_token_num; LLaVA-NeXT: per crop)"
    )
    next_grid: Literal["fixed_2x2", "checkpoint"] = Field(
        "fixed_2x2",
        description="LLaVA-NeXT: every image is tiled 2 x 2 (the official code forces the 672 x 672 resolution, "
        "so always 5 crops) or by the checkpoint's image_grid_pinpoints like every other method",
    )
    distinct: bool = Field(False, description="deviation: stop a degenerate DPP from picking a token twice (official: False)")
    strip_answer_format: bool = Field(
        True, description="drop the benchmark's answer-format instruction from the question, as the official scripts do"
    )
    seed: int = 0


class DynamicKConfig(_Schema):
    """K = round(scale * log(Var(scores) + eps) + c), clamped to [k_min, k_max].

    Defaults match ``sparsezip_64`` (K in [32, 54]); ``scale: 1`` gives the unscaled formula, whose
    K moves by only a token or two across images (see docs/ALGORITHMS.md).
    """

    c: float = Field(77.1, description="offset; with scale 1 and c 10 this is the original formula")
    eps: float = Field(1e-3, gt=0)
    scale: float = Field(11.0, ge=0, description="multiplies log(Var + eps); 1.0 is the original formula")
    source: Literal["visual", "ranking"] = Field(
        "visual",
        description="score whose variance sets K: 'visual' = the hybrid visual score without the text term "
        "(this package); 'ranking' = the score that ranks the patches, text term and skip_hybrid_attn included (seed)",
    )
    widen_to_dominant: bool = Field(
        False,
        description="seed rule: the bounds become [min(k_min, dominant), max(k_max, dominant)] (this package: "
        "[k_min, k_max])",
    )


# Weights of score terms whose z-scores are O(1): beyond this the other terms fall below float32
# rounding, and at 1e308 the scores overflow to inf.
_MAX_WEIGHT = 1e4


class HybridWeights(_Schema):
    attn: float = Field(1.0, ge=-_MAX_WEIGHT, le=_MAX_WEIGHT)
    entropy: float = Field(0.6, ge=-_MAX_WEIGHT, le=_MAX_WEIGHT)
    mutual: float = Field(0.8, ge=-_MAX_WEIGHT, le=_MAX_WEIGHT)


class MergingConfig(_Schema):
    contextual_num: int = Field(10, ge=0, description="contextual (merged) tokens per image")
    kmeans_init_factor: float = Field(2.0, ge=1.0, description="k-means++ seeds = factor * contextual_num")
    kmeans_iters: int = Field(10, ge=0, description="Lloyd iterations")
    agglomerative: bool = Field(False, description="reduce the k-means clusters to contextual_num agglomeratively")
    weighting: Literal["score", "mean"] = Field(
        "score", description="contextual token = score-weighted mean of its members' hidden states, or the plain mean (seed)"
    )
    seeds: Literal["budget", "factor"] = Field(
        "budget",
        description="k-means++ seeds: 'budget' = contextual_num, ceil(factor * contextual_num) only with agglomerative "
        "(this package); 'factor' = min(max(C, ceil(factor * C)), remaining) always, and without agglomerative the "
        "clusters numbered >= C are dropped with their tokens (seed)",
    )
    linkage: Literal["average", "midpoint"] = Field(
        "average",
        description="agglomerative reduction: average linkage on cosine distance, tokens follow their centre "
        "(this package); or the seed's rule: replace the most cosine-similar centre pair by its midpoint, "
        "appended last, then re-assign every token to the nearest surviving centre",
    )
    order: Literal["position", "cluster"] = Field(
        "position",
        description="contextual tokens ordered by their first member's position, or by cluster id (k-means++ draw "
        "order; agglomerative: survivors, then merged centres in merge order) as the seed",
    )
    empty: Literal["keep", "reseed"] = Field(
        "keep", description="a centre emptied in a Lloyd step keeps its position, or is re-seeded on a uniformly drawn token (seed)"
    )
    empty_token: Literal["drop", "zero"] = Field(
        "drop", description="an empty contextual cluster gives no token, or a zero token (seed: always C contextual tokens)"
    )


class SparseZipConfig(_Deferrable):
    """SparseZip: hybrid (text-aware) scoring, dynamic-K dominant tokens, hierarchical merging.

    Defaults are this package's method; ``model_configs/sparsezip_seed_*.yaml`` set the keys that reproduce
    the seed's executed code (W1nd55/VisionZip-exp 7a86f65), see docs/ALGORITHMS.md.
    """

    method: Literal["sparsezip"] = "sparsezip"
    dominant: int = Field(54, ge=1, description="dominant tokens when dynamic-K is off (CLS counted iff k_counts_cls)")
    k_min: int = Field(32, ge=1, description="dynamic-K lower bound (CLS counted iff k_counts_cls)")
    k_max: int = Field(54, ge=1, description="dynamic-K upper bound (CLS counted iff k_counts_cls)")
    k_counts_cls: bool = Field(
        True,
        description="K, dominant, k_min, k_max count CLS (VisionZip's convention, this package): output K + C tokens; "
        "false: they count patches only (seed): output 1 + K + C tokens",
    )
    dynk: DynamicKConfig = DynamicKConfig()
    alphas: HybridWeights = HybridWeights()
    tau_feat: float = Field(0.15, gt=0)
    tau_sim: float = Field(0.08, gt=0)
    entropy_keys: Literal["unit", "raw"] = Field(
        "unit",
        description="feature entropy over the channels of the unit keys (this package: scale-free), or of the raw "
        "keys (seed: the key norm acts as an inverse temperature)",
    )
    score_norm: Literal["minmax", "zscore"] = Field(
        "minmax",
        description="per-image normalisation of each hybrid term: min-max to [0, 1] (this package), or the seed's "
        "z-score (x - mean) / (unbiased std + 1e-12), which then also z-scores the text relevance",
    )
    cross_beta: float = Field(0.0, ge=0, le=_MAX_WEIGHT, description="weight of the text-relevance z-score")
    text_weight: Literal["relative", "absolute"] = Field(
        "relative",
        description="'relative': the text term is cross_beta * std(visual score) * zscore(relevance), so its spread "
        "is cross_beta times the visual score's spread; 'absolute' (seed): cross_beta * zscore(relevance)",
    )
    text_space: Literal["vision", "llm"] = Field(
        "vision",
        description="projector question relevance: pull-back to CLIP space, or push-forward to LLM space",
    )
    text_source: Literal["projector", "seed_keys"] = Field(
        "projector",
        description="question relevance from the LLaVA projector (text_space), or 'seed_keys' (seed, reproduction "
        "only, not meaningful): mean LLM question embedding, normalised, cut to its first Ck dims, dot the unit CLIP keys",
    )
    key_float32: bool = Field(
        False,
        description="entropy, mutual information and clustering decisions in float32 whatever the input dtype, as "
        "the seed's key.float() (this package: float32, or float64 for float64 inputs)",
    )
    merge: Literal["kmeans", "visionzip", "none"] = Field(
        "kmeans", description="contextual merge: k-means on the unit keys, VisionZip's merge, or no contextual tokens"
    )
    merging: MergingConfig = MergingConfig()
    next_budget: Literal["per_crop", "per_image"] = Field(
        "per_crop",
        description="LLaVA-NeXT: every crop (base view, tiles) its own dynamic K, or one K per image from the "
        "scores pooled over its crops, its crops x K dominant tokens ranked jointly across them (LLaVA-1.5: the same)",
    )
    skip_hybrid_attn: bool = Field(False, description="score = CLS attention only")
    skip_dynamic_k: bool = Field(False, description="use the fixed `dominant` instead of dynamic-K")
    skip_ctx_merge: bool = Field(
        False,
        description="the seed's switch: contextual tokens by VisionZip's merge instead of `merge` (for no contextual "
        "tokens use merge: none)",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check_bounds(self) -> "SparseZipConfig":
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) must not exceed k_max ({self.k_max})")
        return self


class _Schedule(_Schema):
    """Pruning layers and the visual tokens kept after each (the SparseVLM schedules)."""

    budget: int = Field(64, ge=1, description="nominal visual-token budget (label only)")
    pruning_layers: list[int] = Field(default_factory=lambda: [2, 6, 15])
    schedule: list[int] = Field(default_factory=lambda: [66, 30, 17])

    @model_validator(mode="after")
    def _check_schedule(self) -> "_Schedule":
        if not self.pruning_layers:
            raise ValueError("pruning_layers is empty: nothing is pruned (for no pruning use config keep_all)")
        if len(self.pruning_layers) != len(self.schedule):
            raise ValueError(
                f"pruning_layers ({self.pruning_layers}) and schedule ({self.schedule}) must have the same length"
            )
        if any(b <= a for a, b in zip(self.pruning_layers, self.pruning_layers[1:])):
            raise ValueError(f"pruning_layers must be strictly increasing, got {self.pruning_layers}")
        if any(layer < 0 for layer in self.pruning_layers):
            raise ValueError(f"pruning_layers must be >= 0, got {self.pruning_layers}")
        if any(k < 1 for k in self.schedule):
            raise ValueError(f"schedule entries must be >= 1, got {self.schedule}")
        if any(b > a for a, b in zip(self.schedule, self.schedule[1:])):
            raise ValueError(
                f"schedule must not increase from one pruning layer to the next (a later layer keeps at most what "
                f"an earlier one kept), got {self.schedule}"
            )
        return self


class SparseVLMConfig(_Schedule):
    """SparseVLM v1.5 (ICML code): text-guided pruning inside the LLM prefill with token recycling;
    positions renumbered 0..n-1 after each pruning layer."""

    method: Literal["sparsevlm"] = "sparsevlm"
    recycle: bool = True
    recycle_ratio: float = Field(0.3, gt=0, le=1)
    cluster_divisor: int = Field(10, ge=1)
    seed: int = 0


class SparseVLM2Config(_Schedule):
    """SparseVLM v2.0 ("SparseVLM+"): RoPE-corrected rater attention, priority heads, no recycling,
    original position ids."""

    method: Literal["sparsevlm2"] = "sparsevlm2"
    schedule: list[int] = Field(default_factory=lambda: [66, 34, 20])
    priority_heads: int = Field(
        14, ge=1, description="heads kept by the largest corrected attention mass (official: 14; all heads if fewer)"
    )
    seed: int = 0


class FastVConfig(_Schema):
    """FastV (Chen et al., ECCV 2024): the last prompt token's head-mean attention at layer K-1 ranks the
    visual tokens; the best ``int(n_visual * ratio)`` continue from layer K's input with their original
    position ids."""

    method: Literal["fastv"] = "fastv"
    layer: int = Field(2, description="K: scored at layer K-1, pruned at layer K's input (K = 1 is refused: the official code crashes)")
    ratio: float = Field(0.5, gt=0, lt=1, description="R: int(n_visual * R) visual tokens kept")
    span: Literal["image", "fixed"] = Field(
        "image",
        description="image: score the prompt's real image span; fixed: the official hard-coded positions 35..610 "
        "(LLaVA-1.5's system prompt length), whatever the prompt",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check_layer(self) -> "FastVConfig":
        if self.layer < 2:
            raise ValueError(
                f"key 'layer': K = {self.layer}; FastV needs K >= 2 (scored at layer K-1, pruned at layer K's input; "
                "the official code crashes at K = 1, whose scoring layer is layer 0)"
            )
        return self


CompressionConfig = Annotated[
    Union[
        KeepAllConfig, VisionZipConfig, SparseZipConfig, SparseVLMConfig, SparseVLM2Config, FastVConfig, RandomKeepConfig,
        PoolConfig, DivPruneConfig, CDPrunerConfig,
    ],
    Field(discriminator="method"),
]
_ADAPTER: TypeAdapter = TypeAdapter(CompressionConfig)
METHODS = ("none", "visionzip", "sparsezip", "sparsevlm", "sparsevlm2", "fastv", "random", "pool", "divprune", "cdpruner")
IN_LLM_METHODS = ("sparsevlm", "sparsevlm2", "fastv")  # prune inside the LLM prefill by their own scores


def prunes_in_llm(config: Any) -> bool:
    """True when ``config`` prunes visual tokens inside the LLM (an in-LLM method, or a deferred vision-side one)."""
    return getattr(config, "method", None) in IN_LLM_METHODS or getattr(config, "prune_layer", 0) > 0


# --------------------------------------------------------------------------- files


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
        # drop the union tag pydantic puts first (e.g. 'sparsezip') so that the path is the YAML key
        loc = [str(p) for p in item["loc"]]
        if loc and loc[0] in METHODS:
            loc = loc[1:]
        key = ".".join(loc) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r}")
        elif item["type"] == "union_tag_invalid":
            lines.append(f"'method' must be one of {', '.join(METHODS)}, got {item['input'].get('method')!r}")
        elif item["type"] == "union_tag_not_found":
            lines.append(f"missing key 'method' (one of {', '.join(METHODS)})")
        elif key == "<root>":
            lines.append(item["msg"].removeprefix("Value error, "))
        else:
            lines.append(f"key {key!r}: {item['msg']} (got {item.get('input')!r})")
    return f"invalid config {source}: " + "; ".join(lines)


def parse_config(data: Mapping[str, Any], source: str = "<dict>") -> CompressionConfig:
    """Validate a plain mapping into the schema its ``method`` selects."""
    try:
        return _ADAPTER.validate_python(dict(data))
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
