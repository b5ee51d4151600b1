#!/usr/bin/env bash
# Create .venv and install sparsezip-lmms (editable) with its test extra, at the versions CI tested.
#
# By default every package is pinned to constraints/lock.txt (made by scripts/lock.sh, `make lock`).
# SPARSEZIP_LOCK=none installs the newest versions within pyproject.toml's bounds instead;
# SPARSEZIP_LOCK=PATH uses another lock file.
# On machines with an NVIDIA GPU the lock applies except torch and its CUDA companions (your CUDA
# build of torch is left alone). On machines without one, torch is pinned to its CPU build and a
# torchvision that cannot load next to it is removed (transformers' image processors break when it
# is present).
# SPARSEZIP_TORCHVISION=1 (make test-upstream) on a machine without one installs instead torch 2.14.1 with the
# torchvision built for it (constraints/torchvision.txt; a CUDA build of several GB, which runs on the CPU), the
# rest pinned to the lock: an environment where lmms-eval's own qwen2_5_vl loads.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
LOCK=${SPARSEZIP_LOCK:-constraints/lock.txt}
# the packages the lock leaves free on NVIDIA machines (the same pattern as sparsezip_lmms/doctor.py)
GPU_FREE='^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$'

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
CONSTRAINTS=()
if command -v nvidia-smi >/dev/null 2>&1 || [ "${SPARSEZIP_TORCHVISION:-0}" = 1 ]; then
  if [ "$LOCK" != none ]; then
    mkdir -p "$VENV"
    # drop the lines whose package name matches GPU_FREE
    while IFS= read -r line; do
      name=$(printf '%s' "$line" | sed -E 's/[=<>!~; ].*$//' | tr '[:upper:]_.' '[:lower:]--')
      [[ "$name" =~ $GPU_FREE ]] || printf '%s\n' "$line"
    done <"$LOCK" >"$VENV/lock-gpu.txt"
    CONSTRAINTS=(-c "$VENV/lock-gpu.txt")
  fi
  if [ "${SPARSEZIP_TORCHVISION:-0}" = 1 ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    CONSTRAINTS+=(-c constraints/torchvision.txt)
    "${PIP[@]}" install -q "${CONSTRAINTS[@]}" torch torchvision
  fi
else
  CONSTRAINTS=(-c constraints/cpu.txt)
  [ "$LOCK" = none ] || CONSTRAINTS+=(-c "$LOCK")
fi
echo "installing sparsezip-lmms into $VENV with ${CONSTRAINTS[*]:-no constraints}"
"${PIP[@]}" install -q "${CONSTRAINTS[@]}" -e ".[test]"
if ! "$VENV/bin/python" -c "import torchvision" >/dev/null 2>&1; then
  "${PIP[@]}" uninstall -q -y torchvision >/dev/null 2>&1 || true
fi
"$VENV/bin/python" -c "import torch, transformers, lmms_eval, sparsezip_lmms; print('sparsezip-lmms installed: torch', torch.__version__, '| transformers', transformers.__version__)"
