"""The master's message routing over real in-process ZeroMQ sockets (supervisor/router.py).

Mongrel2 is a PUSH into the router's PULL, one worker is a DEALER on its
ROUTER, and the master's "PUB" is a PUSH whose PULL end the test reads (same
send calls, without a SUB's subscription race).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import zmq

from m2gate.config.settings import Config
from m2gate.protocol.peek import Peeked, peek
from m2gate.supervisor.actions import Action, Send, Spawn
from m2gate.supervisor.handoff import Decision, Dispatcher
from m2gate.supervisor.lifecycle import Lifecycle
from m2gate.supervisor.router import Router
from m2gate.supervisor.state import Worker, WorkerState
from m2gate.supervisor.watch import Watcher
from m2gate.supervisor.wire import (
    DONE,
    READY,
    STARTED,
    echoed,
    encode_report,
    encode_reports,
    probe_base,
)

from .helpers import SENDER, control, message, request_headers

_names = itertools.count()


@dataclass
class Rig:
    router: Router
    life: Lifecycle
    worker: Worker
    dealer: zmq.Socket[Any]  # the worker's end
    mongrel2: zmq.Socket[Any]  # pushes into the router's PULL
    replies: zmq.Socket[Any]  # what the master published
    ran: list[Action]

    def deliver(self, raw: bytes) -> None:
        self.mongrel2.send(raw)
        assert self.router.pull.poll(1000)
        self.router.on_pull(1.0)

    def to_worker(self) -> list[bytes]:
        assert self.dealer.poll(1000), "nothing reached the worker"
        frames: list[bytes] = self.dealer.recv_multipart()
        return frames

    def published(self) -> bytes:
        assert self.replies.poll(1000), "the master published nothing"
        data: bytes = self.replies.recv()
        return data

    def answer(self) -> bytes:
        """The master's own answer: the response, then the close (an empty reply)."""
        reply = self.published()
        close = self.published()
        assert close.endswith(b", ") and close.split(b" ")[0] == reply.split(b" ")[0]
        return reply


@pytest.fixture
def rig() -> Iterator[Rig]:
    ctx: zmq.Context[Any] = zmq.Context()
    n = next(_names)
    pull, mongrel2 = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.bind("inproc://m2-%d" % n)
    mongrel2.connect("inproc://m2-%d" % n)
    router_sock = ctx.socket(zmq.ROUTER)
    router_sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router_sock.bind("inproc://workers-%d" % n)
    pub, replies = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    replies.bind("inproc://pub-%d" % n)
    pub.connect("inproc://pub-%d" % n)
    cfg = Config(processes=1, threads=1, send_ident="m2gate-test", recv_ident="")
    disp = Dispatcher(queue_size=1)
    life = Lifecycle(cfg, disp, pid=42)
    ran: list[Action] = []
    router = Router(cfg, disp, life, Watcher(cfg), (pull, router_sock, pub), ran.extend)
    (spawn,) = life.start(0.0)
    assert isinstance(spawn, Spawn)
    w = spawn.worker
    router.by_probe[w.probe] = w.wid
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, w.wid)
    dealer.connect("inproc://workers-%d" % n)
    dealer.send_multipart([b"hello", b"{}"])  # the ROUTER learns the worker's id
    assert router_sock.poll(1000)
    router.on_router(0.5)
    yield Rig(router, life, w, dealer, mongrel2, replies, ran)
    ctx.destroy(linger=0)


def request(conn_id: int) -> bytes:
    return message(request_headers("GET", "/x"), conn_id=conn_id)


def test_nothing_reaches_a_worker_before_its_probe_comes_back(rig: Rig) -> None:
    rig.deliver(request(1))
    assert len(rig.router.disp.queue) == 1 and not rig.dealer.poll(50)
    rig.deliver(control("disconnect", conn_id=echoed(rig.worker.probe + 3)))
    assert rig.worker.state is WorkerState.READY
    assert Send(rig.worker, READY) in rig.ran
    assert rig.to_worker() == [request(1)]  # the queued request follows


