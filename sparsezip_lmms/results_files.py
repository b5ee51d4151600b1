"""The ``*_results.json`` files under the paths a command is given, found the same way by every
command that reads runs (``leaderboard``, ``analyze``, ``report``).

Folders are walked with symbolic links followed (lmms-eval's ``submissions/`` folders left out: tasks write
their own files there, some named ``*_results.json``) (a folder of links to run folders is a usual way to
gather runs), each real folder once (a link back up the tree is not walked again); files are
de-duplicated by their real path. A path with nothing in it is a problem named in words, never an
empty result that looks like a finished one.

What a results file records about its run, read the same way everywhere: a task's data identity
(:func:`task_data`), the checkpoint however it was spelled (:func:`checkpoint_id`), ``dtype=auto`` as it
loaded (:func:`resolved_dtype`), the kind of device (:func:`device_kind`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["checkpoint_id", "describe_data", "device_kind", "resolved_dtype", "results_files", "task_data"]

SUFFIX = "_results.json"


def _walk(folder: Path) -> list[Path]:
    """``*_results.json`` below ``folder``, following links, every real folder once."""
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []  # a link cycle, or a folder reached twice
            continue
        seen.add(real)
        # lmms-eval's submissions/ folder holds tasks' own files (MMBench writes *_results.json there)
        dirs[:] = sorted(d for d in dirs if d != "submissions")
        found += [Path(root) / name for name in sorted(files) if name.endswith(SUFFIX)]
    return found


def results_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """(the ``*_results.json`` files named or found under ``paths``, oldest first, each once; problems:
    a path that does not exist, or a folder with no results file under it)."""
    files: list[Path] = []
    problems: list[str] = []
    for p in map(Path, paths):
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            found = _walk(p)
            if not found:
                problems.append(f"{p}: no *{SUFFIX} under this folder (links followed)")
            files += found
        else:
            problems.append(f"{p}: no such file or folder")
    unique = list(dict.fromkeys(f.resolve() for f in files))
    return sorted(unique, key=lambda f: f.stat().st_mtime), problems


# --------------------------------------------------------------------------- what a results file records


def task_data(task_config: Any) -> str:
    """A task's data identity as the results file records it (``configs[task]``: dataset path, name,
    kwargs and splits), as a canonical string ('' when not recorded)."""
    from .run_identity import DATA_KEYS

    if not isinstance(task_config, dict):
        return ""
    return json.dumps({key: task_config[key] for key in DATA_KEYS if key in task_config}, sort_keys=True, default=str)


def describe_data(data: str) -> str:
    """The data identity for a note: 'dataset_path X, test_split Y' (or 'not recorded')."""
    try:
        found = json.loads(data) if data else {}
    except ValueError:
        return data
    return ", ".join(f"{k} {v}" for k, v in found.items()) or "not recorded"


def device_kind(device: Any) -> str:
    """``cuda:1`` and ``cuda`` are one kind of device (timings compare); ``cpu`` another; '?' unrecorded."""
    text = str(device or "?")
    return text.split(":", 1)[0]


def checkpoint_id(checkpoint: str) -> str:
    """A local checkpoint folder's resolved path (relative, absolute or symlinked spellings are one
    checkpoint); a hub id or a path not on this machine as given."""
    path = Path(checkpoint)
    return str(path.resolve()) if path.is_dir() else checkpoint


def resolved_dtype(dtype: str, checkpoint: str) -> str:
    """``dtype=auto`` as the model loads it: the checkpoint's own dtype where its config.json is a local file
    (``torch_dtype`` / ``dtype``; the text config's for LLaVA), else ``auto``; any other value unchanged."""
    if dtype != "auto":
        return dtype
    path = Path(checkpoint) / "config.json"
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return dtype
    for section in (found, found.get("text_config") or {}):
        value = section.get("dtype") or section.get("torch_dtype")
        if isinstance(value, str):
            return value
    return dtype
