"""The threaded runtime's ``ctl`` keep-alives for requests still being served (busy_keepalive)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from m2gate.adapters.common import EnvironDefaults
from m2gate.adapters.wsgi import WSGIHandler
from m2gate.config.settings import Config
from m2gate.protocol import tnetstring
from m2gate.runtime.options import worker_options
from m2gate.runtime.threaded import ThreadedRuntime

from .helpers import control, message, request_headers
from .test_runtime_base import NoSource, Sink


class Gate:
    """A WSGI app whose ``/hold`` requests wait until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/hold":
            self.entered.release()
            assert self.release.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]


def get(path: str, conn_id: int) -> bytes:
    return message(request_headers("GET", path), path=path.encode(), conn_id=conn_id)


def keepalives(sink: Sink) -> list[tuple[bytes, list[int], Any]]:
    """The ctl replies sent: (uuid, connection ids, decoded ``[key, args]``)."""
    found = []
    for msg in sink.sent:
        uuid, rest = msg.split(b" ", 1)
        length, rest = rest.split(b":", 1)
        ids = rest[: int(length)]
        if not ids.startswith(b"X "):
            continue
        payload = rest[int(length) + 2 :]
        found.append((uuid, [int(i) for i in ids[2:].split()], tnetstring.loads(payload)))
    return found


def runtime(gate: Gate, sink: Sink) -> ThreadedRuntime:
    handler = WSGIHandler(gate, EnvironDefaults(), multithread=True, multiprocess=False)
    worker = ThreadedRuntime(
        NoSource(), sink, handler, threads=3, flush_interval=0, busy_keepalive=5.0
    )
    worker._start()
    return worker


def test_one_keepalive_per_request_in_flight_and_none_once_answered() -> None:
    gate, sink = Gate(), Sink()
    worker = runtime(gate, sink)
    try:
        worker.feed(get("/hold", 3))
        worker.feed(get("/hold", 4))
        assert gate.entered.acquire(timeout=10) and gate.entered.acquire(timeout=10)
        assert worker.send_keepalives() == 2
        (sent,) = keepalives(sink)
        assert sorted(sent[1]) == [3, 4]
        assert sent[2] == [b"ctl", {b"keep-alive": True}]
    finally:
        gate.release.set()
    assert worker.drain(10.0)
    assert worker.send_keepalives() == 0
    assert len(keepalives(sink)) == 1


def test_a_connection_whose_client_left_gets_none() -> None:
    gate, sink = Gate(), Sink()
    worker = runtime(gate, sink)
    try:
        worker.feed(get("/hold", 5))
        worker.feed(get("/hold", 6))
        assert gate.entered.acquire(timeout=10) and gate.entered.acquire(timeout=10)
        worker.feed(control("disconnect", conn_id=5))
        assert worker.send_keepalives() == 1
        assert [ids for _, ids, _ in keepalives(sink)] == [[6]]
    finally:
        gate.release.set()
    assert worker.drain(10.0)


def run_held(interval: float, until: Any, turns: int = 200) -> Sink:
    """Run the loop with one request held on its thread until ``until(sink)``."""
    gate, sink = Gate(), Sink()
    handler = WSGIHandler(gate, EnvironDefaults(), multithread=True, multiprocess=False)
    worker = ThreadedRuntime(
        NoSource(), sink, handler, threads=1, flush_interval=0, busy_keepalive=interval
    )
    runner = threading.Thread(target=worker.run, args=(10.0,))
    runner.start()
    try:
        worker.feed(get("/hold", 8))
        assert gate.entered.acquire(timeout=10)
        for _ in range(turns):
            if until(sink):
                break
            time.sleep(0.025)
    finally:
        gate.release.set()
        worker.stop()
        runner.join(20)
    assert not runner.is_alive()
    return sink


def test_the_run_loop_sends_them_every_interval() -> None:
    sink = run_held(0.05, lambda sink: len(keepalives(sink)) >= 3)
    assert len(keepalives(sink)) >= 3
    assert all(ids == [8] for _, ids, _ in keepalives(sink))


def test_none_when_turned_off() -> None:
    # 0.5 s of loop turns: ten intervals of the test above.
    sink = run_held(0.0, lambda sink: False, turns=20)
    assert keepalives(sink) == []
    assert b"done" in sink.data(8)


def test_the_setting_reaches_the_runtime() -> None:
    assert worker_options(Config())["busy_keepalive"] == 30.0
    assert worker_options(Config(busy_keepalive=0.0))["busy_keepalive"] == 0.0
