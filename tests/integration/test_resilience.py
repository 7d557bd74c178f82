"""Nothing silently lost, and Mongrel2 restarts survived (issue 11, points 3 and 7).

Every test goes through the real Mongrel2 with real clients, and each
request names itself (``/tag?tag=T`` answers ``answer for T from PID``), so
a client that got another's answer, or none, is seen.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from m2gate.cli import control as client
from m2gate.ops.pidfile import control_path_for
from m2gate.testing.mongrel2 import Mongrel2
from support import wait_until

pytestmark = pytest.mark.integration

Factory = Callable[..., Any]
APP = "frontend_app:application"


def status(pidfile: Path) -> dict[str, Any]:
    return client.request(control_path_for(str(pidfile)), "status", timeout=10)


def send(m2: Mongrel2, path: str, extra: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", m2.port), timeout=30)
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode() + extra)
    return sock


def read_all(sock: socket.socket, timeout: float = 30.0, until_eof: bool = False) -> bytes:
    """A whole Content-Length framed response (or, ``until_eof``, all until EOF or timeout)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            if not until_eof and b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        if len(body) >= int(line.split(b":", 1)[1]):
                            return data
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except OSError as exc:
        return data + b"<%s>" % type(exc).__name__.encode()


class Clients:
    """Requests on their own connections, each read whole on its own thread."""

    def __init__(self, m2: Mongrel2) -> None:
        self.m2 = m2
        self.got: dict[str, bytes] = {}
        self.threads: list[threading.Thread] = []

    def start(self, tag: str, path: str = "/tag") -> None:
        sep = "&" if "?" in path else "?"

        def run() -> None:
            try:
                with send(self.m2, "%s%stag=%s" % (path, sep, tag)) as sock:
                    self.got[tag] = read_all(sock)
            except OSError as exc:
                self.got[tag] = b"<%s>" % type(exc).__name__.encode()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)

    def join(self, timeout: float = 40.0) -> dict[str, bytes]:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return dict(self.got)


def own_answer(tag: str, got: bytes) -> bool:
    return got.startswith(b"HTTP/1.1 200") and b"answer for %s from" % tag.encode() in got


def in_flight(pidfile: Path, paths: tuple[str, ...] = ("/slow", "/tag")) -> dict[int, int]:
    """pid -> the test's requests in flight there (not the fixture's readiness probes)."""
    return {
        w["pid"]: sum(e["request"].split(" ")[-1] in paths for e in w["in_flight"])
        for w in status(pidfile)["workers"]
    }


def serving(pidfile: Path, path: str) -> int | None:
    """The pid of the worker with a request for ``path`` in flight."""
    for w in status(pidfile)["workers"]:
        if any(e["request"].split(" ")[-1] == path for e in w["in_flight"]):
            return int(w["pid"])
    return None


def fill(m2: Mongrel2, pidfile: Path, slow: float, extra: int) -> tuple[Clients, Clients]:
    """``-p 2 --threads 1``: a slow request on each worker, then ``extra`` quick ones waiting.

    The quick ones wait in the master's queue and in each worker's prefetch slot.
    """
    wait_until(
        lambda: [w["status"] for w in status(pidfile)["workers"]] == ["idle", "idle"],
        "both workers ready",
    )
    slow_clients, quick = Clients(m2), Clients(m2)
    for i in range(2):
        slow_clients.start("slow%d" % i, "/slow?s=%s" % slow)
    wait_until(lambda: sorted(in_flight(pidfile, ("/slow",)).values()) == [1, 1], "both busy")
    for i in range(extra):
        quick.start("q%d" % i)
    wait_until(
        lambda: sum(in_flight(pidfile).values()) + status(pidfile)["queued"] == 2 + extra,
        "the quick requests waiting",
    )
    return slow_clients, quick


# -- point 3: nothing silently lost ------------------------------------------------


@pytest.mark.parametrize(
    ("how", "dispatch"), [("sigkill", "idle"), ("harakiri", "idle"), ("sigkill", "round-robin")]
)
def test_requests_waiting_for_a_dead_worker_are_served_by_the_others(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path, how: str, dispatch: str
) -> None:
    """Its running request gets 502 (504 for harakiri); the ones no thread of it had begun
    get their own 200 from the other worker or its replacement."""
    pidfile = tmp_path / "m.pid"
    args = ["-p", "2", "--threads", "1", "--dispatch", dispatch, "--pidfile", str(pidfile)]
    if how == "harakiri":
        args += ["--harakiri", "2"]  # both slow requests: both workers are replaced
    m2gate_server(APP, *args)
    slow, quick = fill(mongrel2, pidfile, 5, 4)
    loads = in_flight(pidfile)
    # idle: one running + one prefetched each (two wait in the master); round-robin: all in them
    assert sorted(loads.values()) == ([2, 2] if dispatch == "idle" else [3, 3]), loads
    if how == "sigkill":
        os.kill(next(iter(loads)), signal.SIGKILL)
    got = quick.join()
    assert all(own_answer("q%d" % i, got.get("q%d" % i, b"")) for i in range(4)), got
    slow_got = slow.join()
    statuses = sorted(v[:12] for v in slow_got.values())
    if how == "sigkill":
        assert statuses == [b"HTTP/1.1 200", b"HTTP/1.1 502"], slow_got
    else:
        assert statuses == [b"HTTP/1.1 504"] * 2, slow_got


