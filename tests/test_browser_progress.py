"""The browser client's wait rule (tests/_browser.py): a slow browser is waited for, a stuck one is not.

A render fails only after a stretch in which the browser's processes neither wrote to the DevTools pipe
nor used CPU, so the report tests do not fail on a loaded machine (a fixed wall-clock deadline did).
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from _browser import _Progress

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads CPU times from /proc")


def _process(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def test_a_busy_browser_is_waited_for_and_an_idle_one_times_out():
    busy, idle = _process("while True: pass"), _process("import time; time.sleep(60)")
    try:
        watch_busy, watch_idle = _Progress(busy.pid, stall=0.3, limit=60), _Progress(idle.pid, stall=0.3, limit=60)
        time.sleep(1.0)
        assert watch_busy.expired() is None  # past the stall time, but it used CPU meanwhile
        assert "no message and no CPU used" in watch_idle.expired()
        watch_idle.moved()  # a message from the browser counts as progress
        assert watch_idle.expired() is None
        assert "no result after" in _Progress(busy.pid, stall=10, limit=0).expired()  # the overall bound
    finally:
        for proc in (busy, idle):
            proc.kill()
            proc.wait()
