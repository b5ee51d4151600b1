#!/usr/bin/env bash
# Refresh constraints/lock.txt: resolve a fresh CPU install of sparsezip-lmms (with its test extra)
# from today's package index, in a throw-away venv, and record the exact version of every package it
# installed, transitive ones included. `make lock` runs this; run the test suite on the new lock
# (`make test`) before committing it.
#
# The resolution starts from constraints/cpu.txt (the CPU build of torch) and pyproject.toml's bounds
# (which exclude releases known to break a run); nothing else is pinned by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LOCK=${LOCK:-constraints/lock.txt}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" -m venv "$WORK/venv"
PIP=("$WORK/venv/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q -c constraints/cpu.txt ".[test]"
py_version=$("$WORK/venv/bin/python" -c 'import platform; print(platform.python_version())')
{
  echo "# Lock of the tested CPU environment: every package a CPU install of sparsezip-lmms[test] resolved."
  echo "# Made by scripts/lock.sh (make lock) on $(date -u +%Y-%m-%d) with Python $py_version ($(uname -m))."
  echo "# scripts/install.sh installs with it by default; SPARSEZIP_LOCK=none installs the newest versions"
  echo "# within pyproject.toml's bounds instead. On NVIDIA machines torch and its CUDA companions are left free."
  # the package itself is not pinned; torch's local label (+cpu) is dropped so that the pin reads as a version
  "${PIP[@]}" freeze --exclude-editable | grep -v -i -E '^(sparsezip-lmms|sparsezip_lmms)[=@ ]' | sed -E 's/^(torch==[^+]+)\+.*$/\1/' | LC_ALL=C sort -f
} >"$LOCK.tmp"
mv "$LOCK.tmp" "$LOCK"
echo "wrote $LOCK ($(grep -c '==' "$LOCK") packages, Python $py_version)"