def test_requests_pipelined_behind_a_killed_one_end_with_its_502(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    """One 502, then the connection closes: no hang, no second status line for the rest."""
    pidfile = tmp_path / "m.pid"
    m2gate_server(APP, "-p", "2", "--threads", "2", "--pidfile", str(pidfile))
    second = b"GET /tag?tag=second HTTP/1.1\r\nHost: x\r\n\r\n"
    sock = send(mongrel2, "/slow?s=30&tag=first", second)
    with sock:
        os.kill(wait_until(lambda: serving(pidfile, "/slow"), "the slow request"), signal.SIGKILL)
        got = read_all(sock, until_eof=True)
    assert got.startswith(b"HTTP/1.1 502"), got
    assert got.count(b"HTTP/1.1 ") == 1, got
    assert b"answer for" not in got and not got.endswith(b"<TimeoutError>"), got


def test_reload_moves_the_requests_no_thread_had_begun_to_the_new_workers(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    """Old workers killed at the graceful timeout: only their running requests are lost."""
    pidfile = tmp_path / "m.pid"
    m2gate_server(
        APP, "-p", "2", "--threads", "1", "--graceful-timeout", "1", "--pidfile", str(pidfile)
    )
    old = set(in_flight(pidfile))
    slow, quick = fill(mongrel2, pidfile, 8, 4)
    client.request(control_path_for(str(pidfile)), "reload", timeout=10)
    got = quick.join()
    assert all(own_answer("q%d" % i, got.get("q%d" % i, b"")) for i in range(4)), got
    assert not any(b"from %d" % pid in v for v in got.values() for pid in old), got
    slow.join()


@pytest.mark.parametrize("mode", ["single", "master"])
def test_requests_waiting_in_mongrel2_before_m2gate_starts_are_answered(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path, mode: str
) -> None:
    """Sent while no handler is connected: each is answered once m2gate is up."""
    waiting = Clients(mongrel2)
    for i in range(3):
        waiting.start("early%d" % i)
    time.sleep(0.5)  # they reached Mongrel2, which has nowhere to send them yet
    args = ["--threads", "4"]
    if mode == "master":
        args += ["-p", "2", "--pidfile", str(tmp_path / "m.pid")]
    m2gate_server(APP, *args, wait=False)
    got = waiting.join()
    assert all(own_answer("early%d" % i, got.get("early%d" % i, b"")) for i in range(3)), got


# -- point 7: Mongrel2 restarted under load ---------------------------------------


def kill_mongrel2(m2: Mongrel2) -> None:
    pid = m2.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    m2.stop()  # reaps it
    m2.start()


@pytest.mark.parametrize("how", ["graceful", "sigkill"])
@pytest.mark.parametrize("mode", ["single", "master"])
def test_mongrel2_restarted_under_load_every_new_client_gets_its_own_answer(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path, mode: str, how: str
) -> None:
    """Old requests in flight on low ids, a restart, new clients on the same ids."""
    args = ["--threads", "4"]
    pidfile = tmp_path / "m.pid"
    if mode == "master":
        args += ["-p", "2", "--dispatch", "idle", "--pidfile", str(pidfile)]
    server = m2gate_server(APP, *args)
    mongrel2.restart()  # ids count from 1 again
    old = Clients(mongrel2)
    for i in range(4):
        old.start("old%d" % i, "/slow?s=1.5")
    for i in range(4):
        old.start("oldq%d" % i)
    time.sleep(0.5)  # in flight on ids 1..8
    if how == "graceful":
        mongrel2.restart()
    else:
        kill_mongrel2(mongrel2)
    new = Clients(mongrel2)
    for i in range(12):
        new.start("new%d" % i, "/slow?s=0.5" if i % 2 else "/tag")
    got = new.join()
    wrong = {t: v for t, v in got.items() if not own_answer(t, v)}
    assert not wrong, wrong
    old.join()
    assert server.proc.poll() is None
