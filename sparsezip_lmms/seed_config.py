"""``import-config``: a SparseZip config of the seed project (W1nd55/VisionZip-exp 7a86f65) → ours.

The seed's ``config/*.yaml`` has a ``model:`` section (``model_type: sparsezip``, ``dominant``,
``contextual``, and a ``sparsezip:`` mapping) that ``scripts/evalkit.py`` → ``scripts/model.py``
(``LlavaSparseZipModel``) resolve into its compressor. :func:`convert` applies the same resolution
(PyYAML semantics: a duplicated key keeps its last value — each duplicate is reported) and writes the
``sparsezip`` keys of this package that make :func:`sparsezip_lmms.compress.sparsezip` compute what the
seed's executed code computes (docs/ALGORITHMS.md, "SparseZip in this package vs the seed").

    python -m sparsezip_lmms import-config config/sparsezip_pope.yaml --out model_configs/mine.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, config_to_dict, parse_config

__all__ = ["convert", "main", "seed_effective"]

# the seed's defaults where its YAML is silent (evalkit → LlavaSparseZipModel)
_SEED_DEFAULTS = {
    "dominant": 54,  # evalkit
    "contextual": 10,  # evalkit
    "alphas": (1.0, 0.0, 0.0),  # evalkit's vision_zip_alpha default, not the class default (1.2, 0.9, 0.2)
    "tau_feat": 0.2,
    "tau_sim": 0.1,
    "cross_beta": 0.0,
    "dynamic_k": True,
    "dynk_c": 8.0,
    "k_min": 4,
    "k_max": 64,
    "kmeans_init_factor": 2.0,
    "kmeans_iters": 10,
    "agglomerative": True,
}
_DYNK_EPS = 1e-6  # hard-coded in the seed: the YAML dynk.eps is never read

# the seed's rules as keys of this package (each a row of the docs table)
_SEED_RULES: dict[str, Any] = {
    "k_counts_cls": False,
    "entropy_keys": "raw",
    "score_norm": "zscore",
    "text_weight": "absolute",
    "text_source": "seed_keys",
    "key_float32": True,
    "merge": "kmeans",
}
_SEED_MERGING = {
    "weighting": "mean",
    "seeds": "factor",
    "linkage": "midpoint",
    "order": "cluster",
    "empty": "reseed",
    "empty_token": "zero",
}
_KNOWN_SPARSEZIP = {
    "dynamic_k", "k_min", "k_max", "dynk", "alphas", "tau_feat", "tau_sim", "cross_beta", "merging",
    "skip_hybrid_attn", "skip_dynamic_k", "skip_ctx_merge",
}  # fmt: skip


class _DuplicateRecordingLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (last duplicate wins, as PyYAML) that records each duplicated key."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []
        self._paths: dict[int, str] = {}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        prefix = self._paths.get(id(node), "")
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            path = f"{prefix}{key}"
            if isinstance(value_node, yaml.MappingNode):
                self._paths[id(value_node)] = f"{path}."
            if key in seen:
                self.duplicates.append(
                    f"duplicate key {path!r} (lines {seen[key] + 1} and {key_node.start_mark.line + 1}): "
                    "the last value is used, as PyYAML does"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _load(text: str) -> tuple[Any, list[str]]:
    loader = _DuplicateRecordingLoader(text)
    try:
        return loader.get_single_data(), loader.duplicates
    finally:
        loader.dispose()


def _section(data: Any, name: str) -> dict:
    value = data.get(name) if isinstance(data, dict) else None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"seed config: {name!r} must be a mapping, got {type(value).__name__}")
    return value


def seed_effective(model: dict) -> dict[str, Any]:
    """The compressor settings the seed resolves a ``model:`` section to (its evalkit → model.py rules)."""
    d = _SEED_DEFAULTS
    sz = _section(model, "sparsezip")
    merging, dynk = _section(sz, "merging"), _section(sz, "dynk")
    dominant = int(model.get("dominant", d["dominant"]))
    skip_hybrid = bool(sz.get("skip_hybrid_attn", False))
    skip_dyn = bool(sz.get("skip_dynamic_k", False))
    alphas_cfg = _section(sz, "alphas")
    if skip_hybrid:
        alphas = (1.0, 0.0, 0.0)
    else:
        alphas = tuple(float(alphas_cfg.get(k, v)) for k, v in zip(("attn", "entropy", "mutual"), d["alphas"]))
    ctx = merging.get("contextual_num")
    return {
        "alphas": alphas,
        "tau_feat": float(sz.get("tau_feat", d["tau_feat"])),
        "tau_sim": float(sz.get("tau_sim", d["tau_sim"])),
        "cross_beta": float(sz.get("cross_beta", d["cross_beta"])),
        "dynamic_k": bool(sz.get("dynamic_k", d["dynamic_k"])) and not skip_dyn,
        "dynk_c": float(dynk.get("c", d["dynk_c"])),
        "dynk_eps": _DYNK_EPS,
        "k_min": int(sz.get("k_min", d["k_min"])),
        "k_max": int(sz.get("k_max", d["k_max"])),
        "contextual_num": int(ctx if ctx is not None else model.get("contextual", d["contextual"])),
        "kmeans_init_factor": float(merging.get("kmeans_init_factor", d["kmeans_init_factor"])),
        "kmeans_iters": int(merging.get("kmeans_iters", d["kmeans_iters"])),
        "agglomerative": bool(merging.get("agglomerative", d["agglomerative"])),
        "skip_hybrid_attn": skip_hybrid,
        "skip_ctx_merge": bool(sz.get("skip_ctx_merge", False)),
        "dominant": dominant,
    }


def convert(seed_yaml_text: str) -> tuple[dict, list[str]]:
    """A seed YAML's text → (our ``sparsezip`` config mapping, warnings).

    Warnings report every duplicated key (resolved as PyYAML: last wins) and the seed settings that are
    read but never executed (``dynk.eps``; ``contextual`` when ``merging.contextual_num`` is given).
    """
    try:
        data, warnings = _load(seed_yaml_text)
    except yaml.YAMLError as err:
        raise ConfigError(f"seed config is not valid YAML: {err}") from None
    model = _section(data, "model")
    if not model:
        raise ConfigError("seed config has no 'model:' section")
    if str(model.get("model_type", "sparsezip")).lower() != "sparsezip":
        raise ConfigError(f"seed config: model_type must be 'sparsezip', got {model.get('model_type')!r}")
    sz = _section(model, "sparsezip")
    unknown = sorted(set(sz) - _KNOWN_SPARSEZIP)
    warnings = list(warnings)
    if unknown:
        warnings.append(f"sparsezip keys the seed never reads: {', '.join(map(str, unknown))}")
    if "eps" in _section(sz, "dynk"):
        warnings.append(f"dynk.eps is never read by the seed: eps {_DYNK_EPS} is used")
    if "contextual" in model and "contextual_num" in _section(sz, "merging"):
        warnings.append("contextual is ignored: merging.contextual_num is given")
    e = seed_effective(model)
    out: dict[str, Any] = {
        "method": "sparsezip",
        "dominant": e["dominant"],
        "k_min": e["k_min"],
        "k_max": e["k_max"],
        "k_counts_cls": _SEED_RULES["k_counts_cls"],
        "dynk": {"c": e["dynk_c"], "eps": e["dynk_eps"], "scale": 1.0, "source": "ranking", "widen_to_dominant": True},
        "alphas": dict(zip(("attn", "entropy", "mutual"), e["alphas"])),
        "tau_feat": e["tau_feat"],
        "tau_sim": e["tau_sim"],
        **{k: v for k, v in _SEED_RULES.items() if k != "k_counts_cls"},
        "cross_beta": e["cross_beta"],
        "merging": {
            "contextual_num": e["contextual_num"],
            "kmeans_init_factor": e["kmeans_init_factor"],
            "kmeans_iters": e["kmeans_iters"],
            "agglomerative": e["agglomerative"],
            **_SEED_MERGING,
        },
        "skip_hybrid_attn": e["skip_hybrid_attn"],
        "skip_dynamic_k": not e["dynamic_k"],
        "skip_ctx_merge": e["skip_ctx_merge"],
        "seed": 0,
    }
    # validate, and write every key (the effective config)
    return config_to_dict(parse_config(out, "<converted seed config>")), warnings


def main(argv: list[str] | None = None) -> int:
    """``import-config SEED_YAML --out OUR_YAML``: convert, report the warnings on stderr, write YAML."""
    parser = argparse.ArgumentParser(prog="import-config", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("seed_yaml", help="a seed config file (model: section with sparsezip: inside)")
    parser.add_argument("--out", required=True, help="where to write this package's config (YAML)")
    args = parser.parse_args(argv)
    try:
        text = Path(args.seed_yaml).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        print(f"import-config: cannot read {args.seed_yaml}: {err}", file=sys.stderr)
        return 2
    try:
        config, warnings = convert(text)
    except ConfigError as err:
        print(f"import-config: {err}", file=sys.stderr)
        return 1
    for line in warnings:
        print(f"import-config: warning: {line}", file=sys.stderr)
    header = f"# converted from the seed config {Path(args.seed_yaml).name} by import-config\n"
    Path(args.out).write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return 0
