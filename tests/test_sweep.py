"""``python -m sparsezip_lmms sweep``: the plan (pure), resume markers, dry runs, and real lmms-eval runs
on the tiny checkpoint, including runs that fail although lmms-eval exits 0."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import shlex
import sys
import types
from pathlib import Path

import pytest

from sparsezip_lmms import sweep
from sparsezip_lmms.__main__ import main as cli_main
from sparsezip_lmms.demo.harness import HarnessError, HarnessRun
from sparsezip_lmms.paths import tasks_path
from sparsezip_lmms.sweep import (
    GridError,
    Run,
    completed_results,
    error_summary,
    parse_grid,
    plan_runs,
    run_folder_name,
    write_marker,
)

from _inprocess import run_in_process

SAFE_NAME = re.compile(r"^[A-Za-z0-9._=+-]+$")
FAST = ["--", "--limit", "2", "--gen_kwargs", "max_new_tokens=2"]  # after --: to every lmms-eval run


def _report_available() -> bool:
    try:
        if importlib.util.find_spec("sparsezip_lmms.analysis.report") is None:
            return False
    except ImportError:
        return False
    return hasattr(importlib.import_module("sparsezip_lmms.analysis.report"), "build_report")


# ---- pure: grid, plan, folder names, markers ---------------------------------------------------


def test_parse_grid_keeps_brackets_and_order():
    grid = parse_grid(["schedule=[66,30,17],[40,20,4]", "cross_beta=0,0.3,0.6", "alphas=(1,2)"])
    assert grid == {"schedule": ["[66,30,17]", "[40,20,4]"], "cross_beta": ["0", "0.3", "0.6"], "alphas": ["(1,2)"]}
    assert list(grid) == ["schedule", "cross_beta", "alphas"]
    assert parse_grid([]) == {}
    assert parse_grid(["cross_beta=0,0.3,0"]) == {"cross_beta": ["0", "0.3"]}


@pytest.mark.parametrize(
    "spec, says",
    [
        ("cross_beta", "not key=value"), ("=0,1", "not key=value"), ("cross_beta=", "empty value"),
        ("cross_beta=0,,1", "empty value"), ("cross_beta=0,", "empty value"), ("schedule=[66,30", "unbalanced"),
        ("schedule=66]", "unbalanced"), ("a b=1", "not a model_args key"), ("pretrained=x", "--pretrained"),
        ("config=sparsezip_64", "--configs"),
    ],
)  # fmt: skip
def test_parse_grid_rejects_malformed_specs(spec, says):
    with pytest.raises(GridError, match=re.escape(says)):
        parse_grid([spec])


def test_parse_grid_rejects_a_key_given_twice():
    with pytest.raises(GridError, match="already a grid key"):
        parse_grid(["cross_beta=0", "cross_beta=0.3"])


def test_malformed_grid_is_a_usage_error_naming_it(tmp_path, capsys):
    args = ["sweep", "--model", "llava_sparsezip", "--configs", "sparsezip_64", "--tasks", "pope_eff",
            "--pretrained", "x", "--out", str(tmp_path / "s"), "--dry-run", "--grid", "cross_beta"]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        cli_main(args)
    assert info.value.code == 2
    assert "--grid 'cross_beta' is not key=value" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_plan_is_configs_x_grid_x_tasks_in_that_order():
    grid = parse_grid(["schedule=[66,30,17],[40,20,4]", "cross_beta=0,0.3,0.6"])
    configs, tasks = ["sparsevlm_64", "confound/aware_before"], ["pope_eff", "mme_eff"]
    runs = plan_runs("llava_sparsevlm", configs, grid, tasks, "org/llava", "dtype=float16")
    assert len(runs) == 2 * 2 * 3 * 2
    assert [(r.config, r.overrides, r.task) for r in runs[:5]] == [
        ("sparsevlm_64", (("schedule", "[66,30,17]"), ("cross_beta", "0")), "pope_eff"),
        ("sparsevlm_64", (("schedule", "[66,30,17]"), ("cross_beta", "0")), "mme_eff"),
        ("sparsevlm_64", (("schedule", "[66,30,17]"), ("cross_beta", "0.3")), "pope_eff"),
        ("sparsevlm_64", (("schedule", "[66,30,17]"), ("cross_beta", "0.3")), "mme_eff"),
        ("sparsevlm_64", (("schedule", "[66,30,17]"), ("cross_beta", "0.6")), "pope_eff"),
    ]
    assert runs[12].config == "confound/aware_before"
    assert runs[0].model_args == "pretrained=org/llava,config=sparsevlm_64,schedule=[66,30,17],cross_beta=0,dtype=float16"
    from sparsezip_lmms.config import split_args_string

    assert split_args_string(runs[0].model_args)["schedule"] == "[66,30,17]"
    folders = [r.folder for r in runs]
    assert len({f.casefold() for f in folders}) == len(folders)
    assert all(SAFE_NAME.match(f) and len(f) < 200 for f in folders)
    assert runs[0].folder.startswith("llava_sparsevlm__sparsevlm_64__schedule=66-30-17__cross_beta=0__pope_eff")
    assert runs[12].folder.startswith("llava_sparsevlm__confound_aware_before__")


def test_plan_without_grid_has_one_cell_per_config_and_task():
    runs = plan_runs("llava_sparsezip", ["sparsezip_64"], {}, ["pope_eff"], "p")
    assert [(r.folder, r.model_args) for r in runs] == [("llava_sparsezip__sparsezip_64__pope_eff", "pretrained=p,config=sparsezip_64")]


def test_folder_names_stay_unique_when_characters_are_replaced():
    names = {
        run_folder_name("m", "c", (("k", "[1,2]"),), "t"),
        run_folder_name("m", "c", (("k", "(1,2)"),), "t"),
        run_folder_name("m", "c", (("k", "1-2"),), "t"),
        run_folder_name("m", "c", (("k", "1 2"),), "t"),
    }
    assert len(names) == 4 and all(SAFE_NAME.match(n) for n in names)
    assert run_folder_name("m", "c", (("k", "1-2"),), "t") == "m__c__k=1-2__t"  # nothing lost: no hash
    long = run_folder_name("m", "c", (("k", "9" * 400),), "t")
    assert len(long) < 200 and long != run_folder_name("m", "c", (("k", "9" * 401),), "t")
    # "a/b" and "a_b" read the same; the plan tells them apart
    runs = plan_runs("m", ["a/b", "a_b", "A_b"], {}, ["t"], "p")
    assert len({r.folder.casefold() for r in runs}) == 3


def test_marker_matches_only_the_same_run_with_its_results(tmp_path):
    run = Run("m", "c", (), "t", "pretrained=p,config=c", "m__c__t")
    results = tmp_path / "x_results.json"
    results.write_text("{}")
    write_marker(tmp_path, run, ["--limit", "2"], ["lmms-eval"], results)
    assert completed_results(tmp_path, run, ["--limit", "2"]) == results
    assert completed_results(tmp_path, run, ["--limit", "3"]) is None
    assert completed_results(tmp_path, Run("m", "c", (), "t", "pretrained=q,config=c", "m__c__t"), ["--limit", "2"]) is None
    results.unlink()
    assert completed_results(tmp_path, run, ["--limit", "2"]) is None
    (tmp_path / sweep.MARKER).write_text("{ not json")
    assert completed_results(tmp_path, run, ["--limit", "2"]) is None


def test_error_summary_keeps_the_logged_errors_not_the_log():
    message = (
        "lmms-eval wrote no results file:\n"
        "2026-01-01 00:00:00 | ERROR    | lmms_eval.__main__:cli_evaluate:614 - Error during evaluation: unknown config 'x'\n"
        "Traceback (most recent call last):\n"
        "command: python -m lmms_eval --model m\n--- output (last 6000 chars) ---\nINFO lots of lines\n"
    )
    assert error_summary(message) == [
        "lmms-eval wrote no results file:",
        "2026-01-01 00:00:00 | ERROR    | lmms_eval.__main__:cli_evaluate:614 - Error during evaluation: unknown config 'x'",
    ]
    bare = "lmms-eval exited with 1\ncommand: python -m lmms_eval\n--- output (last 6000 chars) ---\nstarting\n\nKilled\n"
    assert error_summary(bare) == ["lmms-eval exited with 1", "starting", "Killed"]


def test_dry_run_prints_launcher_commands_and_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep, "run_lmms_eval", lambda *a, **k: pytest.fail("a dry run ran lmms-eval"))
    out = tmp_path / "s"
    code = cli_main([
        "sweep", "--model", "llava_sparsevlm", "--configs", "sparsevlm_64", "--grid", "schedule=[66,30,17],[40,20,4]",
        "--tasks", "pope_eff,mme_eff", "--pretrained", "org/llava 7b", "--out", str(out), "--device", "cpu",
        "--launcher", "accelerate launch --num_processes 2", "--dry-run", "--no-baseline", "--", "--limit", "8",
    ])  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert all(line.startswith("accelerate launch --num_processes 2 -m lmms_eval ") for line in lines)
    commands = [shlex.split(line) for line in lines]
    model_args = [cmd[cmd.index("--model_args") + 1] for cmd in commands]
    assert model_args[0] == "pretrained=org/llava 7b,config=sparsevlm_64,schedule=[66,30,17]"
    assert model_args[2] == "pretrained=org/llava 7b,config=sparsevlm_64,schedule=[40,20,4]"
    for cmd in commands:
        assert cmd[cmd.index("--include_path") + 1] == str(tasks_path())  # the shipped *_eff tasks
        assert cmd[-2:] == ["--limit", "8"] and "--log_samples" in cmd
        assert "," not in cmd[cmd.index("--output_path") + 1]
    assert not out.exists()


def test_the_clip_text_tower_goes_to_the_configs_that_read_one(tmp_path, capsys):
    """The standard table in one sweep: llava_compressed runs every method; only CDPruner gets the tower."""
    code = cli_main([
        "sweep", "--model", "llava_compressed", "--configs", "visionzip_64,cdpruner_64,fastv_64", "--tasks", "gqa_eff",
        "--pretrained", "llava-hf/llava-1.5-7b-hf", "--out", str(tmp_path / "s"), "--device", "cpu", "--dry-run",
        "--clip-text-tower", "openai/clip-vit-large-patch14-336",
    ])  # fmt: skip
    assert code == 0
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    model_args = {cmd[cmd.index("--model") + 1] + ":" + cmd[cmd.index("--model_args") + 1] for cmd in commands}
    assert model_args == {
        "llava_hf_timed:pretrained=llava-hf/llava-1.5-7b-hf,config=keep_all",  # the baseline of the table
        "llava_compressed:pretrained=llava-hf/llava-1.5-7b-hf,config=visionzip_64",
        "llava_compressed:pretrained=llava-hf/llava-1.5-7b-hf,config=cdpruner_64,clip_text_tower=openai/clip-vit-large-patch14-336",
        "llava_compressed:pretrained=llava-hf/llava-1.5-7b-hf,config=fastv_64",
    }


def test_arguments_the_sweep_sets_cannot_come_after_the_separator(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        sweep.main(["--model", "m", "--configs", "c", "--tasks", "t", "--pretrained", "p", "--out", str(tmp_path),
                    "--dry-run", "--", "--output_path", "elsewhere"])  # fmt: skip
    assert info.value.code == 2 and "--output_path is set by the sweep" in capsys.readouterr().err


def _fake_lmms_eval(cmd, output_path, *, timeout):
    """Stands in for run_lmms_eval: a POPE results file, or the HarnessError of an unknown config."""
    model_args = cmd[cmd.index("--model_args") + 1]
    if "config=bad" in model_args:
        error = "2026-01-01 00:00:00 | ERROR    | lmms_eval.__main__:cli_evaluate:614 - unknown config 'bad'"
        raise HarnessError(f"lmms-eval wrote no results file:\n{error}\ncommand: x\n--- output ---\n{error}")
    path = Path(output_path) / "m" / "x_results.json"
    path.parent.mkdir(parents=True)
    results = {"pope_eff": {"pope_accuracy,none": 0.5, "eff_ttft_s,none": 0.1}}
    path.write_text(json.dumps({"results": results, "config": {"model": cmd[cmd.index("--model") + 1], "model_args": model_args}}))
    return HarnessRun(results, path, {}, "")


def test_a_failing_report_is_an_error_that_keeps_the_run_failures(tmp_path, capsys, monkeypatch):
    def broken_report(paths, out, title=None):
        raise RuntimeError("report exploded")

    monkeypatch.setattr(sweep, "run_lmms_eval", _fake_lmms_eval)
    if "sparsezip_lmms.analysis" not in sys.modules and importlib.util.find_spec("sparsezip_lmms.analysis") is None:
        monkeypatch.setitem(sys.modules, "sparsezip_lmms.analysis", types.ModuleType("sparsezip_lmms.analysis"))
    monkeypatch.setitem(sys.modules, "sparsezip_lmms.analysis.report", types.SimpleNamespace(build_report=broken_report))
    args = ["--model", "llava_sparsezip", "--configs", "good,bad", "--tasks", "pope_eff", "--pretrained", "p",
            "--out", str(tmp_path), "--device", "cpu", "--no-baseline"]  # fmt: skip
    assert sweep.main(args) == 1
    captured = capsys.readouterr()
    assert "llava_sparsezip:good" in captured.out  # the leaderboard is printed (the terminal view)
    assert "error: sweep: report: RuntimeError: report exploded" in captured.err
    assert "1 of 2 runs FAILED" in captured.err and "unknown config 'bad'" in captured.err
    assert captured.err.index("report exploded") < captured.err.index("runs FAILED")  # the list comes last
    # the good run is done: a second sweep skips it and retries the failed one
    assert sweep.main(args) == 1
    assert "[1/2] skip llava_sparsezip__good__pope_eff\n[2/2] run llava_sparsezip__bad__pope_eff" in capsys.readouterr().out


# ---- real lmms-eval runs ---------------------------------------------------------------------


def _sweep_args(out, checkpoint, include, task, configs, *more):
    return [
        "sweep", "--model", "llava_sparsezip", "--configs", configs, "--tasks", task, "--pretrained", str(checkpoint),
        "--out", str(out), "--device", "cpu", "--model-args", "dtype=float32", "--include-path", str(include), "--no-baseline",
        *more, *FAST,
    ]  # fmt: skip


GOOD = ["llava_sparsezip__sparsezip_64__cross_beta=0__pope_eff_mini", "llava_sparsezip__sparsezip_64__cross_beta=0.3__pope_eff_mini"]
BAD = ["llava_sparsezip__no_such_config__cross_beta=0__pope_eff_mini", "llava_sparsezip__no_such_config__cross_beta=0.3__pope_eff_mini"]


@pytest.fixture(scope="module")
def mixed_sweep(tmp_path_factory, tiny_checkpoint, mini_tasks):
    """A sweep of a good and an unknown config over cross_beta=0,0.3 on mini POPE: (folder, exit code, stdout, stderr).
    Each run is lmms-eval's entry point in this process (the harness's subprocess is tested with the demo)."""
    include, names = mini_tasks
    out = tmp_path_factory.mktemp("sweep") / "s"
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        patch.setattr(sweep, "run_lmms_eval", run_in_process)
        code = cli_main(_sweep_args(out, tiny_checkpoint, include, names["pope"], "sparsezip_64,no_such_config",
                                    "--grid", "cross_beta=0,0.3", "--no-report"))  # fmt: skip
    return out, code, stdout.getvalue(), stderr.getvalue()


@pytest.mark.e2e
def test_sweep_lists_failed_runs_and_resumes(mixed_sweep, tiny_checkpoint, mini_tasks, capsys, monkeypatch):
    out, code, printed, errors = mixed_sweep
    assert code == 1, printed + errors
    for i, folder in enumerate(GOOD + BAD, 1):
        status = "run" if folder in GOOD else "FAILED"
        assert f"[{i}/4] {status} {folder}" in printed
    assert "2 of 4 runs FAILED" in errors
    assert all(folder in errors for folder in BAD) and not any(f"  {folder}\n" in errors for folder in GOOD)
    assert "unknown config 'no_such_config'" in errors

    failures = json.loads((out / "sweep_failures.json").read_text())
    assert [f["folder"] for f in failures] == BAD
    assert all("config=no_such_config" in f["model_args"] and f["task"] == mini_tasks[1]["pope"] for f in failures)
    assert all(any("unknown config 'no_such_config'" in line for line in f["error"]) for f in failures)
    plan = json.loads((out / "sweep.json").read_text())
    assert [(r["folder"], r["status"]) for r in plan["runs"]] == [(f, "ran") for f in GOOD] + [(f, "failed") for f in BAD]

    results = {}
    for folder in GOOD:
        marker = json.loads((out / "runs" / folder / "sweep_run.json").read_text())
        assert marker["model"] == "llava_sparsezip" and marker["extra"] == FAST[1:]
        assert Path(marker["results"]).is_file() and Path(marker["results"]).is_relative_to(out / "runs" / folder)
        results[folder] = (marker["results"], Path(marker["results"]).stat().st_mtime_ns)
    for folder in BAD:
        assert not (out / "runs" / folder / "sweep_run.json").exists()
    board = (out / "leaderboard" / "leaderboard.md").read_text()
    rows = [line.split(" | ")[1] for line in board.splitlines() if line.startswith("| llava_sparsezip |")]
    assert sorted(rows) == ["sparsezip_64,cross_beta=0", "sparsezip_64,cross_beta=0.3"]
    assert not (out / "report.html").exists()

    # the same sweep with the good config only: both runs are skipped, lmms-eval is not started
    monkeypatch.setattr(sweep, "run_lmms_eval", lambda *a, **k: pytest.fail("a completed run was run again"))
    include, names = mini_tasks
    code = cli_main(_sweep_args(out, tiny_checkpoint, include, names["pope"], "sparsezip_64", "--grid", "cross_beta=0,0.3", "--no-report"))
    printed = capsys.readouterr().out
    assert code == 0
    assert f"[1/2] skip {GOOD[0]}" in printed and f"[2/2] skip {GOOD[1]}" in printed
    for path, mtime in results.values():
        assert Path(path).stat().st_mtime_ns == mtime
    assert json.loads((out / "sweep_failures.json").read_text()) == []
    assert [r["status"] for r in json.loads((out / "sweep.json").read_text())["runs"]] == ["skipped", "skipped"]


@pytest.mark.e2e
def test_missing_checkpoint_is_a_failed_run(tmp_path, mini_tasks, capsys, monkeypatch):
    monkeypatch.setattr(sweep, "run_lmms_eval", run_in_process)
    include, names = mini_tasks
    out = tmp_path / "s"
    assert cli_main(_sweep_args(out, "/nonexistent/path", include, names["pope"], "sparsezip_64", "--no-report")) == 1
    captured = capsys.readouterr()
    assert "[1/1] FAILED llava_sparsezip__sparsezip_64__pope_eff_mini" in captured.out
    assert "1 of 1 runs FAILED" in captured.err and "/nonexistent/path" in captured.err
    assert "no results file" in captured.err
    (failure,) = json.loads((out / "sweep_failures.json").read_text())
    assert any("no such folder" in line for line in failure["error"])
    assert not (out / "leaderboard").exists() and not (out / "runs" / failure["folder"] / "sweep_run.json").exists()


@pytest.mark.e2e
@pytest.mark.skipif(not _report_available(), reason="sparsezip_lmms.analysis.report.build_report is not available")
def test_sweep_writes_the_html_report(mixed_sweep, tiny_checkpoint, mini_tasks, capsys):
    out = mixed_sweep[0]
    include, names = mini_tasks
    code = cli_main(_sweep_args(out, tiny_checkpoint, include, names["pope"], "sparsezip_64", "--grid", "cross_beta=0,0.3"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (out / "report.html").is_file() and (out / "report.html").stat().st_size > 0


def test_resume_needs_the_same_setting_and_task_data(tmp_path):
    """The same task name under another --include_path (other data), another batch size: not the run
    that completed; the reason names what differs. The same setting resumes."""
    from sparsezip_lmms.run_identity import run_identity
    from sparsezip_lmms.sweep import rerun_reason

    for name, data in (("a", "/data/pope_a"), ("b", "/data/pope_b")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "base.yaml").write_text("dataset_path: lmms-lab/POPE\ntest_split: test\nprocess_results: !function utils.x\n")
        (tmp_path / name / "mini.yaml").write_text(f"include: base.yaml\ntask: pope_mini\ndataset_path: {data}\n")
    run = Run("m", "c", (), "pope_mini", "pretrained=p,config=c", "m__c__t")
    results = tmp_path / "x_results.json"
    results.write_text("{}")

    def command(batch):
        return ["python", "-m", "lmms_eval", "--tasks", "pope_mini", "--batch_size", batch, "--output_path", str(tmp_path / "o")]

    first = run_identity(command("4"), "pope_mini", tmp_path / "a")
    assert first["data"]["dataset_path"] == "/data/pope_a" and first["data"]["test_split"] == "test"
    write_marker(tmp_path, run, [], command("4"), results, first)
    assert rerun_reason(tmp_path, run, [], run_identity(command("4"), "pope_mini", tmp_path / "a")) is None
    other_data = rerun_reason(tmp_path, run, [], run_identity(command("4"), "pope_mini", tmp_path / "b"))
    assert "task data dataset_path: '/data/pope_a' -> '/data/pope_b'" in other_data
    other_batch = rerun_reason(tmp_path, run, [], run_identity(command("8"), "pope_mini", tmp_path / "a"))
    assert other_batch == "command: 4 -> 8"
    assert completed_results(tmp_path, run, [], run_identity(command("8"), "pope_mini", tmp_path / "a")) is None
    assert completed_results(tmp_path, run, [], first) == results


def test_the_baseline_runs_first_with_the_sweeps_model_settings(tmp_path, capsys, monkeypatch):
    """By default every task also gets llava_hf_timed keep_all, with the sweep's dtype and attention but not
    its config overrides; a sweep of keep_all itself does not run it twice."""
    monkeypatch.setattr(sweep, "run_lmms_eval", lambda *a, **k: pytest.fail("a dry run ran lmms-eval"))
    base = ["sweep", "--pretrained", "org/m", "--out", str(tmp_path / "s"), "--device", "cpu", "--dry-run"]
    assert cli_main([*base, "--model", "llava_sparsezip", "--configs", "sparsezip_64", "--tasks", "pope_eff,mme_eff",
                     "--model-args", "dtype=float16,attn_implementation=eager,merging.contextual_num=16"]) == 0  # fmt: skip
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    models = [cmd[cmd.index("--model") + 1] for cmd in commands]
    assert models == ["llava_hf_timed", "llava_hf_timed", "llava_sparsezip", "llava_sparsezip"]
    assert commands[0][commands[0].index("--model_args") + 1] == "pretrained=org/m,config=keep_all,dtype=float16,attn_implementation=eager"
    assert cli_main([*base, "--model", "llava_hf_timed", "--configs", "keep_all", "--tasks", "pope_eff"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
