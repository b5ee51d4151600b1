"""What makes two lmms-eval runs "the same run": the command's setting and the task's data.

``sweep`` resumes a run only when its recorded identity equals the new one, and says which fields
differ when it runs it again; the leaderboard compares rows only within one checkpoint, dtype, batch
size and ``--limit`` (``leaderboard.Row.setting``). The identity of a run:

* model id and ``--model_args`` (checkpoint, config, overrides, dtype, attention implementation);
* the task name, and the task's data as its YAML resolves it under ``--include_path`` (following
  ``include:``): ``dataset_path`` (a local folder made absolute), ``dataset_name``, ``dataset_kwargs``
  (a hub revision), the splits, and the YAML text itself;
* the rest of the command: ``--batch_size``, ``--device``, ``--limit``, generation settings, launcher;
* the lmms-eval version.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

__all__ = ["command_setting", "differences", "run_identity", "task_data"]

DATA_KEYS = ("dataset_path", "dataset_name", "dataset_kwargs", "test_split", "validation_split", "training_split")


class _AnyTagLoader(yaml.SafeLoader):
    """lmms-eval task YAMLs tag functions (``!function utils.x``): read the tag's text, run nothing."""


_AnyTagLoader.add_multi_constructor("!", lambda loader, suffix, node: f"!{suffix} {loader.construct_scalar(node)}")


def _read_task_yaml(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], list[str]]:
    """(the task's keys with ``include:`` merged under them, the texts of every file read)."""
    text = path.read_text(encoding="utf-8")
    data = yaml.load(text, Loader=_AnyTagLoader) or {}  # noqa: S506 - a SafeLoader subclass
    texts = [text]
    base = data.pop("include", None) if isinstance(data, dict) else None
    if isinstance(base, str) and path not in seen:
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
        if base_path.is_file():
            merged, more = _read_task_yaml(base_path, seen + (path,))
            data, texts = {**merged, **data}, more + texts
    return (data if isinstance(data, dict) else {}), texts


def task_data(task: str, include_path: str | Path | None) -> dict[str, Any]:
    """The data behind ``task`` as its YAML under ``include_path`` says; ``{"task": task, "source":
    "lmms-eval"}`` for a task found there only (lmms-eval's own, identified by its version)."""
    if include_path is not None and Path(include_path).is_dir():
        for path in sorted(Path(include_path).rglob("*.yaml")):
            try:
                data, texts = _read_task_yaml(path)
            except (OSError, yaml.YAMLError, UnicodeDecodeError):
                continue
            if data.get("task") != task:
                continue
            found = {key: data[key] for key in DATA_KEYS if key in data}
            local = found.get("dataset_path")
            if isinstance(local, str) and (Path(local).is_absolute() or (path.parent / local).exists()):
                found["dataset_path"] = str((path.parent / local).resolve())
            found["yaml_sha1"] = hashlib.sha1("\n---\n".join(texts).encode()).hexdigest()[:12]
            return {"task": task, **found}
    return {"task": task, "source": "lmms-eval"}


def command_setting(cmd: list[str]) -> list[str]:
    """The lmms-eval command without its output folder (which names the run, not its setting)."""
    out, skip = [], False
    for part in cmd:
        if skip:
            skip = False
            continue
        if part == "--output_path":
            skip = True
            continue
        out.append(part)
    return out


def run_identity(
    cmd: list[str], task: str, include_path: str | Path | None, data: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The identity of one run of ``cmd`` (an lmms-eval command line) on ``task``; ``data``: its
    :func:`task_data`, when the caller has it already."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        lmms_eval_version = version("lmms_eval")
    except PackageNotFoundError:
        lmms_eval_version = "unknown"
    data = task_data(task, include_path) if data is None else data
    return {"command": command_setting(cmd), "data": data, "lmms_eval": lmms_eval_version}


def differences(recorded: Any, current: dict[str, Any]) -> list[str]:
    """Which parts of ``current`` an earlier run's identity ``recorded`` does not share, in words."""
    if not isinstance(recorded, dict):
        return ["no recorded setting"]
    out = []
    if recorded.get("lmms_eval") != current["lmms_eval"]:
        out.append(f"lmms-eval {recorded.get('lmms_eval')} -> {current['lmms_eval']}")
    old_data, new_data = recorded.get("data") or {}, current["data"]
    for key in sorted(set(old_data) | set(new_data)):
        if old_data.get(key) != new_data.get(key):
            out.append(f"task data {key}: {old_data.get(key)!r} -> {new_data.get(key)!r}")
    old_cmd, new_cmd = recorded.get("command") or [], current["command"]
    if old_cmd != new_cmd:
        removed = [p for p in old_cmd if p not in new_cmd]
        added = [p for p in new_cmd if p not in old_cmd]
        out.append(f"command: {' '.join(removed) or '(order)'} -> {' '.join(added) or '(order)'}")
    return out
