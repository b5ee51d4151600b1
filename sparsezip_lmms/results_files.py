"""The ``*_results.json`` files under the paths a command is given, found the same way by every
command that reads runs (``leaderboard``, ``analyze``, ``report``).

Folders are walked with symbolic links followed (a folder of links to run folders is a usual way to
gather runs), each real folder once (a link back up the tree is not walked again); files are
de-duplicated by their real path. A path with nothing in it is a problem named in words, never an
empty result that looks like a finished one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["results_files"]

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
        dirs.sort()
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
