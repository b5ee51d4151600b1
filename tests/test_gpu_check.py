"""scripts/gpu_check.sh: what can be checked without a GPU (it starts, refuses clearly, names its steps)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


def test_gpu_check_needs_an_output_folder():
    proc = _run()
    assert proc.returncode == 2 and "usage: bash scripts/gpu_check.sh OUT_DIR" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the script would run for real")
def test_gpu_check_stops_with_a_clear_message_without_cuda(tmp_path):
    proc = _run(str(tmp_path / "out"))
    assert proc.returncode == 3
    assert "no CUDA device" in proc.stdout and "needs an NVIDIA GPU" in proc.stdout
    assert f"torch {torch.__version__}" in proc.stdout
    assert "no CUDA device" in (tmp_path / "out" / "summary.txt").read_text()

