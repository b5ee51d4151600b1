"""Sweep: one lmms-eval run per config x grid cell x task, resumable, then the leaderboard and report.

    python -m sparsezip_lmms sweep --model llava_sparsezip --configs sparsezip_64,sparsezip_128 \\
        --grid cross_beta=0,0.3,0.6 --tasks pope_eff,mme_eff \\
        --pretrained llava-hf/llava-1.5-7b-hf --out sweeps/cross_beta --batch-size 8 \\
        --launcher "accelerate launch --num_processes 4" -- --limit 500

Runs are every config of ``--configs`` x every combination of the ``--grid`` values x every task
of ``--tasks``; each is one lmms-eval invocation (``--model_args pretrained=P,config=C,key=value,...``)
into its own folder ``OUT/runs/<model>__<config>[__key=value...]__<task>/``. Grid values are split on
commas outside brackets (``--grid schedule=[66,30,17],[40,20,4]`` is two values); several ``--grid``
flags combine as a product. Arguments after ``--`` go to every lmms-eval command unchanged.
Without ``--include-path`` lmms-eval's ``--include_path`` is this package's task folder (the
``*_eff`` tasks); ``--launcher`` replaces ``python`` in ``python -m lmms_eval`` (accelerate's data
parallelism over several GPUs, as above); ``--dry-run`` prints the commands and runs nothing.

A run that succeeded writes ``sweep_run.json`` in its folder and is skipped by a later sweep with the
same model, model_args, task and extra arguments while its results file exists. A run that failed
(lmms-eval exits 0 even then: it is judged by its results file and log) is listed at the end and in
``OUT/sweep_failures.json``, the sweep goes on with the next run and exits with code 1.
``OUT/sweep.json`` records the plan and each run's status. Finally the leaderboard of ``OUT/runs``
is written to ``OUT/leaderboard/``, the paper table to ``OUT/paper_table/`` and the HTML report to ``OUT/report.html``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .demo.harness import HarnessError, error_lines, lmms_eval_command, run_lmms_eval
from .run_identity import differences, run_identity, task_data

MARKER = "sweep_run.json"
_SET_BY_FLAGS = {"pretrained", "config"}  # model_args keys the sweep's own flags set
# lmms-eval options every run's command sets; they cannot be given again after ``--``
_SET_BY_SWEEP = {"--model", "--model_args", "--tasks", "--batch_size", "--device", "--output_path", "--include_path"}
_BRACKETS = re.compile(r"[\[\](){}\"']")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")
_MAX_NAME = 150  # folder names stay well under the usual 255-byte limit
_SUMMARY_LINES = 6
_SUMMARY_WIDTH = 300


class GridError(ValueError):
    """A ``--grid`` specification that is not ``key=value[,value...]``."""


def split_values(text: str) -> list[str]:
    """``a,[1,2],b`` -> ``["a", "[1,2]", "b"]``: commas inside brackets or quotes do not split."""
    from .config import ConfigError, split_top_level

    try:
        return split_top_level(text, strict=True)
    except ConfigError as err:
        raise GridError(str(err)) from None


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """``["cross_beta=0,0.3", "schedule=[66,30,17],[40,20,4]"]`` -> {key: values}, in the order given."""
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, rest = spec.partition("=")
        key = key.strip()
        if not sep or not key:
            raise GridError(f"--grid {spec!r} is not key=value[,value...]")
        if re.search(r"[\s,=\[\]]", key):
            raise GridError(f"--grid {spec!r}: {key!r} is not a model_args key")
        if key in _SET_BY_FLAGS:
            raise GridError(f"--grid {spec!r}: {key} is set by --{key if key == 'pretrained' else 'configs'}")
        if key in grid:
            raise GridError(f"--grid {spec!r}: {key} is already a grid key")
        values = split_values(rest)
        if not rest.strip() or any(not v for v in values):
            raise GridError(f"--grid {spec!r} has an empty value")
        grid[key] = list(dict.fromkeys(values))  # a value given twice is one run
    return grid


def grid_cells(grid: dict[str, list[str]]) -> list[tuple[tuple[str, str], ...]]:
    """Every combination of the grid's values, as ((key, value), ...); one empty cell without a grid."""
    return [tuple(zip(grid, values)) for values in itertools.product(*grid.values())]


def _digest(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:8]


