"""lmms-eval's own CLI entry point, run inside the test process on an lmms-eval command line.

A subprocess run pays for Python, torch, transformers and lmms-eval imports (most of a tiny run's
time); this one runs the same ``lmms_eval.cli.dispatch.main`` with the same arguments in the test
process and judges the outcome exactly as :func:`sparsezip_lmms.demo.harness.run_lmms_eval` does
(``read_run``: the files written and the log, never the exit code alone).

Each CLI run indexes every task YAML lmms-eval ships (about 3,200 files, ~7 s of pure-Python YAML on
this CPU) before it reads its own include path. In the test process the index of lmms-eval's own,
installed task folder is read once and reused (a ``TaskManager`` subclass, put in place of the name
``lmms_eval.__main__.TaskManager`` for the run only); include paths are indexed on every run, as
lmms-eval does. The subprocess runs of the suite (bench, demo, sweep failures, torchrun) index all.

What the in-process run shares with the test process is reset around it: ``sys.argv``, the
environment (the harness's offline variables), the efficiency records (cleared first, so a record
can only come from this run), and loguru's sinks (lmms-eval replaces them with one on its captured
stdout; afterwards the default stderr sink is restored), and the process environment. The tests that need the installed console
script, a launcher (torchrun) or the process exit code keep the subprocess runner.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import sys
import time
import traceback
from pathlib import Path

import pytest

from sparsezip_lmms.demo.harness import OFFLINE_ENV, HarnessRun, read_run
from sparsezip_lmms.efficiency import clear_records

_SHIPPED_INDEX: dict[str, dict] = {}  # lmms-eval's own task folder -> its task index, read once


def _indexed_once():
    """lmms-eval's ``TaskManager`` with the index of its own task folder read once per process."""
    import lmms_eval.tasks
    from lmms_eval.tasks import TaskManager

    shipped = os.path.dirname(os.path.abspath(lmms_eval.tasks.__file__))

    class ShippedTasksIndexedOnce(TaskManager):
        def _get_task_and_group(self, task_dir: str):
            if os.path.abspath(task_dir) != shipped:
                return super()._get_task_and_group(task_dir)
            if shipped not in _SHIPPED_INDEX:
                _SHIPPED_INDEX[shipped] = super()._get_task_and_group(task_dir)
            return copy.deepcopy(_SHIPPED_INDEX[shipped])

    return ShippedTasksIndexedOnce


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """``values`` set for the block; the whole environment as it was afterwards (lmms-eval sets more)."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_in_process(cmd: list[str], output_path: str | Path, *, env: dict | None = None, **_ignored) -> HarnessRun:
    """Run the lmms-eval command line ``cmd`` (``[python, "-m", "lmms_eval", ...]``, as
    ``lmms_eval_command`` builds it) in this process; same result and errors as ``run_lmms_eval``."""
    if cmd[1:3] != ["-m", "lmms_eval"]:
        raise ValueError(f"not a plain lmms-eval command line (launchers need a subprocess): {cmd[:4]}")
    import lmms_eval.__main__
    from loguru import logger
    from lmms_eval.cli.dispatch import main

    clear_records()
    log = io.StringIO()
    code = 0
    saved_argv = sys.argv
    started = time.time()
    with (
        _environment({**OFFLINE_ENV, **(env or {})}),
        pytest.MonkeyPatch.context() as patch,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        patch.setattr(lmms_eval.__main__, "TaskManager", _indexed_once())
        sys.argv = ["lmms-eval", *cmd[3:]]
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except Exception:  # what the console script would print before dying with exit code 1
            traceback.print_exc()
            code = 1
        finally:
            sys.argv = saved_argv
            logger.remove()
            logger.add(sys.stderr)
    return read_run(cmd, output_path, code, log.getvalue(), started)
