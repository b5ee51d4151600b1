"""Run the real lmms-eval CLI in a subprocess and read back what it wrote.

The lmms-eval CLI can print a traceback and still exit 0 (a model that fails to load, a dataset
that cannot be read, a request that fails), so success is judged by the results file and the log,
never by the exit code alone: a run that wrote no results, or logged an error or a traceback, raises
:class:`HarnessError` with those lines.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..paths import tasks_path

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


class HarnessError(RuntimeError):
    """lmms-eval did not produce a usable results file, or logged an error while producing it."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# lmms-eval's loguru format: "<time> | <LEVEL> | <module>:<function>:<line> - <message>"
_ERROR_LINE = re.compile(r"^\S+ \S+ \| (ERROR|CRITICAL)\s*\|")


def error_lines(log: str) -> list[str]:
    """The lines of an lmms-eval log that report a failure: ERROR/CRITICAL records and tracebacks."""
    found = []
    for line in _ANSI.sub("", log).splitlines():
        if _ERROR_LINE.match(line) or line.startswith("Traceback (most recent call last)"):
            found.append(line.rstrip())
    return found


@dataclass
class HarnessRun:
    results: dict  # the parsed *_results.json
    results_path: Path
    samples: dict[str, list[dict]]  # task -> rows of its *_samples_<task>.jsonl (when --log_samples)
    stdout: str


# Keys of a shipped task that a local task replaces because upstream reaches the hub with them: GQA's
# process_docs joins images from a second hub config; the mini GQA release carries its ``image`` column.
LOCAL_OVERRIDES: dict[str, dict[str, str]] = {
    "gqa": {"process_docs": "!function sparsezip_lmms.efficiency.task_hooks.add_request_keys"},
}


def write_local_tasks(
    out_dir: str | Path,
    data_dirs: dict[str, str | Path],
    suffix: str = "_mini",
    overrides: dict[str, dict[str, str]] | None = None,
) -> list[str]:
    """Task YAMLs that include the shipped ``<name>_eff`` tasks and read local DatasetDicts.

    ``data_dirs`` maps an upstream task name (``pope``, ``mme``, ``docvqa_val``, ``gqa``, ...) to a folder
    saved by ``DatasetDict.save_to_disk``. ``overrides`` ({task: {key: YAML value}}, added to
    :data:`LOCAL_OVERRIDES`) sets further keys of a task. Returns the new task names (``pope_eff_mini``, ...).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for base, data_dir in data_dirs.items():
        parent = tasks_path() / f"{base}_eff.yaml"
        if not parent.is_file():
            raise FileNotFoundError(f"no shipped task {parent.name} for {base!r}")
        name = f"{base}_eff{suffix}"
        extra = {**LOCAL_OVERRIDES.get(base, {}), **(overrides or {}).get(base, {})}
        (out / f"{name}.yaml").write_text(
            f"include: {parent}\n"
            f"task: {name}\n"
            f"dataset_path: {Path(data_dir).resolve()}\n"
            "dataset_kwargs:\n"
            "  load_from_disk: true\n"
            + "".join(f"{key}: {value}\n" for key, value in extra.items())
        )
        names.append(name)
    return names


def lmms_eval_command(
    model: str,
    model_args: str,
    tasks: list[str],
    output_path: str | Path,
    *,
    include_path: str | Path | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    log_samples: bool = True,
    launcher: list[str] | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    launcher = launcher or [sys.executable, "-m", "lmms_eval"]
    cmd = [
        *launcher,
        "--model", model,
        "--model_args", model_args,
        "--tasks", ",".join(tasks),
        "--batch_size", str(batch_size),
        "--device", device,
        "--output_path", str(output_path),
    ]  # fmt: skip
    if include_path is not None:
        cmd += ["--include_path", str(include_path)]
    if log_samples:
        cmd.append("--log_samples")
    return cmd + list(extra or [])


def run_lmms_eval(cmd: list[str], output_path: str | Path, *, timeout: float = 1800, env: dict | None = None) -> HarnessRun:
    """Run ``cmd`` (an lmms-eval command line) and return the results it wrote under ``output_path``."""
    started = time.time()
    full_env = {**os.environ, **OFFLINE_ENV, **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
    return read_run(cmd, output_path, proc.returncode, proc.stdout + proc.stderr, started)


def read_run(cmd: list[str], output_path: str | Path, returncode: int, log: str, started: float) -> HarnessRun:
    """The results an lmms-eval run of ``cmd`` wrote under ``output_path`` after ``started`` (a
    ``time.time()``), judged by its files and its log ``log``; raises :class:`HarnessError` when the run
    exited non-zero, wrote no results, logged an error, left a task without results or failed requests."""
    output_path = Path(output_path)
    candidates = [
        p for p in output_path.rglob("*_results.json")
        if p.stat().st_mtime >= started - 1 and "submissions" not in p.relative_to(output_path).parts
    ]  # lmms-eval's submissions/ folder holds tasks' own files (MMBench writes *_results.json there)
    errors = error_lines(log)
    if returncode != 0 or not candidates or errors:
        if returncode != 0:
            what = f"exited with {returncode}"
        elif not candidates:
            what = "wrote no results file"
        else:
            what = f"wrote {candidates[0].name} but logged {len(errors)} error line(s)"
        shown = "\n".join(errors[:20]) + (f"\n... ({len(errors) - 20} more)" if len(errors) > 20 else "")
        raise HarnessError(
            f"lmms-eval {what}" + (f":\n{shown}" if errors else "")
            + f"\ncommand: {' '.join(cmd)}\n--- output (last 6000 chars) ---\n{log[-6000:]}"
        )
    results_path = max(candidates, key=lambda p: p.stat().st_mtime)
    results = json.loads(results_path.read_text())
    stamp = results_path.name[: -len("_results.json")]
    samples = {}
    for path in results_path.parent.glob(f"{stamp}_samples_*.jsonl"):
        task = path.stem[len(f"{stamp}_samples_") :]
        samples[task] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    missing = [t for t in results.get("configs", {}) if t not in results.get("results", {})]
    if missing:
        raise HarnessError(f"tasks without results in {results_path}: {missing}\n{log[-4000:]}")
    failed = failed_requests(results)
    if failed:
        raise HarnessError(
            f"failed requests in {results_path}: "
            + "; ".join(f"{task}: {n} (first error: {error})" for task, (n, error) in failed.items())
        )
    return HarnessRun(results, results_path, samples, log)


def failed_requests(results: dict) -> dict[str, tuple[int, str | None]]:
    """{task: (failed requests, first error)} for the tasks of a results JSON that report failures
    (the ``*_eff`` tasks' ``eff_failed`` / ``eff_first_error`` metrics)."""
    out = {}
    for task, metrics in (results.get("results") or {}).items():
        flat = {str(k).split(",")[0]: v for k, v in metrics.items()} if isinstance(metrics, dict) else {}
        count = flat.get("eff_failed")
        if isinstance(count, (int, float)) and not isinstance(count, bool) and count > 0:
            out[task] = (int(count), flat.get("eff_first_error"))
    return out
