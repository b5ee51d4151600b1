import pytest

from sparsezip_lmms.config import (
    ConfigError,
    SparseVLMConfig,
    SparseZipConfig,
    VisionZipConfig,
    available_configs,
    config_to_dict,
    load_config,
)

REQUIRED = {
    "keep_all", "visionzip_64", "visionzip_128", "visionzip_192", "sparsezip_64", "sparsezip_128",
    "sparsezip_192", "sparsezip_dynamic", "sparsevlm_64", "sparsevlm_128", "sparsevlm_192",
    "ablations/hybrid_off", "ablations/dynamic_k_off", "ablations/merge_off", "ablations/text_off",
    "ablations/kmeans_agglomerative", "ablations/text_space_llm",
}  # fmt: skip


def test_every_shipped_config_validates():
    names = set(available_configs())
    assert REQUIRED <= names
    for name in names:
        load_config(name)


@pytest.mark.parametrize(
    "name, dominant, contextual", [("visionzip_64", 54, 10), ("visionzip_128", 108, 20), ("visionzip_192", 162, 30)]
)
def test_visionzip_budgets(name, dominant, contextual):
    cfg = load_config(name)
    assert isinstance(cfg, VisionZipConfig)
    assert (cfg.dominant, cfg.contextual) == (dominant, contextual)


@pytest.mark.parametrize(
    "name, schedule", [("sparsevlm_64", [66, 30, 17]), ("sparsevlm_128", [303, 110, 36]), ("sparsevlm_192", [300, 200, 110])]
)
def test_sparsevlm_official_schedules(name, schedule):
    cfg = load_config(name)
    assert isinstance(cfg, SparseVLMConfig)
    assert cfg.schedule == schedule and cfg.pruning_layers == [2, 6, 15]


def test_sparsezip_budget_never_exceeds_its_name():
    for budget in (64, 128, 192):
        cfg = load_config(f"sparsezip_{budget}")
        assert cfg.k_max + cfg.merging.contextual_num <= budget
        assert cfg.dominant + cfg.merging.contextual_num <= budget


@pytest.mark.parametrize("budget", [640, 320, 160])
def test_sparsezip_next_budgets_are_five_crops_of_a_per_crop_budget(budget):
    cfg = load_config(f"sparsezip_next_{budget}")
    assert cfg.next_budget == "per_crop" and cfg.k_min < cfg.k_max
    assert 5 * (cfg.k_max + cfg.merging.contextual_num) == 5 * (cfg.dominant + cfg.merging.contextual_num) == budget
    centre = cfg.dynk.c + cfg.dynk.scale * -3.1  # the K of a typical score spread: mid-range, as sparsezip_64
    assert abs(centre - (cfg.k_min + cfg.k_max) / 2) < 1e-9


def test_ablations_change_exactly_their_switch():
    base = config_to_dict(load_config("sparsezip_64"))
    expected = {
        "ablations/hybrid_off": {"skip_hybrid_attn": True},
        "ablations/dynamic_k_off": {"skip_dynamic_k": True},
        "ablations/merge_off": {"merge": "none"},
        "ablations/text_off": {"cross_beta": 0.0},
        "ablations/text_space_llm": {"text_space": "llm"},
        "ablations/merge_visionzip": {"merge": "visionzip"},
        "ablations/next_budget_per_image": {"next_budget": "per_image"},
        "sparsezip_next_320": {},
    }
    for name, change in expected.items():
        cfg = config_to_dict(load_config(name))
        diff = {k: v for k, v in cfg.items() if base[k] != v}
        assert diff == change, name
    agglo = load_config("ablations/kmeans_agglomerative")
    assert agglo.merging.agglomerative and not load_config("sparsezip_64").merging.agglomerative


def test_dotted_overrides_are_typed_from_strings():
    cfg = load_config("sparsezip_64", {"merging.contextual_num": "16", "cross_beta": "0.3", "text_space": "llm"})
    assert cfg.merging.contextual_num == 16 and cfg.cross_beta == 0.3 and cfg.text_space == "llm"
    cfg = load_config("sparsezip_64", {"skip_dynamic_k": True, "alphas.entropy": 0})
    assert cfg.skip_dynamic_k and cfg.alphas.entropy == 0.0


def test_load_by_path_and_base(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: sparsezip_128\nmerging:\n  contextual_num: 7\n")
    cfg = load_config(str(path))
    assert isinstance(cfg, SparseZipConfig)
    assert cfg.merging.contextual_num == 7 and cfg.k_max == load_config("sparsezip_128").k_max


@pytest.mark.parametrize(
    "name, overrides, fragment",
    [
        ("no_such_config", {}, "unknown config 'no_such_config'"),
        ("sparsezip_64", {"foo": 1}, "unknown key 'foo'"),
        ("sparsezip_64", {"merging.bogus": 1}, "unknown key 'merging.bogus'"),
        ("sparsezip_64", {"merging.contextual_num": "many"}, "'merging.contextual_num'"),
        ("sparsezip_64", {"merging.contextual_num": 1.5}, "'merging.contextual_num'"),
        ("sparsezip_64", {"skip_dynamic_k": "sometimes"}, "'skip_dynamic_k'"),
        ("sparsezip_64", {"text_space": "pixels"}, "'text_space'"),
        ("sparsezip_64", {"k_min": 60}, "k_min"),
        ("sparsezip_64", {"cross_beta.x": 1}, "'cross_beta' is not a section"),
        ("visionzip_64", {"dominant": 0}, "'dominant'"),
        ("sparsevlm_64", {"schedule": [1, 2]}, "same length"),
        ("keep_all", {"method": "magic"}, "'method' must be one of"),
        ("divprune_next_320", {"keep": 64}, "'keep' (64) and 'keep_ratio'"),
        ("divprune_next_320", {"keep_ratio": 0.0}, "'keep_ratio'"),
        ("divprune_next_320", {"keep_ratio": 1.5}, "'keep_ratio'"),
        ("cdpruner_next_320", {"next_grid": "3x3"}, "'next_grid'"),
    ],
)
def test_bad_configs_name_the_key(name, overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(name, overrides)
    assert fragment in str(info.value)


def test_bad_files(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(missing))
    broken = tmp_path / "broken.yaml"
    broken.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(broken))
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"base: {loop}\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(str(loop))
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(listy))


def test_divprune_ratio_budgets():
    """keep_ratio is the official int(round(ratio · N)); the NeXT configs are named by 5 x 576 = 2880."""
    assert load_config("divprune_official").budget(576) == 56
    assert load_config("divprune_official").budget(2928) == 287
    for budget in (640, 320, 160):
        config = load_config(f"divprune_next_{budget}")
        assert config.budget(2880) == budget and config.budget(576) == budget // 5
        assert load_config(f"cdpruner_next_{budget}").keep * 5 == budget
    assert load_config("divprune_64").budget(2928) == 64  # a count stays a count
