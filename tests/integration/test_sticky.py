"""Sticky routing through a real Mongrel2: ``-p 3 --sticky conn`` and ``--sticky-cookie sid``.

The app answers ``/pid`` with the pid of the worker that served it. The
cookie tests also check *where* each value lands: the worker whose slot
(from ``m2gate status``) is the value's slot on the ring, before and after a
reload. Websockets do not go through the master (its workers run threaded
WSGI apps, which answer websocket frames 400), so there is no websocket test.
"""

from __future__ import annotations

import http.client
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from test_master_reload import status, wait_generation

from m2gate.ops.pidfile import control_path_for
from m2gate.supervisor.sticky import Ring
from m2gate.testing.mongrel2 import HandlerSpec, Mongrel2

pytestmark = pytest.mark.integration

APP = "master_app:application"
VALUES = ["user-%d" % i for i in range(12)]


def pid_over(conn: http.client.HTTPConnection, path: str = "/pid", **headers: str) -> int:
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200, body
    assert not resp.will_close, "the connection was not kept alive"
    return int(body)


def fresh_pid(m2: Mongrel2, **headers: str) -> int:
    """One request on a connection of its own."""
    conn = http.client.HTTPConnection("127.0.0.1", m2.port, timeout=30)
    try:
        conn.request("GET", "/pid", headers={"Connection": "close", **headers})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body
        return int(body)
    finally:
        conn.close()


def serving_pids(sock: str) -> set[int]:
    return {w["pid"] for w in status(sock)["workers"]}


def start(
    m2gate_server: Callable[..., Any], tmp_path: Path, *args: str, m2: Mongrel2 | None = None
) -> tuple[Any, str]:
    pidfile = tmp_path / "m2gate.pid"
    server = m2gate_server(
        APP, "-p", "3", "--threads", "2", "--pidfile", str(pidfile), *args, m2=m2
    )
    sock = control_path_for(str(pidfile))
    wait_all_ready(sock)
    return server, sock


def wait_all_ready(sock: str) -> None:
    """Until all three workers of the serving generation are ready (not starting)."""
    doc = status(sock)
    for _ in range(600):
        doc = status(sock)
        ready = [w for w in doc["workers"] if w["status"] != "starting"]
        if len(ready) == 3 and len(doc["workers"]) == 3:
            return
        threading.Event().wait(0.05)
    raise AssertionError("workers not ready: %s" % doc)


def keep_alive_pids(m2: Mongrel2, count: int) -> list[int]:
    conn = http.client.HTTPConnection("127.0.0.1", m2.port, timeout=30)
    try:
        return [pid_over(conn) for _ in range(count)]
    finally:
        conn.close()


def test_conn_keeps_each_keep_alive_connection_on_one_worker(
    mongrel2: Mongrel2, m2gate_server: Callable[..., Any], tmp_path: Path
) -> None:
    _server, sock = start(m2gate_server, tmp_path, "--sticky", "conn")
    workers = serving_pids(sock)
    # Other clients keep workers busy meanwhile, so idle dispatch would move it.
    stop = threading.Event()
    errors: list[BaseException] = []

    def noise() -> None:
        try:
            while not stop.is_set():
                requests.get(mongrel2.url + "/sleep?s=0.01", timeout=30).raise_for_status()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=noise) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        sessions = [keep_alive_pids(mongrel2, 25) for _ in range(6)]
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    for pids in sessions:
        assert len(set(pids)) == 1, pids  # every request of the connection: one worker
        assert set(pids) <= workers
    # Separate connections spread over the workers (60 connections, 3 slots).
    spread = {fresh_pid(mongrel2) for _ in range(60)}
    assert spread == workers


def test_without_sticky_one_keep_alive_connection_moves_between_workers(
    mongrel2: Mongrel2, m2gate_server: Callable[..., Any], tmp_path: Path
) -> None:
    """The control for the test above: idle dispatch does move a connection."""
    start(m2gate_server, tmp_path)
    pids = keep_alive_pids(mongrel2, 30)
    assert len(set(pids)) > 1, pids


def cookie_pids(m2: Mongrel2, rounds: int = 3) -> dict[str, set[int]]:
    """Each value's pids, each request on a new connection."""
    seen: dict[str, set[int]] = {v: set() for v in VALUES}
    for _ in range(rounds):
        for value in VALUES:
            seen[value].add(fresh_pid(m2, Cookie="theme=dark; sid=%s; x=1" % value))
    return seen


