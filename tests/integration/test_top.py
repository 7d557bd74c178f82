"""``m2gate top`` in a real terminal: tmux runs it against ``m2gate serve -p 2`` behind Mongrel2.

tmux gives the view a real pty and terminfo; ``capture-pane`` reads what a
user would see and ``send-keys`` types. Each test runs its own tmux server
(``-L``, its own config), killed at the end by its pid.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from m2gate.cli import control as client
from m2gate.ops.pidfile import control_path_for
from m2gate.testing.mongrel2 import Mongrel2
from support import m2gate_command, pid_alive, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("tmux") is None, reason="tmux is not installed (make test-deps installs it)"
    ),
]


class Tmux:
    """A tmux server of our own; a pane stays after its command exits, to read the screen left."""

    def __init__(self, tmp_path: Path) -> None:
        conf = tmp_path / "tmux.conf"
        # "screen": its terminfo is in ncurses-base, on every Debian system.
        conf.write_text(
            "set -g remain-on-exit on\nset -g default-terminal screen\nset -g default-size 80x24\n"
        )
        self.base = ["tmux", "-L", "m2gate-%d-%s" % (os.getpid(), tmp_path.name), "-f", str(conf)]
        self.server_pid = 0
        self.tmp_path = tmp_path

    def run(self, *args: str) -> str:
        out = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, timeout=30, check=True
        )
        return out.stdout

    def start(self, session: str, command: list[str]) -> None:
        """Run ``command`` in a new session; its exit status goes to a file.

        (Not tmux's ``pane_dead_status``: tmux 3.3a sometimes left the exited
        command unreaped, a zombie, and never had its status.) The bash in
        between catches SIGINT, so Ctrl-C reaches only the command, which
        gets SIGINT's default disposition back at exec.
        """
        status = self.status_file(session)
        wrapper = 'trap : INT; "$@"; echo $? > "%s.tmp" && mv "%s.tmp" "%s"' % (
            status,
            status,
            status,
        )
        self.run("new-session", "-d", "-s", session, "bash", "-c", wrapper, "top", *command)
        if not self.server_pid:
            self.server_pid = int(self.run("display-message", "-p", "-t", session, "#{pid}"))

    def status_file(self, session: str) -> Path:
        return self.tmp_path / ("%s.status" % session)

    def screen(self, session: str) -> str:
        return self.run("capture-pane", "-p", "-t", session)

    def wait_screen(self, session: str, check: Callable[[str], Any], what: str) -> Any:
        """Until ``check(screen)`` is truthy; a failure shows the last screen."""
        last = [""]

        def probe() -> Any:
            last[0] = self.screen(session)
            return check(last[0])

        try:
            return wait_until(probe, what=what)
        except AssertionError as exc:
            raise AssertionError("%s; the screen:\n%s" % (exc, last[0])) from None

    def wait_exit(self, session: str, what: str) -> str:
        """The exit status of the session's command, once it exited."""
        path = self.status_file(session)
        try:
            wait_until(path.exists, what=what)
        except AssertionError as exc:
            raise AssertionError("%s; the screen:\n%s" % (exc, self.screen(session))) from None
        return path.read_text().strip()

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.run("kill-server")
        if self.server_pid and pid_alive(self.server_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.server_pid, signal.SIGKILL)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    t = Tmux(tmp_path)
    try:
        yield t
    finally:
        t.stop()


def top_command(pidfile: Path) -> list[str]:
    env = ["env", "PYTHONPATH=" + os.environ.get("PYTHONPATH", "")]
    return [*env, *m2gate_command(), "top", "--pidfile", str(pidfile)]


def served(m2gate_server: Callable[..., Any], tmp_path: Path) -> tuple[Path, set[int]]:
    """``m2gate serve -p 2`` with both workers ready; its pidfile and worker pids."""
    pidfile = tmp_path / "m2gate.pid"
    m2gate_server(
        "master_app:application", "-p", "2", "--threads", "2", "--pidfile", str(pidfile),
        "--graceful-timeout", "1",
    )  # fmt: skip
    sock = control_path_for(str(pidfile))
    workers: list[dict[str, Any]] = wait_until(
        lambda: (
            (ws := client.request(sock, "status", timeout=10)["workers"])
            and len(ws) == 2
            and all(w["status"] == "idle" for w in ws)
            and ws
        ),
        what="both workers ready",
    )
    return pidfile, {w["pid"] for w in workers}


def shown_requests(screen: str) -> int:
    match = re.search(r"^requests (\d+) ", screen, re.M)
    return int(match.group(1)) if match else -1


def test_top_shows_each_worker_refreshes_and_quits_on_q(
    mongrel2: Mongrel2, m2gate_server: Callable[..., Any], tmp_path: Path, tmux: Tmux
) -> None:
    pidfile, pids = served(m2gate_server, tmp_path)

    def sleep() -> None:  # keeps one worker busy; answered 503 when the server stops
        with contextlib.suppress(requests.RequestException):
            requests.get(mongrel2.url + "/sleep?s=20", timeout=30)

    threading.Thread(target=sleep, daemon=True).start()
    tmux.start("top", top_command(pidfile))

    def rows(screen: str) -> dict[int, str] | None:
        """Each worker's row, once both are on screen, one of them busy with the sleeper."""
        found = {pid: line for line in screen.splitlines() for pid in pids if " %d " % pid in line}
        states = {line.split()[3] for line in found.values()}
        if len(found) == 2 and states == {"busy", "idle"} and "GET /sleep" in screen:
            return found
        return None

    found = tmux.wait_screen("top", rows, "both workers on top's screen")
    screen = tmux.screen("top")
    assert "WORKER" in screen and "CURRENT REQUEST" in screen
    busy = next(line for line in found.values() if " busy " in line)
    assert re.search(r" \d+\.\ds GET /sleep$", busy.rstrip()), busy  # (the path, no query)

    # It refreshes: requests served meanwhile show up without a key pressed.
    before = shown_requests(screen)
    assert before >= 0, screen
    for _ in range(5):
        assert requests.get(mongrel2.url + "/", timeout=10).status_code == 200
    tmux.wait_screen("top", lambda sc: shown_requests(sc) >= before + 5, "a refreshed count")

    tmux.run("send-keys", "-t", "top", "q")
    status = tmux.wait_exit("top", "top to quit on q")
    assert status == "0"
    # The terminal is restored: the view was drawn on the alternate screen, now gone.
    assert "CURRENT REQUEST" not in tmux.screen("top")


def test_top_quits_cleanly_on_ctrl_c(
    mongrel2: Mongrel2, m2gate_server: Callable[..., Any], tmp_path: Path, tmux: Tmux
) -> None:
    pidfile, pids = served(m2gate_server, tmp_path)
    tmux.start("top", top_command(pidfile))
    tmux.wait_screen("top", lambda sc: all(" %d " % p in sc for p in pids), "top's first frame")
    tmux.run("send-keys", "-t", "top", "C-c")
    status = tmux.wait_exit("top", "top to quit on Ctrl-C")
    assert status == "0"
    screen = tmux.screen("top")
    assert "CURRENT REQUEST" not in screen and "Traceback" not in screen
