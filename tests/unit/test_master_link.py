"""The worker's end of the hand-off (supervisor/child.py MasterLink): done reports, batched.

A report made on the thread that receives waits until its ``recv`` would
block (or the batch is full, or old); a report made on any other thread goes
at once, with whatever waited. The master's end is a real ROUTER here.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from m2gate.conn.connection import Connection
from m2gate.supervisor import child
from m2gate.supervisor.child import MasterLink
from m2gate.supervisor.wire import DONE, HELLO, STARTED, decode_reports

_names = itertools.count()
WID = b"w1"


class Master:
    """The master's ROUTER: what reached it, frame by frame."""

    def __init__(self, router: zmq.Socket[Any]) -> None:
        self.router = router

    def reports(self, kind: bytes = DONE, timeout_ms: int = 1000) -> list[tuple[bytes, list[int]]]:
        """The next ``kind`` frames that arrive together: (socket identity, conn ids) each."""
        out: list[tuple[bytes, list[int]]] = []
        while self.router.poll(timeout_ms if not out else 0):
            ident, frame_kind, *rest = self.router.recv_multipart()
            if frame_kind == kind:
                out.append((ident, [i for _, _, ids in decode_reports(rest[0]) for i in ids]))
        return out

    def quiet(self, kind: bytes = DONE) -> bool:
        """No ``kind`` frame came within 100 ms."""
        return self.reports(kind, timeout_ms=100) == []


@pytest.fixture
def link() -> Iterator[tuple[MasterLink, Master]]:
    ctx: zmq.Context[Any] = zmq.Context()
    endpoint = "inproc://master-link-%d" % next(_names)
    router = ctx.socket(zmq.ROUTER)
    router.bind(endpoint)
    link = MasterLink(ctx, endpoint, WID, os.getppid())
    link.send(HELLO, b"{}")  # the ROUTER learns the worker's id
    assert router.poll(1000) and router.recv_multipart()[1] == HELLO
    try:
        yield link, Master(router)
    finally:
        link.close(linger_s=0)
        router.close(linger=0)
        ctx.term()


def conn(conn_id: int, epoch: int = 0) -> Connection:
    c = Connection("S", conn_id, b"S")
    c.epoch = epoch
    return c


def receive_one(link: MasterLink, master: Master) -> None:
    """The calling thread receives a message (without blocking): it is the receiver now."""
    master.router.send_multipart([WID, b"raw"])
    assert link.dealer.poll(1000)
    assert link.recv(1000) == b"raw"


def test_reports_of_the_receiving_thread_wait_until_recv_would_block(
    link: tuple[MasterLink, Master],
) -> None:
    lk, master = link
    receive_one(lk, master)
    lk.done(conn(1))
    lk.done(conn(2))
    assert master.quiet()  # held: this thread will be back in recv
    assert lk.recv(10) is None  # nothing to receive: it would block, so they go first
    assert master.reports() == [(WID, [1, 2])]  # one frame, on the main DEALER


def test_a_report_on_another_thread_goes_at_once_with_what_waited(
    link: tuple[MasterLink, Master],
) -> None:
    lk, master = link
    receive_one(lk, master)
    lk.done(conn(1))
    other = threading.Thread(target=lk.done, args=(conn(2),))
    other.start()
    other.join()
    assert master.reports() == [(WID + b".0", [1, 2])]  # that thread's own DEALER
    other = threading.Thread(target=lk.done, args=(conn(3),))
    other.start()
    other.join()
    assert master.reports() == [(WID + b".1", [3])]
    assert lk.recv(10) is None and master.quiet()  # nothing was left waiting


def test_a_full_batch_goes_without_waiting_for_recv(link: tuple[MasterLink, Master]) -> None:
    lk, master = link
    receive_one(lk, master)
    for i in range(child.REPORT_BATCH - 1):
        lk.done(conn(i))
    assert master.quiet()
    lk.done(conn(999))
    assert master.reports() == [(WID + b".0", [*range(child.REPORT_BATCH - 1), 999])]


def test_old_reports_go_when_recv_returns_a_message(
    link: tuple[MasterLink, Master], monkeypatch: pytest.MonkeyPatch
) -> None:
    lk, master = link
    monkeypatch.setattr(child, "REPORT_DELAY", 3600.0)
    receive_one(lk, master)
    lk.done(conn(1))
    receive_one(lk, master)  # young: still held
    assert master.quiet()
    monkeypatch.setattr(child, "REPORT_DELAY", 0.0)
    receive_one(lk, master)  # old enough: sent before the message is served
    assert master.reports() == [(WID, [1])]


def test_started_goes_at_once_with_its_epoch(link: tuple[MasterLink, Master]) -> None:
    lk, master = link
    receive_one(lk, master)
    lk.done(conn(6))  # held ...
    lk.started(conn(7, epoch=2))  # ... but this one cannot wait
    assert master.reports(STARTED) == [(WID + b".0", [7])]
    lk.close(linger_s=1.0)
    assert master.reports() == [(WID, [6])]


def test_reports_carry_sender_and_epoch(link: tuple[MasterLink, Master]) -> None:
    lk, master = link
    lk.done(conn(7, epoch=2))
    assert master.router.poll(1000)
    frames = master.router.recv_multipart()
    while frames[1] != DONE:
        assert master.router.poll(1000)
        frames = master.router.recv_multipart()
    assert decode_reports(frames[2]) == [("S", 2, [7])]


def test_close_sends_what_waited(link: tuple[MasterLink, Master]) -> None:
    lk, master = link
    receive_one(lk, master)
    lk.done(conn(5))
    lk.close(linger_s=1.0)
    assert master.reports() == [(WID, [5])]


def test_a_thread_that_stopped_receiving_sends_at_once(link: tuple[MasterLink, Master]) -> None:
    # Leader/follower: another thread took over receiving while this one serves.
    lk, master = link
    receive_one(lk, master)
    follower = threading.Thread(target=lk.recv, args=(10,))
    follower.start()
    follower.join()
    lk.done(conn(8))
    assert master.reports() == [(WID + b".0", [8])]
