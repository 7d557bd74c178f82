"""A worker that dies between two messages of one request (supervisor/router.py).

The races of a SIGKILL made deterministic: the worker's DEALER is closed (the
ROUTER can no longer reach it) before the master reaps it, and the rest of
its request (an upload-done, a pipelined request) arrives in between, or
after the master answered 502 for it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import zmq

from m2gate.supervisor.wire import STOP

from .helpers import SENDER, message, request_headers
from .test_supervisor_router import Rig, ready, rig  # noqa: F401  (the fixture)
from .test_uploads_master import answer_mid_upload, store, upload_done, upload_start

KEY = (SENDER.decode(), 5)


def worker_unreachable(rig: Rig) -> None:  # noqa: F811
    """Close the worker's DEALER and wait until the ROUTER refuses to send to it."""
    rig.dealer.close(linger=0)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            rig.router.router.send_multipart([rig.worker.wid, b"", STOP], zmq.NOBLOCK)
        except zmq.ZMQError:
            return
        time.sleep(0.01)
    raise AssertionError("the ROUTER still reaches a closed DEALER")


def test_an_upload_done_for_an_unreachable_worker_waits_for_its_502(
    rig: Rig,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The CI failure: the upload-done was taken back and served as a new request elsewhere."""
    f = store(rig, tmp_path)
    ready(rig)
    rig.deliver(upload_start(f, 5))
    assert rig.to_worker()
    worker_unreachable(rig)
    rig.deliver(upload_done(f, 5))
    disp = rig.router.disp
    assert not disp.queue, "the rest of a dying worker's request was queued as a new one"
    assert KEY in rig.worker.inflight
    rig.router.worker_gone(rig.worker, -9, 3.0)
    assert b"502 Bad Gateway" in rig.answer()
    assert not f.exists()


def test_a_pipelined_request_for_an_unreachable_worker_neither_loops_nor_moves(
    rig: Rig,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    ready(rig)
    rig.deliver(message(request_headers("GET", "/x"), conn_id=5))
    assert rig.to_worker()
    worker_unreachable(rig)
    rig.deliver(message(request_headers("GET", "/y"), conn_id=5))  # pipelined behind it
    assert not rig.router.disp.queue
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    rig.router.worker_gone(rig.worker, -9, 3.0)
    assert b" 1:5, HTTP/1.1 502 Bad Gateway\r\n" in rig.answer()
    assert not rig.replies.poll(100), "more than one answer for one connection"


def test_a_new_request_for_an_unreachable_worker_is_routed_again(rig: Rig) -> None:  # noqa: F811
    ready(rig)
    worker_unreachable(rig)
    rig.deliver(message(request_headers("GET", "/x"), conn_id=6))
    assert [q.key for q in rig.router.disp.queue] == [(SENDER.decode(), 6)]  # for the next worker
    assert not rig.worker.inflight


def test_what_follows_a_502_for_a_dead_worker_is_dropped(rig: Rig, tmp_path: Path) -> None:  # noqa: F811
    """The worker was reaped before its upload-done (or pipelined request) came in."""
    f = store(rig, tmp_path)
    ready(rig)
    rig.deliver(upload_start(f, 5))
    assert rig.to_worker()
    rig.router.worker_gone(rig.worker, -9, 3.0)
    assert b"502 Bad Gateway" in answer_mid_upload(rig, f, 5)
    rig.deliver(message(request_headers("GET", "/y"), conn_id=5))
    assert not rig.router.disp.queue, "a closed connection's messages became new requests"
    assert not rig.replies.poll(100)


def test_what_a_dead_worker_had_not_begun_is_routed_again(rig: Rig) -> None:  # noqa: F811
    """One thread, one prefetch slot: the request in the slot never ran, it is not lost."""
    rig.router.disp.prefetch, rig.router.disp.queue_size = 1, 10
    ready(rig)
    rig.deliver(message(request_headers("GET", "/x"), conn_id=1))  # on the thread
    rig.deliver(message(request_headers("GET", "/y"), conn_id=2))  # in the slot
    rig.deliver(message(request_headers("POST", "/z"), conn_id=3))  # the master's queue
    assert len(rig.to_worker()) == 1 and len(rig.to_worker()) == 1
    rig.router.worker_gone(rig.worker, -9, 3.0)
    assert b" 1:1, HTTP/1.1 502 Bad Gateway\r\n" in rig.answer()
    assert not rig.replies.poll(100), "more than the running request was answered"
    # conn 2 waits in the master for the replacement, with conn 3
    assert sorted(q.key[1] for q in rig.router.disp.queue) == [2, 3]


def test_a_non_idempotent_request_a_dead_worker_held_is_answered(rig: Rig) -> None:  # noqa: F811
    """It might have started (a done report lost with the worker): 502, never run twice."""
    rig.router.disp.prefetch = 1
    ready(rig)
    rig.deliver(message(request_headers("GET", "/x"), conn_id=1))
    rig.deliver(message(request_headers("POST", "/y"), conn_id=2))
    assert len(rig.to_worker()) == 1 and len(rig.to_worker()) == 1
    rig.router.worker_gone(rig.worker, -9, 3.0)
    answers = sorted(rig.answer().split(b",", 1)[0] for _ in range(2))
    assert answers[0].endswith(b" 1:1") and answers[1].endswith(b" 1:2")
    assert not rig.router.disp.queue


def test_a_request_that_got_a_freed_thread_is_not_taken_back() -> None:
    """Two threads, two slots: once one request is done, the oldest in a slot runs."""
    from m2gate.protocol.peek import peek
    from m2gate.supervisor.handoff import Dispatcher
    from m2gate.supervisor.state import Worker

    d = Dispatcher(prefetch=2)
    w = Worker(b"w0", 1000, 1, 2)
    d.add_worker(w)
    d.mark_ready(b"w0")
    w.room = 2  # its pace gives it both slots (requests a millisecond apart)
    raws = {i: message(request_headers("GET", "/%d" % i), conn_id=i) for i in range(1, 5)}
    for i, raw in raws.items():
        d.assign(peek(raw), raw, i / 1000)  # 1, 2 on threads; 3, 4 in slots
    assert set(d.spare) == {(SENDER.decode(), 3), (SENDER.decode(), 4)}
    d.on_done(b"w0", (SENDER.decode(), 1), 0.005)  # 3 takes the freed thread
    assert d.take_waiting(b"w0") == [raws[4]]
    assert [k[1] for k in w.inflight] == [2, 3]
    assert (SENDER.decode(), 4) not in d.owner
