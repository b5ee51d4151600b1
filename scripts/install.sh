#!/usr/bin/env bash
# Create .venv and install sparsezip-lmms (editable) with its test extra.
# On machines without an NVIDIA GPU, torch is pinned to its CPU build and a torchvision that
# cannot load next to it is removed (transformers' image processors break when it is present).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
CONSTRAINTS=()
if ! command -v nvidia-smi >/dev/null 2>&1; then
  CONSTRAINTS=(-c constraints/cpu.txt)
fi
"${PIP[@]}" install -q "${CONSTRAINTS[@]}" -e ".[test]"
if ! "$VENV/bin/python" -c "import torchvision" >/dev/null 2>&1; then
  "${PIP[@]}" uninstall -q -y torchvision >/dev/null 2>&1 || true
fi
"$VENV/bin/python" -c "import torch, transformers, lmms_eval, sparsezip_lmms; print('sparsezip-lmms installed: torch', torch.__version__, '| transformers', transformers.__version__)"
