"""A real headless Chromium (Debian's ``chromium``, installed by scripts/setup.sh) driven
over the DevTools protocol, to open a report page and read what it did: console errors,
uncaught exceptions, network requests, and the plots plotly drew.

The protocol runs over ``--remote-debugging-pipe`` (JSON messages ending in a NUL byte on
file descriptors 3 and 4), which needs no port and no websocket client; the few calls used
here did not justify a browser-automation dependency whose own browser download cannot
run here."""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# What each plot on the page looks like once plotly has drawn it.
PLOTS_JS = """JSON.stringify([...document.querySelectorAll('figure.panel')].map(f => {
  const d = f.querySelector('.plotly-graph-div');
  return {stage: f.dataset.stage, panel: f.dataset.panel,
          drawn: !!(d && d._fullLayout && d.querySelector('svg.main-svg .cartesianlayer')),
          traces: d ? d.querySelectorAll('.scatterlayer .trace, .barlayer .trace').length : 0,
          marks: d ? d.querySelectorAll('path.js-line, path.point, g.point > path').length : 0,
          points: d && d.data ? d.data.reduce((n, t) => n + (t.y || []).filter(v => v !== null).length, 0) : 0,
          width: d ? Math.round(d.getBoundingClientRect().width) : 0};
}))"""


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageResult:
    errors: list[str] = field(default_factory=list)
    """Console errors, uncaught exceptions and error log entries, as text."""
    requests: list[str] = field(default_factory=list)
    """Every URL the page asked for."""
    plots: list[dict] = field(default_factory=list)
    """PLOTS_JS's record of each plot."""
    declared_plots: int = -1
    """The page's own count (``<meta name="posttrain-plots">``)."""
    values: dict = field(default_factory=dict)
    """The values of the ``extra`` expressions passed to ``open_page``."""


class DevTools:
    def __init__(self, exe: str, profile: Path):
        cmd_r, self._cmd_w = os.pipe()  # we write commands; the browser reads fd 3
        self._evt_r, evt_w = os.pipe()  # the browser writes fd 4; we read

        def to_fds_3_and_4():  # in the child, before exec
            a = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(evt_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--window-size=1400,1000",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=to_fds_3_and_4, pass_fds=(3, 4, cmd_r, evt_w))
        os.close(cmd_r)
        os.close(evt_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium")
            ready, _, _ = select.select([self._evt_r], [], [], left)
            if ready:
                chunk = os.read(self._evt_r, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe (exit {self.proc.poll()})")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for e in self.events:
            if e.get("method") == method:
                return e
        while True:
            e = self._read_message(deadline)
            self.events.append(e)
            if e.get("method") == method:
                return e

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._evt_r)

    def open_page(self, url: str, extra: dict[str, str] | None = None, settle_s: float = 30) -> PageResult:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=session)
        self.call("Page.navigate", {"url": url}, session=session)
        self.wait_event("Page.loadEventFired", timeout=120)

        def evaluate(expr: str):
            r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session=session)
            return r["result"].get("value")

        result = PageResult()
        deadline = time.monotonic() + settle_s
        while True:  # plotly draws during and just after load; wait until it has finished
            result.plots = json.loads(evaluate(PLOTS_JS))
            if all(p["drawn"] for p in result.plots) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        declared = evaluate("(document.querySelector('meta[name=posttrain-plots]') || {}).content")
        result.declared_plots = int(declared) if declared else -1
        result.values = {name: evaluate(expr) for name, expr in (extra or {}).items()}
        evaluate("0")  # a last round trip, so late console events are read in
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                result.errors.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                result.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
                result.errors.append(p["entry"].get("text", ""))
            elif method == "Network.requestWillBeSent":
                result.requests.append(p["request"]["url"])
        self.events.clear()
        self.call("Target.closeTarget", {"targetId": target})
        return result


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """A headless Chromium. Missing, it fails the test in CI (CI=true: setup.sh installs it
    as root) and skips elsewhere."""
    exe = chromium_path()
    if exe is None:
        message = "chromium not found: scripts/setup.sh installs Debian's chromium when run as root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    tools = DevTools(exe, tmp_path_factory.mktemp("chromium-profile"))
    yield tools
    tools.close()
