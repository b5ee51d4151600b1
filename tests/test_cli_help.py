"""The command line explains itself: every command's --help runs, reads as plain text and describes
every option; one flag spelling across commands (lmms-eval's underscore spellings as hidden aliases);
explain's per-entry model arguments and its offline checks. Parsing only: no model is loaded."""

from __future__ import annotations

import argparse
import time

import pytest

from sparsezip_lmms.__main__ import _WITH_OWN_OPTIONS
from sparsezip_lmms.__main__ import main as cli_main

COMMANDS = [None, *_WITH_OWN_OPTIONS, "tasks-path", "configs", "methods", "show-config"]


def _help_of(command: str | None, capsys, monkeypatch) -> tuple[str, list[argparse.ArgumentParser]]:
    """The --help text of `command` (None: the top level) and the parsers that read the arguments."""
    parsers: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_known_args

    def recording(self, *args, **kwargs):
        parsers.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", recording)
    with pytest.raises(SystemExit) as exit_:
        cli_main([*([command] if command else []), "--help"])
    assert exit_.value.code in (0, None)
    return capsys.readouterr().out, parsers


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c or "top-level")
def test_every_help_runs_and_describes_every_option(command, capsys, monkeypatch):
    text, parsers = _help_of(command, capsys, monkeypatch)
    assert text.startswith("usage: python -m sparsezip_lmms") or text.startswith("usage: import-config")
    assert parsers
    for parser in parsers:
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:  # a hidden alias
                assert action.option_strings and "_" in action.option_strings[0] or "sparsevlm" in action.option_strings[0]
                continue
            name = "/".join(action.option_strings) or action.dest
            assert action.help and action.help.strip(), f"{command}: {name} has no help"
            for choice in getattr(action, "_choices_actions", []):  # the top level's commands
                assert choice.help and choice.help.strip(), f"{command}: command {choice.dest} has no help"
        parser.format_help()  # every %(default)s expands


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c or "top-level")
def test_help_is_plain_text(command, capsys, monkeypatch):
    text, _ = _help_of(command, capsys, monkeypatch)
    assert "``" not in text and ":func:" not in text and ":mod:" not in text


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c or "top-level")
def test_one_spelling_per_option_the_others_hidden(command, capsys, monkeypatch):
    """Options are spelt with hyphens; lmms-eval's underscore spellings and former names are hidden aliases."""
    text, parsers = _help_of(command, capsys, monkeypatch)
    for parser in parsers:
        for action in parser._actions:
            shown = [s for s in action.option_strings if s.startswith("--")]
            if action.help == argparse.SUPPRESS:
                assert all(f"{s} " not in text.split("\n\n", 1)[0] for s in shown)  # not in the usage line either
                continue
            assert all("_" not in s for s in shown), f"{command}: {shown}"
            assert len(shown) <= 1 or shown[1] == f"--no-{shown[0][2:]}", f"{command}: {shown} (one name per option)"


@pytest.mark.parametrize("flag", ["--include-path", "--include_path"])
def test_calibrate_and_sweep_take_both_spellings_of_include_path(flag, tmp_path):
    from sparsezip_lmms import calibrate, sweep

    args = calibrate._parser().parse_args(["--pretrained", "p", "--task", "pope", "--out", "c.yaml", flag, "tasks/", "--batch_size", "2"])
    assert args.include_path == "tasks/" and args.batch_size == 2
    assert calibrate._parser().parse_args(["--pretrained", "p", "--task", "t", "--out", "o"]).include_path is None
    args = sweep._parser().parse_args(["--model", "m", "--tasks", "t", "--pretrained", "p", "--out", str(tmp_path), flag, "tasks/"])
    assert args.include_path == "tasks/" and args.model_args == "" and args.batch_size == 1
    args = sweep._parser().parse_args(["--model", "m", "--tasks", "t", "--pretrained", "p", "--out", "o", "--model_args", "dtype=float16"])
    assert args.model_args == "dtype=float16" and args.include_path is None


def test_bench_keeps_the_former_sparsevlm_names_hidden():
    from sparsezip_lmms.bench.cli import _parser

    old = _parser().parse_args(["--sparsevlm-budgets", "64", "--sparsevlm-batch", "4", "--no-sparsevlm-plain", "--sparsevlm-layers", "3"])
    assert (old.pruning_budgets, old.pruning_batch, old.pruning_plain, old.pruning_llm_layers) == ("64", 4, False, 3)
    new = _parser().parse_args([])
    assert (new.pruning_budgets, new.pruning_batch, new.pruning_plain, new.pruning_llm_layers) == (None, None, None, None)


# ----------------------------------------------------------------------------- explain's entries


@pytest.mark.parametrize("configs", ["cdpruner_64,visionzip_64,llava_fastv", "visionzip_64,llava_fastv,cdpruner_64",
                                     "llava_fastv,llava_cdpruner,visionzip_64"])  # fmt: skip