def test_the_masters_own_probe_proves_its_reply_path(rig: Rig) -> None:
    assert rig.router.pub_ready_at is None
    rig.router.probe_pub(1.0)
    assert rig.published().startswith(b"m2gate-test ")
    rig.deliver(control("disconnect", conn_id=echoed(probe_base(0, rig.life.probe_block) + 1)))
    assert rig.router.pub_ready_at == 1.0


def ready(rig: Rig) -> None:
    rig.deliver(control("disconnect", conn_id=echoed(rig.worker.probe)))
    assert rig.worker.state is WorkerState.READY


def test_done_frees_the_thread_for_the_next_queued_request(rig: Rig) -> None:
    ready(rig)
    rig.deliver(request(1))
    rig.deliver(request(2))
    assert rig.to_worker() == [request(1)] and len(rig.router.disp.queue) == 1
    rig.dealer.send_multipart([DONE, encode_report(SENDER.decode(), 1, 0)])
    assert rig.router.router.poll(1000)
    rig.router.on_router(2.0)
    assert rig.to_worker() == [request(2)]
    assert rig.worker.requests == 1


def test_a_full_queue_and_a_stopping_master_answer_503(rig: Rig) -> None:
    rig.deliver(request(1))  # queued (the worker is not ready)
    rig.deliver(request(2))  # the queue holds one: 503
    assert b"503 Service Unavailable" in rig.answer()
    assert rig.router.rejected == 1
    rig.life.begin_stop("test", 2.0)
    rig.deliver(request(3))
    assert b"503 Service Unavailable" in rig.answer()
    assert rig.router.rejected == 2


def test_a_worker_gone_with_requests_in_flight_gets_them_answered(rig: Rig) -> None:
    ready(rig)
    rig.deliver(request(5))
    rig.worker.answer = "504 Gateway Timeout"
    rig.router.worker_gone(rig.worker, -9, 3.0)
    reply = rig.answer()
    assert b" 1:5, HTTP/1.1 504 Gateway Timeout\r\n" in reply
    assert rig.router.disp.owner == {}


def deliver_at(rig: Rig, raw: bytes, now: float) -> None:
    """``deliver`` at a clock far enough from 0 for the master's rate-limited warnings."""
    rig.mongrel2.send(raw)
    assert rig.router.pull.poll(1000)
    rig.router.on_pull(now)


def test_a_request_before_any_worker_is_ready_is_not_called_saturation(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="m2gate.master")
    deliver_at(rig, request(1), 100.0)
    assert len(rig.router.disp.queue) == 1
    texts = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("INFO", "no worker is ready yet: 1 request(s) wait in the master for one") in texts
    assert not any("busy" in text for _, text in texts)