def run_folder_name(model: str, config: str, overrides: tuple[tuple[str, str], ...], task: str) -> str:
    """``<model>__<config, / as _>[__key=value...]__<task>``, filesystem-safe and without commas.

    Brackets and quotes are dropped and other characters than letters, digits and ``. _ = + -`` become
    ``-`` (``schedule=[66,30,17]`` -> ``schedule=66-30-17``); a name that lost characters that way (or
    is too long) ends with a hash of the run, so different runs keep different folders.
    """
    parts = [model, config.replace("/", "_"), *(f"{k}={v}" for k, v in overrides), task]
    safe = [_UNSAFE.sub("-", _BRACKETS.sub("", part)) for part in parts]
    name = "__".join(safe)
    if safe != parts or len(name) > _MAX_NAME:
        name = f"{name[:_MAX_NAME]}-{_digest(model, config, *(f'{k}={v}' for k, v in overrides), task)}"
    return name


@dataclass(frozen=True)
class Run:
    """One cell of a sweep: one lmms-eval invocation of one model id, config + overrides, and task."""

    model: str
    config: str
    overrides: tuple[tuple[str, str], ...]
    task: str
    model_args: str
    folder: str


def plan_runs(
    model: str,
    configs: list[str],
    grid: dict[str, list[str]],
    tasks: list[str],
    pretrained: str,
    extra_model_args: str = "",
) -> list[Run]:
    """Every config x grid cell x task, in that nesting order, each with its model_args and folder."""
    runs = []
    for config in configs:
        for cell in grid_cells(grid):
            model_args = ",".join([f"pretrained={pretrained}", f"config={config}", *(f"{k}={v}" for k, v in cell)])
            if extra_model_args:
                model_args += f",{extra_model_args}"
            for task in tasks:
                runs.append(Run(model, config, cell, task, model_args, run_folder_name(model, config, cell, task)))
    # folders that still coincide (configs "a/b" and "a_b"; case-insensitive filesystems) get a hash
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.folder.casefold()] = seen.get(run.folder.casefold(), 0) + 1
    return [
        replace(run, folder=f"{run.folder}-{_digest(run.model, run.config, *map('='.join, run.overrides), run.task)}")
        if seen[run.folder.casefold()] > 1
        else run
        for run in runs
    ]


def _marker_identity(model: str, model_args: str, task: str, extra: list[str]) -> dict[str, Any]:
    return {"model": model, "model_args": model_args, "task": task, "extra": list(extra)}