def test_clip_text_tower_in_model_args_goes_to_the_cdpruner_entry_wherever_it_is(configs):
    from sparsezip_lmms.analysis.explain import plan_entries, split_choices

    entries = plan_entries(split_choices(configs), {"clip_text_tower": "/models/clip", "dtype": "float16"})
    towers = {entry.choice.model_id: entry.clip_text_tower for entry in entries}
    assert towers == {"llava_cdpruner": "/models/clip", "llava_visionzip": None, "llava_fastv": None}
    assert [entry.reads_clip_text for entry in entries] == [e.choice.model_id == "llava_cdpruner" for e in entries]
    assert all(entry.load_args == {"dtype": "float16"} for entry in entries)  # one checkpoint load for all


@pytest.mark.parametrize("configs", ["cdpruner_64;clip_text_tower=/models/clip,visionzip_64",
                                     "visionzip_64,sparsezip_64;cross_beta=0,cdpruner_64;clip_text_tower=/models/clip"])  # fmt: skip
def test_an_entry_carries_its_own_model_arguments(configs):
    from sparsezip_lmms.analysis.explain import plan_entries, split_choices

    choices = split_choices(configs)
    cdpruner = next(c for c in choices if c.model_id == "llava_cdpruner")
    assert cdpruner.model_args == {"clip_text_tower": "/models/clip"} and cdpruner.overrides == {}
    assert cdpruner.label == "llava_cdpruner:cdpruner_64,clip_text_tower=clip"  # paths shortened in labels
    entries = {e.choice.model_id: e for e in plan_entries(choices, {"clip_text_tower": "/elsewhere"})}
    assert entries["llava_cdpruner"].clip_text_tower == "/models/clip"  # the entry's own wins
    assert entries["llava_visionzip"].clip_text_tower is None
    if "llava_sparsezip" in entries:
        assert entries["llava_sparsezip"].choice.overrides == {"cross_beta": "0"}


def test_per_entry_load_arguments_and_refusals():
    from sparsezip_lmms.analysis.explain import plan_entries, split_choices

    entries = plan_entries(split_choices("visionzip_64;dtype=float64,visionzip_128"), {"dtype": "float32"})
    assert [e.load_args for e in entries] == [{"dtype": "float64"}, {"dtype": "float32"}]
    with pytest.raises(ValueError, match="clip_text_tower is read by CDPruner configs only"):
        plan_entries(split_choices("visionzip_64;clip_text_tower=/models/clip"))
    with pytest.raises(ValueError, match="config overrides go on the entry"):
        plan_entries(split_choices("sparsezip_64"), {"cross_beta": "0"})
    with pytest.raises(ValueError, match="use --pretrained"):
        split_choices("visionzip_64;pretrained=x")


def test_missing_clip_text_tower_fails_at_once_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants

    from sparsezip_lmms.analysis.explain import resolve_clip_text_tower

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ValueError) as not_given:
        resolve_clip_text_tower(None)
    with pytest.raises(ValueError) as missing_folder:
        resolve_clip_text_tower(str(tmp_path / "no-clip-here"))
    assert time.perf_counter() - start < 1.0  # no hub retries
    for err in (not_given, missing_folder):
        message = str(err.value)
        assert "clip_text_tower" in message and "pass clip_text_tower=FOLDER" in message and "\n" not in message
    assert "not given" in str(not_given.value) and "HF_HUB_OFFLINE" in str(not_given.value)
    assert "no such folder" in str(missing_folder.value)


def test_offline_a_cached_hub_id_or_a_folder_passes(monkeypatch, tmp_path):
    import huggingface_hub.constants

    from sparsezip_lmms.analysis.explain import resolve_checkpoint, resolve_clip_text_tower

    cache = tmp_path / "cache"
    repo = cache / "models--org--clip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "snapshots" / "abc" / "config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_clip_text_tower("org/clip") == "org/clip"
    assert resolve_clip_text_tower(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ValueError, match="--pretrained org/llava: HF_HUB_OFFLINE is set"):
        resolve_checkpoint("--pretrained", "org/llava", "pass --pretrained FOLDER")


def test_tokens_kept_says_what_in_llm_methods_keep():
    from sparsezip_lmms.analysis.explain import layer_patches, tokens_kept

    assert tokens_kept(64) == "64 visual tokens kept"
    assert tokens_kept(576, [576, 288, 288, 288]) == "576 visual tokens in, kept 288 after layer 1"  # FastV K=2
    record = {"images": [{"layers": {"2": "0-65", "6": "0-19"}}]}
    assert tokens_kept(576, [576, 576, 82, 82, 82, 82, 32, 32], layer_patches(record)) == (
        "576 visual tokens in, kept 82 after layer 2 (66 patches + 16 recycled), 32 after layer 6 (20 patches + 12 recycled)"
    )
    assert tokens_kept(576, [576, 576]) == "576 visual tokens kept (none pruned in the LLM)"
