"""import-config: the seed's YAMLs (W1nd55/VisionZip-exp 7a86f65, copies in tests/data/sparsezip_seed/)
convert to the shipped ``sparsezip_seed_*`` configs, with every duplicated key reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsezip_lmms.config import ConfigError, config_to_dict, load_config
from sparsezip_lmms.seed_config import convert, main

DATA = Path(__file__).parent / "data" / "sparsezip_seed"
SEED_FILES = {"pope": "sparsezip_pope.yaml", "mme": "sparsezip_mme.yaml", "docvqa": "sparsezip_docvqa.yaml",
              "readme": "readme_example.yaml"}  # fmt: skip


def _duplicates(warnings):
    return sorted(w.split("'")[1] for w in warnings if w.startswith("duplicate key"))


@pytest.mark.parametrize("name", sorted(SEED_FILES))
def test_converted_equals_shipped(name):
    cfg, _ = convert((DATA / SEED_FILES[name]).read_text())
    assert cfg == config_to_dict(load_config(f"sparsezip_seed_{name}"))


def test_duplicates_are_reported_and_last_wins():
    cfg, warnings = convert((DATA / "sparsezip_pope.yaml").read_text())
    assert _duplicates(warnings) == ["model.sparsezip.skip_dynamic_k", "runner.attn_implementation"]
    assert cfg["skip_dynamic_k"] is True  # the second of `false` / `true`
    cfg, warnings = convert((DATA / "sparsezip_mme.yaml").read_text())
    assert _duplicates(warnings) == sorted(
        f"model.sparsezip.{k}"
        for k in ("k_min", "k_max", "dynk", "tau_feat", "tau_sim", "cross_beta", "merging",
                  "skip_hybrid_attn", "skip_dynamic_k", "skip_ctx_merge")
    )  # fmt: skip
    assert cfg["cross_beta"] == 0.1 and cfg["skip_dynamic_k"] is True and cfg["merging"]["contextual_num"] == 32
    _, warnings = convert((DATA / "sparsezip_docvqa.yaml").read_text())
    assert _duplicates(warnings) == []
    assert any("dynk.eps" in w for w in warnings) and any("contextual is ignored" in w for w in warnings)


def test_seed_rules_and_budget():
    cfg = load_config("sparsezip_seed_pope")
    assert not cfg.k_counts_cls and cfg.dominant == 54 and cfg.merging.contextual_num == 32  # 1 + 54 + 32 = 87
    assert cfg.dynk.eps == 1e-6 and cfg.dynk.scale == 1.0 and cfg.dynk.widen_to_dominant


def test_defaults_without_sparsezip_section():
    cfg, _ = convert("model:\n  model_type: sparsezip\n")
    assert cfg["alphas"] == {"attn": 1.0, "entropy": 0.0, "mutual": 0.0}
    assert (cfg["k_min"], cfg["k_max"], cfg["dynk"]["c"], cfg["merging"]["contextual_num"]) == (4, 64, 8.0, 10)
    assert cfg["merging"]["agglomerative"] and cfg["merging"]["kmeans_iters"] == 10 and not cfg["skip_dynamic_k"]


def test_skip_switches_keep_the_seed_meaning():
    text = (DATA / "sparsezip_docvqa.yaml").read_text()
    cfg, _ = convert(text.replace("skip_ctx_merge: false", "skip_ctx_merge: true"))
    assert cfg["skip_ctx_merge"] is True and cfg["merge"] == "kmeans"  # skip_ctx_merge = VisionZip's merge
    cfg, _ = convert(text.replace("skip_hybrid_attn: false", "skip_hybrid_attn: true"))
    assert cfg["alphas"] == {"attn": 1.0, "entropy": 0.0, "mutual": 0.0} and cfg["skip_hybrid_attn"]


def test_bad_seed_configs():
    with pytest.raises(ConfigError, match="model"):
        convert("runner: {}\n")
    with pytest.raises(ConfigError, match="model_type"):
        convert("model:\n  model_type: llava\n")
    with pytest.raises(ConfigError, match="k_min"):
        convert("model:\n  sparsezip:\n    k_min: 70\n    k_max: 64\n")


def test_main_writes_a_loadable_config(tmp_path, capsys):
    out = tmp_path / "mine.yaml"
    assert main([str(DATA / "sparsezip_mme.yaml"), "--out", str(out)]) == 0
    assert config_to_dict(load_config(str(out))) == config_to_dict(load_config("sparsezip_seed_mme"))
    assert "duplicate key 'model.sparsezip.cross_beta'" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.yaml"), "--out", str(out)]) == 2