def _recorded(run_dir: Path) -> tuple[dict[str, Any], Any, Path] | None:
    try:
        marker = json.loads((run_dir / MARKER).read_text())
        recorded = {key: marker[key] for key in ("model", "model_args", "task", "extra")}
        return recorded, marker.get("setting"), Path(marker["results"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _judge(run_dir: Path, run: Run, extra: list[str], setting: dict[str, Any] | None) -> tuple[str | None, Path | None]:
    """(why an earlier run in ``run_dir`` does not count as this one, or None; its results file when it
    does), from one read of its ``sweep_run.json``."""
    found = _recorded(run_dir)
    if found is None:
        return ("not run yet" if not (run_dir / MARKER).exists() else "its sweep_run.json is unreadable"), None
    recorded, recorded_setting, results = found
    current = _marker_identity(run.model, run.model_args, run.task, extra)
    changed = [f"{key}: {recorded[key]!r} -> {current[key]!r}" for key in current if recorded[key] != current[key]]
    if setting is not None:
        changed += differences(recorded_setting, setting)
    if changed:
        return "; ".join(changed), None
    if not results.is_file():
        return f"its results file {results} is gone", None
    return None, results


def rerun_reason(run_dir: Path, run: Run, extra: list[str], setting: dict[str, Any] | None = None) -> str | None:
    """Why an earlier run in ``run_dir`` does not count as this one (None: it does, resume it).
    ``setting``: ``run_identity.run_identity`` of the new command (include path, batch size, device,
    the task's data, lmms-eval version); without it only model, model_args, task and extra arguments count."""
    return _judge(run_dir, run, extra, setting)[0]


def completed_results(run_dir: Path, run: Run, extra: list[str], setting: dict[str, Any] | None = None) -> Path | None:
    """The results file of an earlier successful run of exactly this run (same identity), or None."""
    return _judge(run_dir, run, extra, setting)[1]


def write_marker(
    run_dir: Path, run: Run, extra: list[str], cmd: list[str], results: Path, setting: dict[str, Any] | None = None
) -> None:
    """Record a successful run in ``run_dir/sweep_run.json`` (what :func:`completed_results` checks)."""
    marker = {
        **_marker_identity(run.model, run.model_args, run.task, extra),
        "setting": setting,
        "command": cmd,
        "results": str(results),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (run_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def error_summary(message: str) -> list[str]:
    """The first meaningful lines of a failed run's error (a :class:`HarnessError` message): what went
    wrong and the errors it logged, or, when it logged none, the last lines of its output."""
    first, _, rest = message.strip().partition("\n")
    logged = [line.strip() for line in error_lines(rest) if not line.startswith("Traceback (most recent call last)")]
    lines = [first, *dict.fromkeys(logged)]  # the log tail repeats the lines quoted above it
    if not logged:
        output = rest.partition("\n--- output")[2].partition("\n")[2] or rest
        lines += [line.strip() for line in output.splitlines() if line.strip()][-3:]
    return [line if len(line) <= _SUMMARY_WIDTH else line[: _SUMMARY_WIDTH - 3] + "..." for line in lines[:_SUMMARY_LINES]]


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sparsezip_lmms sweep",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Arguments after -- are passed to every lmms-eval command (e.g. -- --limit 100).",
    )
    parser.add_argument("--model", required=True, help="lmms-eval model id, e.g. llava_sparsezip (required)")
    parser.add_argument("--configs", default=None, help="comma-separated config names or YAML paths (default: the model id's default config)")
    parser.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2",
        help="override values to sweep (commas inside brackets do not split); repeat for a product (default: no grid)",
    )  # fmt: skip
    parser.add_argument("--tasks", required=True, help="comma-separated lmms-eval tasks, one run each (required)")
    parser.add_argument("--pretrained", required=True, help="llava-hf checkpoint: a hub id or a local folder (required)")
    parser.add_argument("--out", required=True, help="sweep folder: runs/, leaderboard/, report.html, sweep.json (required)")
    parser.add_argument("--batch-size", type=int, default=1, help="lmms-eval --batch_size of every run (default: %(default)s)")
    parser.add_argument("--batch_size", dest="batch_size", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # lmms-eval's spelling
    parser.add_argument("--device", default=None, help="lmms-eval --device of every run (default: cuda when available, else cpu)")
    parser.add_argument("--clip-text-tower", default=None, help="CLIP checkpoint for the configs that read one (CDPruner), e.g. "
                        "openai/clip-vit-large-patch14-336; the other runs do not get it (default: none)")
    parser.add_argument("--model-args", default="", help="extra model_args appended to every run, e.g. dtype=float16,warmup=8 (default: none)")
    parser.add_argument("--model_args", dest="model_args", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # lmms-eval's spelling
    parser.add_argument("--include-path", default=None, help="lmms-eval --include_path (default: this package's task folder)")
    parser.add_argument("--include_path", dest="include_path", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # lmms-eval's spelling
    parser.add_argument(
        "--launcher", default=None,
        help='replaces python in "python -m lmms_eval", e.g. "accelerate launch --num_processes 4" (default: python)',
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=43200, help="seconds one run may take (default: %(default)g)")
    parser.add_argument(
        "--baseline", action=argparse.BooleanOptionalAction, default=True,
        help="also run the uncompressed keep_all (llava_hf_timed, or qwen2_5_vl_hf_timed for Qwen ids) on every task, with the same checkpoint, batch size, "
        "device and model settings, so the leaderboard has the row every retention and speed-up is relative to "
        "(default: on; --no-baseline skips it)",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the commands and run nothing (default: run them)")
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report (default: write OUT/report.html)")
    return parser


def _split_list(text: str) -> list[str]:
    """``a, b,,a`` -> ``["a", "b"]``: the comma-separated items, each once."""
    return list(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def execute(
    runs: list[Run], commands: list[list[str]], extra: list[str], out: Path, timeout: float, plan: dict[str, Any],
    include_path: str | Path | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run (or skip, when completed earlier) every run into ``out/runs/<folder>``.

    Returns (one entry per run with its status ``ran``/``skipped``/``failed``, the failures with their errors).

    ``out/sweep.json`` (``plan`` plus each run's status) and ``out/sweep_failures.json`` are rewritten
    after every run, so they describe the sweep while it is under way.
    """
    entries = [
        {"folder": run.folder, "model": run.model, "model_args": run.model_args, "task": run.task,
         "command": cmd, "status": "pending", "error": None, "results": None}
        for run, cmd in zip(runs, commands)
    ]  # fmt: skip
    failures: list[dict[str, Any]] = []
    (out / "runs").mkdir(parents=True, exist_ok=True)
    _write_json(out / "sweep.json", {**plan, "runs": entries})
    _write_json(out / "sweep_failures.json", failures)
    data_of: dict[str, dict[str, Any]] = {}
    for i, (run, cmd, entry) in enumerate(zip(runs, commands, entries), 1):
        tag, run_dir = f"[{i}/{len(runs)}]", out / "runs" / run.folder
        if run.task not in data_of:  # one task's data is read once per sweep, not once per run
            data_of[run.task] = task_data(run.task, include_path)
        setting = run_identity(cmd, run.task, include_path, data_of[run.task])
        reason, done = _judge(run_dir, run, extra, setting)
        if reason is None:
            print(f"{tag} skip {run.folder}", flush=True)  # completed earlier with the same setting
            entry.update(status="skipped", results=str(done))
        else:
            again = "" if reason == "not run yet" else f" (again: {reason})"
            print(f"{tag} run {run.folder}{again}", flush=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            try:
                result = run_lmms_eval(cmd, run_dir, timeout=timeout)
            except (HarnessError, subprocess.TimeoutExpired, OSError) as err:
                summary = error_summary(str(err)) if isinstance(err, HarnessError) else [f"{type(err).__name__}: {err}"]
                print(f"{tag} FAILED {run.folder}", flush=True)
                entry.update(status="failed", error="\n".join(summary))
                failures.append({"folder": run.folder, "model": run.model, "model_args": run.model_args,
                                 "task": run.task, "command": cmd, "error": summary, "message": str(err)})  # fmt: skip
            else:
                write_marker(run_dir, run, extra, cmd, result.results_path, setting)
                entry.update(status="ran", results=str(result.results_path))
        _write_json(out / "sweep.json", {**plan, "runs": entries})
        _write_json(out / "sweep_failures.json", failures)
    return entries, failures


def write_tables(out: Path, title: str, report: bool) -> list[str]:
    """Write (and print) the leaderboard of ``out/runs``, then the HTML report; returns the problems met."""
    if not any((out / "runs").rglob("*_results.json")):
        return [f"no results file under {out / 'runs'}: no leaderboard"]
    problems = []
    try:
        from .leaderboard import build

        print("\n" + build([out / "runs"], out / "leaderboard", title=title, terminal=True))
        print(f"\nleaderboard: {out / 'leaderboard'}/leaderboard.{{md,csv}}, leaderboard_pareto.png")
    except Exception as err:  # noqa: BLE001 - reported, never hiding the runs' own failures
        problems.append(f"leaderboard: {type(err).__name__}: {err}")
    try:  # the paper table is derived: a table that cannot be computed (e.g. --no-baseline) is a note
        from .paper.render import write as write_paper_table
        from .paper.table import TableError, build as build_paper_table

        paths = write_paper_table(build_paper_table([out / "runs"]), out / "paper_table", title=title)
        print(f"paper table: {paths['md']} (.csv, .tex)")
    except TableError as err:
        print("note: no paper table: " + "; ".join(err.problems), file=sys.stderr)
    if report:
        try:
            from .analysis.report import build_report

            build_report([out / "runs"], out / "report.html", title=title)
            print(f"report: {out / 'report.html'}")
        except Exception as err:  # noqa: BLE001 - as above
            problems.append(f"report: {type(err).__name__}: {err}")
    return problems


def _print_failures(failures: list[dict[str, Any]], total: int, out: Path) -> None:
    print(f"\nerror: sweep: {len(failures)} of {total} runs FAILED (also in {out / 'sweep_failures.json'}):", file=sys.stderr)
    for failure in failures:
        print(f"  {failure['folder']}\n    task {failure['task']}, model_args {failure['model_args']}", file=sys.stderr)
        for line in failure["error"]:
            print(f"    {line}", file=sys.stderr)


BASELINE_CONFIG = "keep_all"
# model settings a baseline run shares with the sweep's runs (the others in --model-args override the method)
_BASELINE_SHARED = ("dtype", "attn_implementation", "warmup", "log_selection", "device_map", "min_pixels", "max_pixels")


def baseline_runs(tasks: list[str], pretrained: str, extra_model_args: str, runs: list[Run], model: str = "llava_hf_timed") -> list[Run]:
    """The uncompressed run of every task (``llava_hf_timed`` ``keep_all``), with the sweep's model settings
    (dtype, attention, warm-up ...), unless the sweep already has it."""
    from .config import split_args_string

    shared = {k: v for k, v in split_args_string(extra_model_args).items() if k in _BASELINE_SHARED}
    have = {(r.model, r.config, r.task) for r in runs if not r.overrides}
    from .leaderboard import baseline_of

    planned = plan_runs(baseline_of(model), [BASELINE_CONFIG], {}, tasks, pretrained, ",".join(f"{k}={v}" for k, v in shared.items()))
    return [r for r in planned if (r.model, r.config, r.task) not in have]


def _reads_clip_text(config: str) -> bool:
    """True when the config's method reads a CLIP text tower (CDPruner); False where it does not load."""
    from .config import ConfigError, load_config
    from .methods.registry import method_of

    try:
        loaded = load_config(config)
    except (ConfigError, OSError):
        return False  # the run itself reports the bad config
    return method_of(loaded).needs("clip_text", loaded)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = _parser()
    args = parser.parse_args(own)

    try:
        grid = parse_grid(args.grid)
    except GridError as err:
        parser.error(str(err))
    tasks = _split_list(args.tasks)
    if not tasks:
        parser.error("--tasks names no task")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    taken = sorted({a.split("=", 1)[0] for a in extra} & _SET_BY_SWEEP)
    if taken:
        parser.error(f"after --: {', '.join(taken)} is set by the sweep itself")
    from .config import ConfigError, split_args_string

    try:
        clash = sorted(set(split_args_string(args.model_args)) & (_SET_BY_FLAGS | set(grid)))
    except ConfigError as err:
        parser.error(f"--model-args: {err}")
    if clash:
        parser.error(f"--model-args sets {', '.join(clash)}, which --pretrained/--configs/--grid set")
    launcher = None
    if args.launcher is not None:
        try:
            launcher = shlex.split(args.launcher) + ["-m", "lmms_eval"]
        except ValueError as err:
            parser.error(f"--launcher {args.launcher!r}: {err}")
        if len(launcher) == 2:
            parser.error("--launcher is empty")
    if args.configs is None:
        from .models.base import class_default_config

        try:
            configs = [class_default_config(args.model)]
        except Exception as err:  # noqa: BLE001 - lmms-eval's registry raises several kinds
            parser.error(f"--model {args.model}: no default config ({err}); give --configs")
    else:
        configs = _split_list(args.configs)
        if not configs:
            parser.error("--configs names no config")
    out = Path(args.out).resolve()
    if "," in str(out):
        parser.error(f"--out {out}: lmms-eval splits paths on commas; choose a folder without one")
    if args.include_path is not None:
        include_path = Path(args.include_path).resolve()
    else:
        from .paths import tasks_path

        include_path = tasks_path()
    device = args.device or _default_device()

    runs = plan_runs(args.model, configs, grid, tasks, args.pretrained, args.model_args.strip().strip(","))
    if args.clip_text_tower:  # CDPruner's text tower, given to the runs whose config reads it
        runs = [replace(r, model_args=f"{r.model_args},clip_text_tower={args.clip_text_tower}") if _reads_clip_text(r.config) else r
                for r in runs]  # fmt: skip
    if args.baseline:
        runs = baseline_runs(tasks, args.pretrained, args.model_args.strip().strip(","), runs, args.model) + runs
    commands = [
        lmms_eval_command(
            run.model, run.model_args, [run.task], out / "runs" / run.folder,
            include_path=include_path, batch_size=args.batch_size, device=device,
            log_samples=True, launcher=launcher, extra=extra,
        )
        for run in runs
    ]  # fmt: skip
    if args.dry_run:
        for cmd in commands:
            print(shlex.join(cmd))
        return 0

    plan = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": args.model, "pretrained": args.pretrained, "configs": configs, "grid": grid, "tasks": tasks,
        "extra": extra,
    }  # fmt: skip
    entries, failures = execute(runs, commands, extra, out, args.timeout, plan, include_path)
    problems = write_tables(out, f"sweep of {args.model} on {args.pretrained}: {', '.join(tasks)}", not args.no_report)
    for problem in problems:
        print(f"error: sweep: {problem}", file=sys.stderr)
    if failures:
        _print_failures(failures, len(runs), out)
    statuses = [entry["status"] for entry in entries]
    print(f"\nsweep: {statuses.count('ran')} ran, {statuses.count('skipped')} skipped, {len(failures)} failed; {out / 'sweep.json'}")
    return 1 if failures or problems else 0
