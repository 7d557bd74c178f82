"""``--dispatch idle|round-robin|direct`` against a real Mongrel2: who serves which request.

Assertions are on which worker (pid) answered, or on where a request waits
(the master's status document), never on timings: a slow request is a
``/sleep`` of the escapes app that outlives the test's other requests by
far, and the test stops the server (its client gets closed) at teardown.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from m2gate.cli import control as client
from m2gate.ops.pidfile import control_path_for
from m2gate.testing.mongrel2 import Mongrel2
from support import wait_until

pytestmark = pytest.mark.integration

Factory = Callable[..., Any]
APP = "escapes:application"
SLOW = "/sleep?s=120"  # never meant to finish: the server is stopped under it


class Fleet:
    """An ``m2gate serve -p 2 --threads 1 --dispatch MODE`` with a pidfile, and its status."""

    def __init__(self, m2gate_server: Factory, tmp_path: Path, mode: str, *args: str) -> None:
        self.pidfile = tmp_path / ("m2gate-%s.pid" % mode)
        self.server = m2gate_server(
            APP,
            "-p",
            "2",
            "--threads",
            "1",
            "--dispatch",
            mode,
            "--pidfile",
            str(self.pidfile),
            "--graceful-timeout",
            "5",
            *args,
            ready_path="/pid",
            ready_timeout=60.0,
        )
        self.sock = control_path_for(str(self.pidfile))
        wait_until(self.all_ready, "both workers ready", timeout=60.0)

    def status(self) -> dict[str, Any]:
        return client.request(self.sock, "status", timeout=10)

    def all_ready(self) -> bool:
        workers = self.status()["workers"]
        return len(workers) == 2 and all(w["status"] != "starting" for w in workers)

    def pids(self) -> set[int]:
        return {w["pid"] for w in self.status()["workers"]}

    def running(self, path: str) -> dict[str, Any] | None:
        """The worker whose in-flight list holds a request for ``path``."""
        for w in self.status()["workers"]:
            if any(e["request"].endswith(path) for e in w["in_flight"]):
                return w
        return None

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.server.args[:1], *args, "--pidfile", str(self.pidfile)],
            capture_output=True,
            text=True,
            timeout=60,
        )


def pid_of(m2: Mongrel2, timeout: float = 30.0) -> int:
    """One request on a connection of its own; the pid of the worker that answered."""
    resp = requests.get(m2.url + "/pid", timeout=timeout, headers={"Connection": "close"})
    assert resp.status_code == 200, resp.text
    return int(resp.text)


def in_background(path: str, m2: Mongrel2, out: list[Any]) -> threading.Thread:
    """GET ``path`` on a thread; its response (or the exception) lands in ``out``."""

    def run() -> None:
        try:
            out.append(requests.get(m2.url + path, timeout=180))
        except requests.RequestException as exc:  # the server was stopped under it
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("mode", ["idle", "round-robin", "direct"])
def test_each_mode_serves_and_counts_its_requests(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path, mode: str
) -> None:
    fleet = Fleet(m2gate_server, tmp_path, mode)
    before = fleet.status()["requests"]
    answered = [pid_of(mongrel2) for _ in range(20)]
    assert set(answered) <= fleet.pids()
    # direct: the master hears the count in the workers' heartbeats (once a second).
    wait_until(lambda: fleet.status()["requests"] >= before + 20, "20 requests counted")
    assert "dispatch %s" % mode in fleet.server.output
    assert fleet.server.stop() == 0


def test_idle_answers_a_fast_request_on_the_free_worker_while_the_other_runs_a_slow_one(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    # A short graceful stop: the slow request is only there to be waited behind.
    fleet = Fleet(m2gate_server, tmp_path, "idle", "--graceful-timeout", "1")
    slow: list[Any] = []
    in_background(SLOW, mongrel2, slow)
    busy = wait_until(lambda: fleet.running("/sleep"), "the slow request in flight")
    (free,) = fleet.pids() - {busy["pid"]}
    for _ in range(5):
        assert pid_of(mongrel2) == free  # never behind the slow one
    assert slow == []  # still running: the fast ones did not wait for it
    assert fleet.running("/sleep") is not None


def test_round_robin_puts_a_fast_request_behind_a_slow_one(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    # A short graceful stop: the slow request is only there to be waited behind.
    fleet = Fleet(m2gate_server, tmp_path, "round-robin", "--graceful-timeout", "1")
    slow: list[Any] = []
    in_background(SLOW, mongrel2, slow)
    busy = wait_until(lambda: fleet.running("/sleep"), "the slow request in flight")
    (free,) = fleet.pids() - {busy["pid"]}
    # Strict turns over two workers: of two new requests one is the busy worker's.
    fast: list[Any] = []
    for _ in range(2):
        in_background("/pid", mongrel2, fast)

    def queued_behind() -> bool:
        w = fleet.running("/sleep")
        return w is not None and any(e["request"].endswith("/pid") for e in w["in_flight"])

    wait_until(queued_behind, "a fast request waiting behind the slow one")
    wait_until(lambda: len(fast) == 1, "the other fast request answered")
    assert fast[0].status_code == 200 and int(fast[0].text) == free
    assert queued_behind()  # the slow one has not finished: its neighbour still waits
    assert slow == []


def test_direct_every_worker_pulls_and_reload_replaces_them(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    fleet = Fleet(m2gate_server, tmp_path, "direct")
    old = fleet.pids()
    seen: set[int] = set()
    wait_until(lambda: seen.add(pid_of(mongrel2)) or seen == old, "both workers answering")
    # The master routes nothing: nothing is ever in flight in its books.
    assert all(w["in_flight"] == [] for w in fleet.status()["workers"])
    assert fleet.command("reload").returncode == 0

    def reloaded() -> bool:
        doc = fleet.status()
        pids = {w["pid"] for w in doc["workers"]}
        return doc["generation"] == 2 and len(pids) == 2 and not pids & old

    wait_until(reloaded, "generation 2 serving, the old workers gone", timeout=60.0)
    new = fleet.pids()
    seen.clear()

    # Lossy by design: a request Mongrel2 had pushed to a leaving worker is lost,
    # so short timeouts here; every answer comes from a new worker.
    def answered_by_new() -> bool:
        try:
            seen.add(pid_of(mongrel2, timeout=5.0))
        except requests.Timeout:
            pass
        return seen == new

    wait_until(answered_by_new, "both new workers answering", timeout=60.0)
    assert fleet.server.stop() == 0


def test_direct_recycles_at_max_requests(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    fleet = Fleet(m2gate_server, tmp_path, "direct", "--max-requests", "5")
    first = fleet.pids()

    def recycled() -> bool:
        try:
            pid_of(mongrel2, timeout=5.0)
        except requests.Timeout:
            pass  # lost to a leaving worker's PULL (documented)
        return not fleet.pids() & first

    wait_until(recycled, "both first workers recycled", timeout=120.0)
    assert fleet.status()["restarts"] >= 2
    assert "max-requests" in fleet.server.output


@pytest.mark.parametrize(
    ("setting", "args"),
    [("harakiri", ["--harakiri", "5"]), ("sticky", ["--sticky", "conn"])],
)
def test_direct_refuses_what_only_the_master_can_do_with_one_line(
    mongrel2: Mongrel2, m2gate_server: Factory, setting: str, args: list[str]
) -> None:
    server = m2gate_server(APP, "-p", "2", "--dispatch", "direct", *args, wait=False)
    assert server.proc.wait(timeout=30) != 0
    errors = [line for line in server.output.splitlines() if line.startswith("m2gate: error:")]
    assert len(errors) == 1 and setting in errors[0] and "direct" in errors[0], server.output
