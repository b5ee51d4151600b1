"""The package's own runners (demo, bench, the test harness) fail loudly when lmms-eval fails quietly.

lmms-eval's CLI exits 0 after a crash and after failed requests; our runners read its log and its
results files instead, and exit non-zero with the error shown.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sparsezip_lmms.demo.harness import error_lines

pytestmark = pytest.mark.e2e

# what lmms-eval's loguru sink writes to a pipe (colorize=True keeps the escape codes)
_COLOURED_ERROR = (
    "\x1b[32m2026-12-01 10:00:00\x1b[0m | \x1b[31m\x1b[1mERROR   \x1b[0m | \x1b[36msparsezip_lmms.models.base\x1b[0m:"
    "\x1b[36mgenerate_until\x1b[0m:\x1b[36m388\x1b[0m - \x1b[31m\x1b[1mllava_sparsezip: 3 of 12 requests failed\x1b[0m"
)


def test_error_lines_are_found_in_a_coloured_log():
    log = "\n".join(
        [
            "2026-12-01 10:00:00 | INFO     | lmms_eval.evaluator:simple_evaluate:200 - Running generate_until requests",
            _COLOURED_ERROR,
            "2026-12-01 10:00:01 | WARNING  | lmms_eval.models:__init__:40 - a warning is not an error",
            "Traceback (most recent call last):",
            '  File "x.py", line 1, in <module>',
            "the word ERROR inside a message is not a record",
        ]
    )
    found = error_lines(log)
    assert len(found) == 2
    assert found[0].endswith("llava_sparsezip: 3 of 12 requests failed") and "\x1b" not in found[0]
    assert found[1] == "Traceback (most recent call last):"


def test_demo_exits_non_zero_with_the_error_when_a_run_fails(tmp_path):
    """An unknown config: lmms-eval prints the traceback, writes nothing and exits 0; the demo must not."""
    proc = subprocess.run(
        [sys.executable, "-m", "sparsezip_lmms", "demo", "--out", str(tmp_path / "demo"),
         "--runs", "llava_sparsezip:sparsezip_999"],
        capture_output=True, text=True, timeout=900, env={**os.environ},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "error: demo: lmms-eval wrote no results file" in proc.stderr
    assert "unknown config 'sparsezip_999'" in proc.stderr
    assert "leaderboard files:" not in proc.stdout  # stopped before the leaderboard
