"""Render a local HTML file in a real headless Chromium/Chrome, with the standard library only.

The browser is driven over the Chrome DevTools Protocol on ``--remote-debugging-pipe`` (it reads
commands from its fd 3 and writes replies and events to its fd 4, each a JSON message ended by a NUL
byte), with every network access blocked and recorded. ``scripts/install_browser.sh`` (run by
``make test``) provides the browser; without one, ``browser_or_skip()`` skips with the reason.

    from _browser import browser_or_skip, render

    browser_or_skip()
    out = render(path, expression="document.title", screenshot_path=tmp_path / "page.png")
    out["value"], out["requests"], out["console_errors"], out["screenshot"]
"""

from __future__ import annotations

import base64
import fcntl
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MARK = "browser-unavailable.txt"  # written by scripts/install_browser.sh into the venv

# URL schemes that stay on this machine (not counted as requests)
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:")

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--remote-debugging-pipe",
    # no network: names do not resolve, and any connection goes to a closed local port
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    # and nothing of the browser's own phoning home
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-domain-reliability",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-client-side-phishing-detection",
    "--no-pings",
    "--metrics-recording-only",
    "--disable-breakpad",
    "--disable-crash-reporter",
    "--password-store=basic",
    "--use-mock-keychain",
    "--mute-audio",
    "--hide-scrollbars",
    (
        "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication,"
        "DialMediaRouteProvider,InterestFeedContentSuggestions,CertificateTransparencyComponentUpdater"
    ),
)


class BrowserError(RuntimeError):
    """The browser could not render the page: it crashed, timed out, or a command failed."""


def _executable(candidate: str) -> str | None:
    found = shutil.which(candidate)
    return found if found and os.path.isfile(found) else None


def find_browser() -> tuple[str | None, str]:
    """(the browser's path, "") or (None, why there is none)."""
    chosen = os.environ.get("SPARSEZIP_BROWSER")
    if chosen:
        found = _executable(chosen)
        if found:
            return found, ""
        return None, (
            f"SPARSEZIP_BROWSER={chosen} is not an executable file "
            "(unset it or point it at a Chromium/Chrome binary)"
        )
    for name in NAMES:
        found = _executable(name)
        if found:
            return found, ""
    why = f"no Chromium/Chrome browser found (SPARSEZIP_BROWSER unset, none of {', '.join(NAMES)} on PATH)"
    for mark in dict.fromkeys((Path(sys.prefix) / MARK, ROOT / ".venv" / MARK)):
        try:
            text = mark.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            continue
        if text:
            return None, f"{why}; scripts/install_browser.sh said: {text}"
    return None, f"{why}; run `make test` or `bash scripts/install_browser.sh` to install one"


def browser_or_skip() -> str:
    """The browser's path, or skip the calling test with the reason there is none."""
    import pytest

    path, why = find_browser()
    if path is None:
        pytest.skip(why)
    return path


def _high_fd(fd: int) -> int:
    """A close-on-exec copy of fd numbered 10 or more (so it cannot collide with 3/4), fd closed."""
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return copy


_TRAMPOLINE = """
import os, sys
r, w = int(sys.argv[1]), int(sys.argv[2])
os.dup2(r, 3)
os.dup2(w, 4)
os.close(r)
os.close(w)
os.execv(sys.argv[3], sys.argv[3:])
"""


