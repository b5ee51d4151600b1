"""The method registry: a method written outside the package (the worked example of
docs/ADDING_A_METHOD.md, taken from the document itself) runs through ``--model llava_compressed``,
appears in the leaderboard, and is refused by name when a key is wrong; malformed specs are refused."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Literal

import pytest

from sparsezip_lmms import leaderboard
from sparsezip_lmms.config import ConfigError, load_config
from sparsezip_lmms.demo.harness import lmms_eval_command
from sparsezip_lmms.methods import MethodConfig, MethodSpec, get_method, method_names, registry, reload
from _inprocess import run_in_process

DOC = Path(__file__).resolve().parents[1] / "docs" / "ADDING_A_METHOD.md"


def _doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The documented module and entry point installed as a distribution on sys.path (what
    ``pip install`` of the user's package leaves behind), the registry read again; undone afterwards."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "norm_prune.py").write_text(_doc_blocks("python")[0], encoding="utf-8")
    info = site / "norm_prune-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: norm-prune\nVersion: 0.1\n", encoding="utf-8")
    declared = tomllib.loads(_doc_blocks("toml")[0])["project"]["entry-points"]["sparsezip_lmms.methods"]
    lines = "".join(f"{name} = {value}\n" for name, value in declared.items())  # as pip writes entry_points.txt
    (info / "entry_points.txt").write_text(f"[sparsezip_lmms.methods]\n{lines}", encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    reload()
    yield site
    sys.modules.pop("norm_prune", None)
    monkeypatch.undo()
    reload()


def test_documented_module_is_short():
    assert len(_doc_blocks("python")[0].strip().splitlines()) <= 25


def test_plugin_method_runs_through_llava_compressed_and_reaches_the_leaderboard(plugin, tmp_path, tiny_checkpoint, mini_tasks):
    assert registry.broken_methods() == {}
    assert "norm_prune" in method_names() and get_method("norm_prune").stage == "projected"
    config = tmp_path / "norm_6.yaml"
    config.write_text("method: norm_prune\nkeep: 6\n", encoding="utf-8")
    assert load_config(str(config)).keep == 6

    include, names = mini_tasks
    out = tmp_path / "run"
    cmd = lmms_eval_command(
        "llava_compressed", f"pretrained={tiny_checkpoint},config={config},dtype=float32", [names["pope"]], out,
        include_path=include, batch_size=3, extra=["--gen_kwargs", "max_new_tokens=2", "--limit", "6"],
    )  # fmt: skip
    run = run_in_process(cmd, out)
    metrics = {k.split(",")[0]: v for k, v in run.results["results"][names["pope"]].items()}
    assert metrics["eff_failed"] == 0
    assert metrics["eff_visual_tokens"] == 6  # every image sent exactly its 6 kept tokens

    rows = leaderboard.collect([out])
    (row,) = [r for r in rows if r.sources]
    assert row.model == "llava_compressed" and row.config == str(config)
    columns, cells = leaderboard.table(rows)
    assert cells[0]["visual tokens"] == 6


def test_plugin_config_key_is_refused_by_name_before_loading(plugin, tmp_path, tiny_checkpoint):
    from lmms_eval.models import get_model

    config = tmp_path / "norm_6.yaml"
    config.write_text("method: norm_prune\nkeep: 6\n", encoding="utf-8")
    cls = get_model("llava_compressed")
    with pytest.raises(ConfigError, match="unknown key 'kep'"):
        cls.create_from_arg_string(f"pretrained={tiny_checkpoint},config={config},kep=3")
    with pytest.raises(ConfigError, match="key 'keep': Input should be greater than or equal to 1"):
        cls.create_from_arg_string(f"pretrained={tiny_checkpoint},config={config},keep=0")
    with pytest.raises(ConfigError, match="config= is required"):
        cls.create_from_arg_string(f"pretrained={tiny_checkpoint}")
    with pytest.raises(ConfigError, match="llava_visionzip accepts visionzip, none"):
        get_model("llava_visionzip").create_from_arg_string(f"pretrained={tiny_checkpoint},config={config}")
    with pytest.raises(ConfigError, match="nothing is compressed"):  # max_tokens against the checkpoint
        cls.create_from_arg_string(f"pretrained={tiny_checkpoint},config={config},keep=100000")


class _Loose(MethodConfig):
    model_config = {**MethodConfig.model_config, "extra": "ignore"}
    method: Literal["loose"] = "loose"


class _Good(MethodConfig):
    method: Literal["good"] = "good"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("not a spec", "not a sparsezip_lmms.methods.MethodSpec"),
        (MethodSpec("loose", _Loose, "projected", select=len), "accepts unknown keys"),
        (MethodSpec("other", _Good, "projected", select=len), "needs the field method: Literal['other']"),
        (MethodSpec("good", _Good, "projected"), "needs select(inputs, config)"),
        (MethodSpec("good", _Good, "llm"), "needs rule(config)"),
        (MethodSpec("good", _Good, "before"), "stage 'before' is not one of"),
        (MethodSpec("good", _Good, "vision", select=len, families=("qwen",)), "families ['qwen']"),
        (MethodSpec("good", _Good, "vision", select=len, inputs=frozenset({"depth"})), "unknown inputs ['depth']"),
        (MethodSpec("sparsezip", load_config("sparsezip_64").__class__, "vision", select=len), "already registered"),
    ],
)
def test_malformed_specs_are_refused_by_name(spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        registry.register(spec, origin="test")
    assert "good" not in method_names() and "loose" not in method_names()


def test_two_packages_claiming_one_name_is_an_error_not_a_guess(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "clash.py").write_text(
        "from sparsezip_lmms.methods import MethodSpec\n"
        "from sparsezip_lmms.methods.builtin import POOL\n"
        "SPEC = MethodSpec('pool', POOL.config, 'vision', select=POOL.select)\n"
    )
    for package, value in (("clash", "clash:SPEC"), ("broken", "no_such_module:SPEC")):
        info = site / f"{package}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[sparsezip_lmms.methods]\n{package} = {value}\n")
    monkeypatch.syspath_prepend(str(site))
    reload()
    try:
        with pytest.raises(ConfigError, match="'pool' is declared twice"):
            get_method("pool")
        with pytest.raises(ConfigError, match="method 'broken' is registered but broken.*no_such_module"):
            load_config({"method": "broken"})
        assert get_method("sparsezip").name == "sparsezip"  # the others are unaffected
    finally:
        sys.modules.pop("clash", None)
        monkeypatch.undo()
        reload()
    assert get_method("pool").name == "pool"


def _spec_from_doc(index: int, name: str, tmp_path) -> MethodSpec:
    module = tmp_path / f"{name}.py"
    module.write_text(_doc_blocks("python")[index], encoding="utf-8")
    namespace: dict = {}
    exec(compile(module.read_text(), str(module), "exec", dont_inherit=True), namespace)  # noqa: S102 - the document's own example
    return namespace["SPEC"]


def test_documented_vision_and_llm_examples_work(tmp_path):
    import torch

    from sparsezip_lmms.compress import compress
    from sparsezip_lmms.compress.in_llm import FastVRule, rule_for_config
    from sparsezip_lmms.config import prunes_in_llm

    vision, llm = _spec_from_doc(1, "norm_keep", tmp_path), _spec_from_doc(2, "early_fastv", tmp_path)
    try:
        registry.register(vision, origin="test")
        registry.register(llm, origin="test")
        config = load_config({"method": "norm_keep", "keep": 5})
        hidden = torch.randn(2, 1 + 16, 8)  # [B, 1+N, C]
        out = compress(hidden, None, None, config)
        assert out.tokens.shape == (2, 5, 8) and bool(out.valid.all())
        norms = hidden[:, 1:].norm(dim=-1)
        assert torch.equal(out.index - 1, norms.topk(5, dim=1).indices.sort(dim=1).values)
        fast = load_config({"method": "early_fastv", "layer": 3})
        assert prunes_in_llm(fast) and isinstance(rule_for_config(fast), FastVRule)
        assert rule_for_config(fast).pruning_layers == (2,)
        with pytest.raises(ConfigError, match="key 'layer'"):
            load_config({"method": "early_fastv", "layer": 1})
    finally:
        reload()
