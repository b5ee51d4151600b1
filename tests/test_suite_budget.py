"""The suite's closing output: the durations report always, and one warning line above it when the
run took longer than its warning line (20 minutes; never a failure)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import conftest

TESTS = Path(__file__).resolve().parent


class _Reporter:
    def __init__(self):
        self.lines = []

    def write_line(self, line, **markup):
        self.lines.append(line)


def test_the_warning_line_appears_only_past_the_limit(monkeypatch):
    monkeypatch.setattr(conftest, "SUITE_WARN_MINUTES", 20.0)
    monkeypatch.setattr(conftest, "_started", [time.monotonic() - 21 * 60])
    slow = _Reporter()
    conftest.pytest_terminal_summary(slow)
    assert len(slow.lines) == 1 and slow.lines[0].startswith("warning: the test suite took 21.0 min, over its 20 min")
    monkeypatch.setattr(conftest, "_started", [time.monotonic() - 19 * 60])
    quick = _Reporter()
    conftest.pytest_terminal_summary(quick)
    assert quick.lines == []


def test_a_slow_suite_warns_above_the_durations_and_still_passes():
    env = {**os.environ, "SPARSEZIP_SUITE_WARN_MINUTES": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(TESTS / "test_flops.py")],
        capture_output=True, text=True, env=env, cwd=TESTS.parent, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:]
    lines = proc.stdout.splitlines()
    (warning,) = [i for i, line in enumerate(lines) if line.startswith("warning: the test suite took")]
    (durations,) = [i for i, line in enumerate(lines) if "slowest 25 durations" in line]
    assert warning < durations and "over its 0 min warning line" in lines[warning]