def _session_cpu_seconds(session_id: int) -> float | None:
    """CPU seconds (user + system) used so far by the live processes of session ``session_id`` (the
    browser and every child it started), from /proc; None where /proc cannot tell."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, seen = 0, False
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        # after "pid (comm)": state ppid pgrp session ... utime (11) stime (12), counted from state = 0
        if int(fields[3]) == session_id:
            total += int(fields[11]) + int(fields[12])
            seen = True
    return total / ticks if seen else None


class _Progress:
    """Tells a slow browser from a stuck one: the wait fails only after ``stall`` seconds in which
    the browser neither sent a byte nor used CPU (its whole session of processes), so a loaded or
    slow machine never fails a render that is still moving; ``limit`` bounds the whole render."""

    def __init__(self, session_id: int, stall: float, limit: float):
        self.session_id = session_id
        self.stall = stall
        self.started = time.monotonic()
        self.limit = limit
        self.last = self.started
        self.cpu = _session_cpu_seconds(session_id)

    def moved(self) -> None:
        self.last = time.monotonic()

    def expired(self) -> str | None:
        """None while the render may go on, else why it may not."""
        now = time.monotonic()
        if now - self.started > self.limit:
            return f"no result after {self.limit:.0f} s"
        if now - self.last <= self.stall:
            return None
        cpu = _session_cpu_seconds(self.session_id)
        if cpu is not None and self.cpu is not None and cpu > self.cpu + 0.05:
            self.cpu, self.last = cpu, now  # working, only slowly
            return None
        return f"no message and no CPU used by the browser for {self.stall:.0f} s"


class _Pipe:
    """One Chrome DevTools Protocol connection over --remote-debugging-pipe."""

    def __init__(self, browser: str, args: list[str], workdir: Path, stall: float, limit: float):
        self.next_id = 0
        self.buffer = b""
        self.events: list[dict[str, Any]] = []
        self.on_event = lambda message: None
        self.session: str | None = None  # the page's session, once attached
        self.stderr_path = workdir / "browser-stderr.txt"
        cmd_r, cmd_w = os.pipe()  # we write commands, the browser reads them on its fd 3
        out_r, out_w = os.pipe()  # the browser writes on its fd 4, we read
        cmd_r, out_w = _high_fd(cmd_r), _high_fd(out_w)
        env = dict(os.environ)
        env.update(XDG_CONFIG_HOME=str(workdir / "config"), XDG_CACHE_HOME=str(workdir / "cache"))
        # A tiny Python trampoline moves the two pipe ends onto fds 3 and 4 and execs the browser
        # (same pid). No preexec_fn (unsafe once torch & co. have started threads), and no /bin/sh
        # (dash cannot redirect fds above 9); close_fds closes every other descriptor in the child.
        try:
            with open(self.stderr_path, "wb") as stderr:
                self.proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _TRAMPOLINE, str(cmd_r), str(out_w), browser, *args],
                    stdin=subprocess.DEVNULL,
                    stdout=stderr,
                    stderr=stderr,
                    pass_fds=(cmd_r, out_w),
                    close_fds=True,
                    start_new_session=True,  # its own process group: kill() takes all its children
                    env=env,
                    cwd=workdir,
                )
        except BaseException:
            for fd in (cmd_w, out_r):
                os.close(fd)
            raise
        finally:
            os.close(cmd_r)
            os.close(out_w)
        self.writer, self.reader = cmd_w, out_r
        os.set_blocking(self.reader, False)
        self.progress = _Progress(self.proc.pid, stall, limit)  # start_new_session: session id = its pid

    def stderr_tail(self, lines: int = 25) -> str:
        try:
            text = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no stderr)"
        tail = text.strip().splitlines()[-lines:]
        return "\n".join(tail) if tail else "(empty stderr)"

    def fail(self, what: str) -> BrowserError:
        code = self.proc.poll()
        state = "still running" if code is None else f"exit status {code}"
        return BrowserError(f"{what} (browser {state}); the browser's stderr ends with:\n{self.stderr_tail()}")

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        try:
            while data:  # commands are small; the pipe takes them at once unless the browser hangs
                data = data[os.write(self.writer, data) :]
        except (BrokenPipeError, OSError) as exc:
            raise self.fail(f"could not send {method} to the browser ({exc})") from None
        return self.next_id

    def _read_messages(self) -> list[dict[str, Any]]:
        """Wait (while the browser makes progress) for at least one complete message; return those read."""
        while True:
            if b"\0" in self.buffer:
                *complete, self.buffer = self.buffer.split(b"\0")
                return [json.loads(chunk) for chunk in complete if chunk.strip()]
            why = self.progress.expired()
            if why is not None:
                raise self.fail(f"timed out waiting for the browser: {why}")
            ready, _, _ = select.select([self.reader], [], [], 0.5)
            if not ready:
                if self.proc.poll() is not None:
                    raise self.fail("the browser exited")
                continue
            try:
                chunk = os.read(self.reader, 1 << 20)
            except BlockingIOError:
                continue
            if not chunk:
                raise self.fail("the browser closed its DevTools pipe")
            self.progress.moved()
            self.buffer += chunk

    def _dispatch(self, message: dict[str, Any]) -> None:
        """Keep an event for wait_event and pass it to on_event; raise if the page is gone."""
        if "method" not in message:
            return
        self.events.append(message)
        self.on_event(message)
        method, params = message["method"], message.get("params", {})
        if self.session is None:
            return
        if method == "Inspector.targetCrashed" and message.get("sessionId") == self.session:
            raise self.fail("the page crashed")
        if method == "Target.detachedFromTarget" and params.get("sessionId") == self.session:
            raise self.fail("the page was closed (detached from its target)")

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict[str, Any]:
        """Send a command and wait for its reply; events that arrive meanwhile go to on_event."""
        wanted = self.send(method, params, session)
        while True:
            for message in self._read_messages():
                if message.get("id") == wanted:
                    if "error" in message:
                        error = message["error"]
                        detail = error.get("message", error)
                        if error.get("data"):
                            detail = f"{detail}: {error['data']}"
                        raise BrowserError(f"{method} failed: {detail}")
                    return message.get("result", {})
                self._dispatch(message)

    def wait_event(self, method: str, session: str | None = None) -> dict[str, Any]:
        """Wait for the first event `method` (of `session`) not yet consumed, and consume it."""
        while True:
            for index, event in enumerate(self.events):
                if event["method"] == method and (session is None or event.get("sessionId") == session):
                    del self.events[index]
                    return event.get("params", {})
            for message in self._read_messages():
                self._dispatch(message)

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close")
                    self.proc.wait(timeout=5)
                except (BrowserError, subprocess.TimeoutExpired):
                    pass
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # whatever is left of its process group
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for fd in (self.writer, self.reader):
                try:
                    os.close(fd)
                except OSError:
                    pass


def _console_text(params: dict[str, Any]) -> str:
    parts = []
    for arg in params.get("args", []):
        if "value" in arg:
            parts.append(arg["value"] if isinstance(arg["value"], str) else json.dumps(arg["value"]))
        else:
            parts.append(arg.get("description", arg.get("type", "?")))
    return " ".join(str(part) for part in parts)


def _exception_text(details: dict[str, Any]) -> str:
    exception = details.get("exception") or {}
    text = exception.get("description") or details.get("text") or "exception"
    where = details.get("url")
    if where and details.get("lineNumber") is not None:
        text = f"{text} (at {where}:{details['lineNumber'] + 1})"
    return text


def render(
    html_path: str | os.PathLike,
    *,
    width: int = 1280,
    height: int = 900,
    expression: str,
    screenshot_path: str | os.PathLike | None = None,
    stall: float = 60,
    limit: float = 300,
) -> dict[str, Any]:
    """Open html_path in a headless browser (no network), evaluate `expression` once it has loaded.

    `expression` is JavaScript evaluated in the page; a promise is awaited and the result comes
    back by value (JSON-able). With screenshot_path, a PNG of the whole page (its full height, at
    least `width` wide) is written there. Returns {"value": the result, "requests": the URLs the
    page asked for that are not file:/data:/about:/blob: (all blocked), "screenshot": the PNG's
    path or None, "console_errors": uncaught exceptions and console.error() messages}.
    Raises BrowserError when there is no browser, when the browser is stuck (`stall` seconds without
    a message from it or CPU used by it: a slow or loaded machine only makes the render slower) or
    past `limit` seconds in all (a browser stuck while still using a little CPU was once seen to wait
    18 minutes: the bound is what ends such a wait), on a crash (with the browser's stderr), a failed navigation, a
    DevTools error reply or an exception thrown by `expression`.
    """
    browser, why = find_browser()
    if browser is None:
        raise BrowserError(why)
    page = Path(html_path).resolve()
    if not page.is_file():
        raise BrowserError(f"no such file to render: {page}")
    workdir = Path(tempfile.mkdtemp(prefix="sparsezip-browser-"))
    requests: list[str] = []
    console_errors: list[str] = []
    conn = None
    try:
        profile = workdir / "profile"
        profile.mkdir()
        args = [*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"]
        conn = _Pipe(browser, args, workdir, stall, limit)

        def on_event(event: dict[str, Any]) -> None:
            if conn.session is None or event.get("sessionId") != conn.session:
                return
            method, params = event["method"], event.get("params", {})
            if method == "Fetch.requestPaused":  # every request waits here until answered: none is missed
                url = params.get("request", {}).get("url", "")
                if url.startswith(LOCAL_SCHEMES):
                    conn.send("Fetch.continueRequest", {"requestId": params["requestId"]}, session=conn.session)
                else:
                    if url not in requests:
                        requests.append(url)
                    failed = {"requestId": params["requestId"], "errorReason": "BlockedByClient"}
                    conn.send("Fetch.failRequest", failed, session=conn.session)  # nothing leaves the machine
            elif method == "Network.requestWillBeSent":
                url = params.get("request", {}).get("url", "")
                if not url.startswith(LOCAL_SCHEMES) and url not in requests:
                    requests.append(url)
            elif method == "Runtime.exceptionThrown":
                console_errors.append(_exception_text(params.get("exceptionDetails", {})))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                console_errors.append(_console_text(params))

        conn.on_event = on_event
        target = conn.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = conn.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        conn.session = session
        for method in ("Page.enable", "Network.enable", "Runtime.enable", "Inspector.enable"):
            conn.call(method, session=session)
        conn.call("Fetch.enable", {"patterns": [{"urlPattern": "*"}]}, session=session)
        conn.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        conn.events.clear()  # nothing before the navigation counts as its load
        navigated = conn.call("Page.navigate", {"url": page.as_uri()}, session=session)
        if navigated.get("errorText"):
            raise BrowserError(f"could not open {page.as_uri()}: {navigated['errorText']}")
        conn.wait_event("Page.loadEventFired", session)
        evaluated = conn.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=session,
        )
        if "exceptionDetails" in evaluated:
            raise BrowserError(f"the expression threw: {_exception_text(evaluated['exceptionDetails'])}")
        value = evaluated.get("result", {}).get("value")
        shot = None
        if screenshot_path is not None:
            metrics = conn.call("Page.getLayoutMetrics", session=session)
            size = metrics.get("cssContentSize") or metrics.get("contentSize") or {}
            full_width = max(width, math.ceil(size.get("width", width)))
            full_height = max(1, math.ceil(size.get("height", height)))
            captured = conn.call(
                "Page.captureScreenshot",
                {
                    "format": "png",
                    "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": full_width, "height": full_height, "scale": 1},
                },
                session=session,
            )
            shot = Path(screenshot_path)
            shot.parent.mkdir(parents=True, exist_ok=True)
            shot.write_bytes(base64.b64decode(captured["data"]))
        return {
            "value": value,
            "requests": requests,
            "screenshot": str(shot) if shot is not None else None,
            "console_errors": console_errors,
        }
    finally:
        if conn is not None:
            conn.close()
        shutil.rmtree(workdir, ignore_errors=True)