def check_slots(seen: dict[str, set[int]], sock: str, generation: int) -> None:
    """Each value on one pid: the worker of its ring slot, of ``generation``."""
    by_slot = {
        w["slot"]: w["pid"]
        for w in status(sock)["workers"]
        if w["generation"] == generation and w["status"] != "retiring"
    }
    assert sorted(by_slot) == [0, 1, 2]
    ring = Ring(3)
    for value, pids in seen.items():
        assert pids == {by_slot[ring.slot(value.encode())]}, (value, pids, by_slot)
    assert len(set().union(*seen.values())) == len({ring.slot(v.encode()) for v in VALUES}) == 3


@pytest.mark.parametrize("protocol", ["tnetstring", "json"])
def test_cookie_value_picks_the_worker_and_survives_a_reload(
    protocol: str,
    mongrel2_factory: Callable[..., Mongrel2],
    m2gate_server: Callable[..., Any],
    tmp_path: Path,
) -> None:
    mongrel2 = mongrel2_factory(handlers=[HandlerSpec(protocol=protocol)])
    assert mongrel2.handler.protocol == protocol
    server, sock = start(m2gate_server, tmp_path, "--sticky-cookie", "sid", m2=mongrel2)
    first = cookie_pids(mongrel2)
    check_slots(first, sock, 1)
    # No cookie (or another one): any free worker, as without sticky routing.
    assert {fresh_pid(mongrel2, Cookie="theme=dark") for _ in range(6)} <= serving_pids(sock)

    server.signal(signal.SIGHUP)
    wait_generation(sock, 2)
    after = cookie_pids(mongrel2)
    check_slots(after, sock, 2)
    old = set().union(*first.values())
    assert not old & set().union(*after.values()), "served by the old generation"


GATED_APP = """
import os
import time
from pathlib import Path

GATE = Path(os.environ["M2GATE_TEST_GATE"])


def application(environ, start_response):
    if environ["PATH_INFO"] == "/hold":
        deadline = time.monotonic() + 60
        while not GATE.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    body = b"%d" % os.getpid()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def wait_status(sock: str, check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for _ in range(1200):
        doc = status(sock)
        if check(doc):
            return doc
        threading.Event().wait(0.05)
    raise AssertionError("%s never happened: %s" % (what, doc))


def test_a_request_waits_for_its_busy_worker_without_holding_up_the_others(
    mongrel2: Mongrel2, m2gate_server: Callable[..., Any], tmp_path: Path
) -> None:
    """One thread per worker, no prefetch: slot 0's worker is held until the test opens a gate."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "gated_pid.py").write_text(GATED_APP)
    gate = tmp_path / "gate"
    pidfile = tmp_path / "m2gate.pid"
    m2gate_server(
        "gated_pid:application",
        *("-p", "3", "--threads", "1", "--prefetch", "0", "--pidfile", str(pidfile)),
        *("--sticky-cookie", "sid", "--queue-timeout", "120"),
        cwd=app_dir,
        env={"M2GATE_TEST_GATE": str(gate)},
    )
    sock = control_path_for(str(pidfile))
    wait_all_ready(sock)
    ring = Ring(3)
    v0 = next(v for v in VALUES if ring.slot(v.encode()) == 0)
    v1 = next(v for v in VALUES if ring.slot(v.encode()) == 1)
    results: dict[str, int] = {}

    def get(name: str, path: str, value: str) -> None:
        r = requests.get(mongrel2.url + path, cookies={"sid": value}, timeout=120)
        r.raise_for_status()
        results[name] = int(r.text)

    holder = threading.Thread(target=get, args=("held", "/hold", v0))
    waiter = threading.Thread(target=get, args=("waited", "/pid", v0))
    try:
        holder.start()
        wait_status(
            sock,
            lambda d: any(
                w["slot"] == 0 and [e["request"] for e in w["in_flight"]] == ["GET /hold"]
                for w in d["workers"]
            ),
            "slot 0 serving /hold",
        )
        waiter.start()
        wait_status(sock, lambda d: d["queued"] == 1, "a request waiting for slot 0")
        # Meanwhile slot 1's value, and a request without the cookie, are served.
        other = fresh_pid(mongrel2, Cookie="sid=%s" % v1)
        free = fresh_pid(mongrel2)
        doc = status(sock)
        assert doc["queued"] == 1 and "waited" not in results, "the waiting request moved"
        by_slot = {w["slot"]: w["pid"] for w in doc["workers"]}
        assert other == by_slot[1]
        assert free != by_slot[0]  # slot 0's only thread is held
    finally:
        gate.touch()
        holder.join(120)
        waiter.join(120)
    assert results["held"] == results["waited"] == by_slot[0]