def test_every_thread_busy_is_still_a_warning(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    ready(rig)
    deliver_at(rig, request(1), 100.0)
    assert rig.to_worker() == [request(1)]  # its only thread is busy now
    deliver_at(rig, request(2), 100.0)
    assert len(rig.router.disp.queue) == 1
    texts = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("WARNING", "every worker thread is busy: 1 request(s) wait in the master") in texts
    assert not any("ready yet" in text for _, text in texts)


def frames_in(rig: Rig, *messages: list[bytes]) -> None:
    """Send ``messages`` from the worker, then let the router read them in one batch."""
    for m in messages:
        rig.dealer.send_multipart(m)
    assert rig.router.router.poll(1000)  # inproc: the rest are behind it in the same pipe
    rig.router.on_router(2.0)


def test_one_done_frame_reports_many_requests(rig: Rig) -> None:
    ready(rig)
    for _ in range(3):
        rig.deliver(request(1))  # pipelined: all on the connection's worker
    assert [rig.to_worker() for _ in range(3)] == [[request(1)]] * 3
    rig.deliver(request(2))  # its one thread is busy: queued
    reports = [(SENDER.decode(), 1, 0)] * 3 + [(SENDER.decode(), 99, 0)]  # 99: not in flight
    frames_in(rig, [DONE, encode_reports(reports)])
    assert rig.worker.requests == 3 and rig.worker.inflight.keys() == {(SENDER.decode(), 2)}
    assert rig.to_worker() == [request(2)]


def test_garbled_reports_are_ignored(rig: Rig) -> None:
    ready(rig)
    rig.deliver(request(1))
    good = encode_report(SENDER.decode(), 1, 0)
    frames_in(rig, [DONE, good[:-3]], [DONE, b"1 2"], [DONE], [DONE, good, b"x"], [STARTED, b"?"])
    assert rig.worker.requests == 0 and rig.worker.load == 1
    frames_in(rig, [DONE, good])
    assert rig.worker.requests == 1 and rig.worker.load == 0


def test_an_exception_for_one_frame_does_not_end_the_batch(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ready(rig)
    rig.deliver(request(1))

    def broken(*args: object) -> bool:
        raise RuntimeError("a bug")

    monkeypatch.setattr(rig.router.disp, "mark_started", broken)
    started = encode_report(SENDER.decode(), 1, 0)
    frames_in(rig, [STARTED, started], [DONE, encode_report(SENDER.decode(), 1, 0)])
    assert rig.worker.requests == 1  # the frame after the failing one was handled
    assert "failed to handle a worker's frame" in caplog.text


def test_an_exception_for_one_message_does_not_end_the_batch(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ready(rig)
    rig.router.disp.workers[rig.worker.wid].capacity = 4
    assign = rig.router.disp.assign

    def broken(p: Peeked, raw: bytes, now: float) -> Decision:
        if p[1] == 2:
            raise RuntimeError("a bug")
        return assign(p, raw, now)

    monkeypatch.setattr(rig.router.disp, "assign", broken)
    for conn_id in (1, 2, 3):
        rig.mongrel2.send(request(conn_id))
    assert rig.router.pull.poll(1000)
    rig.router.on_pull(1.0)
    assert [rig.to_worker(), rig.to_worker()] == [[request(1)], [request(3)]]
    assert "failed to route a message" in caplog.text


def test_a_request_answered_by_the_master_is_parsed_for_its_method() -> None:
    """A plain request is never parsed by the master, until it must answer it itself."""
    raw = message(request_headers("HEAD", "/x"), conn_id=4)
    assert peek(raw)[5] is None
    ctx: zmq.Context[Any] = zmq.Context()
    pub, replies = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    try:
        replies.bind("inproc://answer")
        pub.connect("inproc://answer")
        cfg = Config(processes=1, send_ident="m2gate-test", recv_ident="")
        disp = Dispatcher()
        router = Router(
            cfg, disp, Lifecycle(cfg, disp, 1), Watcher(cfg), (pub, pub, pub), lambda a: None
        )
        router.answer(SENDER.decode(), 4, "503 Service Unavailable", raw)
        assert replies.poll(1000)
        reply = replies.recv()
        assert b" 503 Service Unavailable\r\n" in reply
        assert reply.endswith(b"\r\n\r\n")  # no body: the answer to a HEAD
    finally:
        ctx.destroy(linger=0)


def test_a_worker_probed_before_its_hello_is_ready_only_when_the_hello_arrives(rig: Rig) -> None:
    """Its reply path proven first: the ROUTER cannot reach it yet ("Host unreachable")."""
    rig.router.greeted.clear()  # as if its hello were still on its way
    rig.deliver(control("disconnect", conn_id=echoed(rig.worker.probe)))
    assert rig.worker.state is WorkerState.STARTING
    rig.deliver(request(1))
    assert len(rig.router.disp.queue) == 1  # nothing sent to an unreachable worker
    rig.dealer.send_multipart([b"hello", b"{}"])
    assert rig.router.router.poll(1000)
    rig.router.on_router(1.0)
    assert rig.worker.state is WorkerState.READY
    assert rig.to_worker() == [request(1)]
