"""Bad inputs on purpose: configs, checkpoints, images, questions, dtypes, batches, results files.

Every case ends in a clear error that names what is wrong (before any weight is loaded, where the
checkpoint's config.json suffices) or in a correct result; none in a results file that looks valid
and is wrong.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sparsezip_lmms.config import ConfigError, load_config, parse_value, split_args_string
from sparsezip_lmms.demo.mini_datasets import _scene
from sparsezip_lmms.efficiency import get_record
from _requests import make_requests

GEN = {"max_new_tokens": 3, "temperature": 0, "do_sample": False}


def _config_only(checkpoint: Path, tmp_path: Path, **changes) -> Path:
    """A folder with only the checkpoint's config.json (optionally changed): loading weights from it
    would fail, so an error raised here comes from the checks that run before weights load."""
    folder = tmp_path / "config-only"
    folder.mkdir(exist_ok=True)
    config = json.loads((checkpoint / "config.json").read_text())
    for dotted, value in changes.items():
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _checkpoint_copy(checkpoint: Path, tmp_path: Path, **changes) -> Path:
    """A full copy of the checkpoint with config.json changed."""
    folder = tmp_path / "changed"
    shutil.copytree(checkpoint, folder)
    shutil.copy(_config_only(checkpoint, tmp_path, **changes) / "config.json", folder / "config.json")
    return folder


def _build(model_id: str, pretrained: Path | str, model_args: str = "", **extra):
    """Build a model the way lmms-eval does: from the raw --model_args string."""
    from lmms_eval.models import get_model

    args = f"pretrained={pretrained}" + (f",{model_args}" if model_args else "")
    return get_model(model_id).create_from_arg_string(args, {"device": "cpu", "batch_size": 1, **extra})


# --------------------------------------------------------------------------- budgets vs the checkpoint


@pytest.mark.parametrize(
    "model_id, model_args, message",
    [
        ("llava_sparsezip", "config=sparsezip_64,skip_dynamic_k=true,dominant=600", "key 'dominant': 600 exceeds the 577 tokens per image"),
        ("llava_sparsezip", "config=sparsezip_64,k_min=32,k_max=700", "key 'k_max': 700 exceeds the 577 tokens per image"),
        ("llava_visionzip", "config=visionzip_64,dominant=600", "key 'dominant': 600 exceeds the 577 tokens per image"),
        ("llava_visionzip", "config=visionzip_64,dominant=500,contextual=100", "sends up to 577 visual tokens per image"),
        ("llava_sparsezip", "config=random_64,keep=1000", "key 'keep': 1000 is not below the 576 patches"),
        ("llava_sparsezip", "config=pool_64,keep=577", "key 'keep': 577 is not below the 576 patches"),
        ("llava_sparsezip", "config=pool_64,keep=576", "nothing is compressed"),
        ("llava_divprune", "config=divprune_next_320,keep_ratio=0.0005", "keeps no image token"),
        ("llava_divprune", "config=divprune_next_320,keep_ratio=1.0", "nothing is compressed"),
        ("llava_sparsevlm", "config=sparsevlm_64,pruning_layers=[2,6,40]", "names layer 40, but this checkpoint's LLM has 16 layers (0..15)"),
        ("llava_sparsevlm", "config=sparsevlm_64,schedule=[1000,800,700]", "nothing is pruned"),
    ],
)
def test_budgets_beyond_the_checkpoint_are_refused_before_weights_load(model_id, model_args, message, tiny_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match=model_id) as info:
        _build(model_id, _config_only(tiny_checkpoint, tmp_path), model_args)
    assert message in str(info.value)


def test_feature_select_strategy_full_is_refused_for_compressing_methods(tiny_checkpoint, tmp_path):
    folder = _config_only(tiny_checkpoint, tmp_path, vision_feature_select_strategy="full")
    for model_id, config in (("llava_sparsezip", "sparsezip_64"), ("llava_visionzip", "visionzip_64"), ("llava_sparsezip", "pool_64")):
        with pytest.raises(ConfigError, match="vision_feature_select_strategy 'default'.*uses 'full'"):
            _build(model_id, folder, f"config={config}")


def test_feature_select_strategy_full_runs_uncompressed(tiny_checkpoint, tmp_path):
    """keep_all keeps CLS with 'full': 577 visual tokens, as plain LLaVA does."""
    lmm = _build("llava_hf_timed", _checkpoint_copy(tiny_checkpoint, tmp_path, vision_feature_select_strategy="full"), "dtype=float64")
    docs = [([_scene(random.Random(1), (300, 200))], "Is there a cat?")]
    (result,) = lmm.generate_until(make_requests(lmm, docs, GEN, task="fuzz_full"))
    record = get_record("fuzz_full", "test", 0)
    assert record.error is None and record.visual_tokens == 577 and isinstance(result.text, str)


@pytest.mark.parametrize("schedule, layers, message", [
    ("[30, 66, 17]", "[2, 6, 15]", "schedule must not increase"),
    ("[]", "[]", "pruning_layers is empty: nothing is pruned"),
])  # fmt: skip
def test_sparsevlm_schedules_that_prune_nothing_or_increase_are_refused(schedule, layers, message, tmp_path):
    path = tmp_path / "svlm.yaml"
    path.write_text(f"base: sparsevlm_64\nschedule: {schedule}\npruning_layers: {layers}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(str(path))


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"cross_beta": "inf"}, "key 'cross_beta': Input should be a finite number"),
        ({"cross_beta": "1e308"}, "key 'cross_beta': Input should be less than or equal to 10000"),
        ({"cross_beta": "inf", "text_space": "llm"}, "key 'cross_beta': Input should be a finite number"),
        ({"dynk.c": "nan"}, "key 'dynk.c': Input should be a finite number"),
        ({"alphas.attn": "-inf"}, "key 'alphas.attn': Input should be a finite number"),
        ({"tau_feat": ".nan"}, "key 'tau_feat'"),
        ({"merging.contextual_num": "-3"}, "key 'merging.contextual_num': Input should be greater than or equal to 0 (got -3)"),
        ({"skip_dynamic_k": "yes"}, "key 'skip_dynamic_k': Input should be a valid boolean (got 'yes')"),
        ({"dominant": "1:30"}, "key 'dominant': Input should be a valid integer (got '1:30')"),
        ({"max_batch_image_tokens": "5"}, "unknown key 'max_batch_image_tokens'"),
    ],
)
def test_values_that_would_fail_every_request_are_refused_by_name(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config("sparsezip_64", overrides)
    assert message in str(info.value)


@pytest.mark.parametrize("text, value", [
    ("054", 54), ("-1", -1), ("+7", 7), ("1e-1", 0.1), ("1.5e3", 1500.0), (".5", 0.5), ("true", True), ("False", False),
    ("[66,30,17]", [66, 30, 17]), ("[2, 6, 15]", [2, 6, 15]), ("kmeans", "kmeans"), ("yes", "yes"), ("1:30", "1:30"),
    ("0x10", "0x10"), ("1_000", "1_000"),
])  # fmt: skip
def test_one_value_parser_without_yaml_surprises(text, value):
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_show_config_and_model_args_read_overrides_the_same_way(tiny_checkpoint):
    args = "config=sparsezip_64,skip_dynamic_k=true,dominant=054,tau_feat=1e-1,seed=-1,merging.contextual_num=08"
    lmm = _build("llava_sparsezip", tiny_checkpoint, args)
    overrides = {k: v for k, v in split_args_string(args).items() if k != "config"}
    proc = subprocess.run(
        [sys.executable, "-m", "sparsezip_lmms", "show-config", "sparsezip_64", *(f"{k}={v}" for k, v in overrides.items())],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    shown = json.loads(proc.stdout)
    assert shown == lmm._effective_config
    assert (shown["dominant"], shown["tau_feat"], shown["seed"], shown["merging"]["contextual_num"]) == (54, 0.1, -1, 8)


def test_model_args_lists_stay_whole():
    assert split_args_string("pretrained=/a/b,schedule=[66, 30, 17],pruning_layers=[2,6,15],x='a,b'") == {
        "pretrained": "/a/b", "schedule": "[66, 30, 17]", "pruning_layers": "[2,6,15]", "x": "'a,b'"
    }  # fmt: skip
    with pytest.raises(ConfigError, match="'oops' is not key=value"):
        split_args_string("config=sparsezip_64,oops")


@pytest.mark.parametrize("model_args, message", [
    ("config=sparsezip_64,warmup=abc", "warmup must be a whole number >= 0, got 'abc'"),
    ("config=sparsezip_64,warmup=-2", "warmup must be a whole number >= 0, got '-2'"),
])  # fmt: skip
def test_own_arguments_name_the_key(model_args, message, tiny_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match=message):
        _build("llava_sparsezip", _config_only(tiny_checkpoint, tmp_path), model_args)


def test_nonexistent_pretrained_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        _build("llava_sparsezip", tmp_path / "not" / "here")


def test_float64_eager_is_refused_for_padded_batches_only(tiny_checkpoint, tmp_path):
    folder = _config_only(tiny_checkpoint, tmp_path)
    with pytest.raises(ConfigError, match="float64 with attn_implementation=eager gives NaN for left-padded rows"):
        _build("llava_hf_timed", folder, "dtype=float64,attn_implementation=eager", batch_size=4)
    with pytest.raises(OSError):  # batch 1 passes the checks and goes on to load (absent) weights
        _build("llava_hf_timed", folder, "dtype=float64,attn_implementation=eager", batch_size=1)


# --------------------------------------------------------------------------- config files


def test_base_cycle_through_dotdot_is_found(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("base: sub/../a.yaml\nmethod: visionzip\n")
    with pytest.raises(ConfigError, match="includes itself through 'base'"):
        load_config(str(tmp_path / "a.yaml"))


def test_invalid_utf8_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"method: visionzip\ndominant: 5\xff4\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not UTF-8 text"):
        load_config(str(path))


def test_config_files_use_the_same_dialect(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: visionzip_64\ndominant: 054\ncontextual: 010\n")
    config = load_config(str(path))
    assert (config.dominant, config.contextual) == (54, 10)


# --------------------------------------------------------------------------- requests


def _images(seed=0, sizes=((640, 480), (300, 500), (336, 336))):
    rng = random.Random(seed)
    return [_scene(rng, size) for size in sizes]


@pytest.mark.parametrize("model_id", ["llava_sparsezip", "llava_sparsevlm"])
def test_a_bad_image_fails_only_its_own_request(model_id, tiny_checkpoint):
    lmm = _build(model_id, tiny_checkpoint, "dtype=float64", batch_size=4)
    good = _images()
    docs = [([good[0]], "Is there a cat?"), ([None], "Is there a dog?"), ([good[1]], "Is it red?"), ([good[2]], "")]
    results = lmm.generate_until(make_requests(lmm, docs, GEN, task=f"fuzz_none_{model_id}"))
    records = [get_record(f"fuzz_none_{model_id}", "test", i) for i in range(4)]
    assert results[1].text == "" and "has no image" in records[1].error
    assert [r.error for i, r in enumerate(records) if i != 1] == [None, None, None]
    alone = _build(model_id, tiny_checkpoint, "dtype=float64")
    expected = [r.text for r in alone.generate_until(make_requests(alone, [docs[0], docs[2], docs[3]], GEN, task="fuzz_alone"))]
    assert [results[0].text, results[2].text, results[3].text] == expected


def test_prompts_past_the_position_limit_fail_with_a_clear_error(tiny_checkpoint, tmp_path):
    """With a 300-position LLM, the 576-token image does not fit; 64 compressed tokens do."""
    folder = _checkpoint_copy(tiny_checkpoint, tmp_path, **{"text_config.max_position_embeddings": 300})
    docs = [([_images()[0]], "Is there a cat?")]
    plain = _build("llava_hf_timed", folder, "dtype=float64")
    (result,) = plain.generate_until(make_requests(plain, docs, GEN, task="fuzz_long"))
    error = get_record("fuzz_long", "test", 0).error
    assert result.text == "" and "exceeds the LLM's position limit (max_position_embeddings=300)" in error
    small = _build("llava_visionzip", folder, "dtype=float64,config=visionzip_64")
    small.generate_until(make_requests(small, docs, GEN, task="fuzz_short"))
    assert get_record("fuzz_short", "test", 0).error is None


# --------------------------------------------------------------------------- a run with a failing request


def _broken_pope(root: Path) -> tuple[Path, str]:
    """Mini POPE with one row whose image is missing (None) and one whose bytes are not an image."""
    import datasets
    from datasets import Features, Image as ImageFeature, Value

    from sparsezip_lmms.demo.harness import write_local_tasks
    from sparsezip_lmms.demo.mini_datasets import pope_rows

    rows = pope_rows(6, 0)
    rows[2]["image"] = None
    rows[4]["image"] = {"bytes": b"this is not an image", "path": None}
    columns = {name: Value("string") for name in ("id", "question_id", "question", "answer", "image_source", "category")}
    features = Features({**columns, "image": ImageFeature()})
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows, features=features)}).save_to_disk(str(root / "data"))
    (name,) = write_local_tasks(root / "tasks", {"pope": root / "data"}, suffix="_broken")
    return root / "tasks", name


@pytest.mark.e2e
def test_failed_requests_reach_the_results_json_the_leaderboard_and_the_runner(tiny_checkpoint, tmp_path):
    from sparsezip_lmms.demo.harness import HarnessError, lmms_eval_command
    from sparsezip_lmms.leaderboard import collect, main as leaderboard_main, table

    from _inprocess import run_in_process

    include, task = _broken_pope(tmp_path)
    out = tmp_path / "out"
    cmd = lmms_eval_command(
        "llava_sparsezip", f"pretrained={tiny_checkpoint},config=sparsezip_64,dtype=float32", [task], out,
        include_path=include, batch_size=2, extra=["--gen_kwargs", "max_new_tokens=2"],
    )  # fmt: skip
    with pytest.raises(HarnessError) as info:
        run_in_process(cmd, out)
    assert "failed" in str(info.value)
    (results_path,) = out.rglob("*_results.json")  # the run itself completed: 4 answers, 2 failures
    metrics = {k.split(",")[0]: v for k, v in json.loads(results_path.read_text())["results"][task].items()}
    assert metrics["eff_failed"] == 2 and metrics["eff_record"] == 4
    assert metrics["eff_first_error"].startswith(f"ValueError('doc 2 of {task}/test cannot be read or made into a prompt")
    _, rows = table(collect([out]))
    (row,) = rows
    assert row["failed requests"] == 2 and row["notes"].startswith("FAILED: 2 requests")
    assert row["POPE timed n"] == 4
    assert leaderboard_main([str(out), "--out", str(tmp_path / "lb")]) == 0  # the table is written, marked


# --------------------------------------------------------------------------- leaderboard inputs


@pytest.mark.parametrize("content", [
    '{"config": null, "results": {}}',
    '{"config": {"model": "x"}, "results": [1, 2]}',
    "[1, 2, 3]",
    '"just a string"',
    "[" * 100000 + "]" * 100000,
    '{"config": {"model": "llava_sparsezip", "model_args": 5}, "results": {"pope_eff": {"pope_accuracy,none": "high"}}}',
    '{"config": {"model": "m", "model_args": "pretrained=a,,=,config"}, "results": {"pope_eff": 3}}',
])  # fmt: skip
def test_leaderboard_never_crashes_on_odd_json(content, tmp_path):
    from sparsezip_lmms.leaderboard import build, collect, table

    (tmp_path / "odd_results.json").write_text(content)
    (tmp_path / "bad_utf8_results.json").write_bytes(b'{"config": "\xff"}')
    rows = collect([tmp_path])
    _, cells = table(rows)
    assert len(cells) == 2 and all(c["notes"] for c in cells)  # each file is a noted row
    assert build([tmp_path], tmp_path / "lb").startswith("| model |")


def _results_file(path: Path, model: str, model_args: str, accuracy: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "config": {"model": model, "model_args": model_args},
        "results": {"pope_eff": {"pope_accuracy,none": accuracy, "eff_ttft_s,none": 1.0, "eff_timed,none": 7, "eff_failed,none": 0}},
    }))  # fmt: skip


def test_leaderboard_keys_rows_on_the_whole_config_checkpoint_and_dtype(tmp_path):
    from sparsezip_lmms.leaderboard import collect, table

    _results_file(tmp_path / "1_results.json", "llava_sparsevlm", "pretrained=/x/a/llava,config=sparsevlm_64,schedule=[66,30,17]", 0.1)
    _results_file(tmp_path / "2_results.json", "llava_sparsevlm", "pretrained=/x/a/llava,config=sparsevlm_64,schedule=[303,110,36]", 0.2)
    _results_file(tmp_path / "3_results.json", "llava_sparsevlm", "pretrained=/y/b/llava,config=sparsevlm_64,schedule=[66,30,17]", 0.3)
    _results_file(tmp_path / "4_results.json", "llava_sparsevlm", "pretrained=/x/a/llava,config=sparsevlm_64,schedule=[66,30,17],dtype=float16", 0.4)
    _, rows = table(collect([tmp_path]))
    keys = {(r["config"], r["checkpoint"], r["dtype"]): r["POPE acc"] for r in rows}
    assert keys == {
        ("sparsevlm_64,schedule=[66,30,17]", "/x/a/llava", "auto"): 0.1,
        ("sparsevlm_64,schedule=[303,110,36]", "/x/a/llava", "auto"): 0.2,
        ("sparsevlm_64,schedule=[66,30,17]", "/y/b/llava", "auto"): 0.3,
        ("sparsevlm_64,schedule=[66,30,17]", "/x/a/llava", "float16"): 0.4,
    }
    assert all(r["POPE timed n"] == 7 and r["failed requests"] == 0 for r in rows)


def test_leaderboard_of_a_missing_path_is_an_error(tmp_path, capsys):
    from sparsezip_lmms.leaderboard import main

    assert main([str(tmp_path / "nonexistent"), "--out", str(tmp_path / "lb")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "lb").exists()


# --------------------------------------------------------------------------- DivPrune / CDPruner inputs


def test_diversity_budgets_and_the_clip_text_tower_are_checked_before_weights_load(tiny_checkpoint, tmp_path):
    from sparsezip_lmms.demo.tiny_checkpoint import build_tiny_clip

    folder = _config_only(tiny_checkpoint, tmp_path)
    with pytest.raises(ConfigError, match="key 'keep': 576 is not below the 576 patches"):
        _build("llava_divprune", folder, "config=divprune_64,keep=576")
    narrow = build_tiny_clip(tmp_path / "narrow-clip", vision_width=32)
    with pytest.raises(ValueError, match="visual_projection takes 32-wide features, but the LLaVA vision tower is 64 wide"):
        _build("llava_cdpruner", folder, f"clip_text_tower={narrow}")
    with pytest.raises(ValueError, match="clip_text_tower=.*cannot be read"):
        _build("llava_cdpruner", folder, f"clip_text_tower={tmp_path / 'no-clip-here'}")
    with pytest.raises(ConfigError, match="clip_text_tower is read by cdpruner configs only"):
        _build("llava_divprune", folder, f"clip_text_tower={narrow}")


def test_cdpruner_long_and_empty_questions(tiny_checkpoint, tiny_clip):
    """A question past 77 CLIP tokens is cut into segments (as the official code does); an empty one
    falls back to diversity alone: answers, no NaN, no failed request."""
    lmm = _build("llava_cdpruner", tiny_checkpoint, f"dtype=float64,clip_text_tower={tiny_clip}", batch_size=3)
    long_question = "Is the red square on the left of the blue circle? " * 12
    docs = [([_images()[0]], long_question), ([_images()[1]], ""), ([_images()[2]], "Is there a cat?")]
    lmm.generate_until(make_requests(lmm, docs, GEN, task="fuzz_cdp"))
    records = [get_record("fuzz_cdp", "test", i) for i in range(3)]
    assert [r.error for r in records] == [None, None, None]
    assert [r.visual_tokens for r in records] == [64, 64, 64]
    segments = len(lmm._clip_text.tokenizer(long_question, verbose=False)["input_ids"]) // 77 + 1
    assert segments >= 2 and records[0].compression_flops > records[2].compression_flops  # more text tower work
