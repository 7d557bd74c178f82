"""A headless Chromium driven over the DevTools protocol, for what only a browser shows.

Tests import :func:`chromium` (a context manager) and skip when no
``chromium`` is on the PATH (Debian: ``apt-get install chromium``). The
browser runs in its own session and profile directory and is stopped by its
PID; pages are driven with ``Page.navigate`` and ``Runtime.evaluate`` over
the page target's websocket (the ``websockets`` package the tests use anyway).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


needs_chromium = pytest.mark.skipif(
    chromium_binary() is None, reason="no chromium on PATH (apt-get install chromium)"
)


class Page:
    """One browser tab: navigate, evaluate JavaScript, wait for a condition."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = iter(range(1, 1 << 31))

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; events that arrive meanwhile are skipped."""
        ident = next(self._ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            try:
                reply = json.loads(self.ws.recv(timeout=30))
            except TimeoutError:
                raise AssertionError("chromium did not answer %s in 30 s" % method) from None
            if reply.get("id") == ident:
                if "error" in reply:
                    raise RuntimeError("%s failed: %s" % (method, reply["error"]))
                result: dict[str, Any] = reply.get("result", {})
                return result

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` in the page (JSON-serialisable), None on a JS error."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            return None
        return result.get("result", {}).get("value")

    def text(self) -> str:
        value = self.evaluate("document.body ? document.body.innerText : ''")
        return value if isinstance(value, str) else ""

    def wait_for(self, expression: str, what: str, timeout: float = 20.0) -> Any:
        """Poll ``expression`` until it is truthy; AssertionError with the page text if never."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError("page never showed %s; it shows:\n%s" % (what, self.text()))
            time.sleep(0.05)


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[Page]:
    """Start a headless Chromium with its profile in ``profile``; yield its first tab."""
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    profile.mkdir(parents=True, exist_ok=True)
    args = [
        binary,
        "--headless=new",
        "--remote-debugging-port=0",  # the chosen port goes to DevToolsActivePort
        "--user-data-dir=%s" % profile,
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-gpu",
        "--disable-extensions",
        "--disable-background-networking",
        "about:blank",
    ]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium refuses to sandbox as root
    with (profile / "chromium.log").open("wb") as out:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    try:
        port = _devtools_port(profile / "DevToolsActivePort", proc)
        with connect(_page_socket(port), max_size=None, open_timeout=20) as ws:
            page = Page(ws)
            page.call("Page.enable")
            yield page
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # Its helper processes (renderer, GPU, zygote) are in its session.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def _devtools_port(path: Path, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("chromium exited with %s during start-up" % proc.returncode)
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(path.read_text().splitlines()[0])
        time.sleep(0.05)
    raise RuntimeError("chromium wrote no DevToolsActivePort in 30 s")


def _page_socket(port: int) -> str:
    deadline = time.monotonic() + 20
    while True:
        with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=5) as resp:
            targets = json.load(resp)
        for target in targets:
            if target.get("type") == "page" and target.get("webSocketDebuggerUrl"):
                url: str = target["webSocketDebuggerUrl"]
                return url
        if time.monotonic() > deadline:
            raise RuntimeError("chromium has no page target: %r" % targets)
        time.sleep(0.05)
