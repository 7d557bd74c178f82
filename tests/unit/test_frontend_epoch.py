"""Mongrel2's incarnations: a restart voids every connection id (issue 9, item 2).

Connection ids restart at 1 when Mongrel2 restarts. The table forgets the
old incarnation's connections (their writers stop), the dispatcher keeps
their threads counted but never routes to or answers for them, and the
workers hear ``epoch N`` before the next request.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import zmq

from m2gate.conn.connection import Connection, Output
from m2gate.conn.table import ConnectionTable
from m2gate.protocol.messages import Message, parse_message
from m2gate.protocol.peek import peek
from m2gate.runtime.threaded import ThreadedRuntime
from m2gate.supervisor import wire
from m2gate.supervisor.handoff import Dispatcher, Forward
from m2gate.supervisor.state import Worker, WorkerState
from m2gate.transports.zmq_common import FrontendMonitor

from .helpers import SENDER, message, request_headers
from .test_supervisor_router import Rig, ready, request, rig  # noqa: F401  (fixture)


def req(conn_id: int = 1) -> Message:
    return parse_message(raw_req(conn_id))


def raw_req(conn_id: int = 1) -> bytes:
    return message(request_headers(), conn_id=conn_id)


class Sink:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, messages: Sequence[bytes]) -> None:
        self.sent.extend(messages)


def test_reset_forgets_every_connection_and_counts_the_epoch() -> None:
    table = ConnectionTable(Connection)
    busy, _ = table.admit(req(1))
    table.admit(req(1))  # pipelined behind it
    old = table.reset()
    assert old == [(busy, 1)] and table.conns == {} and table.epoch == 1
    fresh, start = table.admit(req(1))  # the same id, a new client
    assert start and fresh is not busy and fresh.epoch == 1
    assert table.done(busy, keep_alive=True) == (None, 0)  # the old one ends quietly
    assert table.conns == {fresh.key: fresh}


def test_a_request_on_a_held_id_asks_whether_mongrel2_restarted() -> None:
    table = ConnectionTable(Connection)
    asked: list[bool] = []
    table.on_held = lambda: asked.append(True) or False
    conn, _ = table.admit(req(3))
    assert asked == []  # a new connection: nothing to ask (the common path)
    assert table.admit(req(3)) == (conn, False)
    assert asked == [True]


class ChangingSource:
    def __init__(self) -> None:
        self.changed = False

    def recv(self, timeout_ms: int) -> bytes | None:
        return None

    def stop_receiving(self) -> None:
        pass

    def frontend_changed(self) -> bool:
        changed, self.changed = self.changed, False
        return changed


def test_the_runtime_stops_writing_to_an_old_incarnations_connection() -> None:
    source, sink, done = ChangingSource(), Sink(), []
    gate, running = threading.Event(), threading.Event()
    outs: list[Output] = []

    def handler(msg: Message, out: Output, body: object = None, length: object = None) -> None:
        outs.append(out)
        running.set()
        gate.wait(5)
        out.finish(b"old answer")

    worker = ThreadedRuntime(source, sink, handler, threads=1, on_done=done.append)
    worker._start()
    worker.feed(message(request_headers(), conn_id=1))
    worker.feed(message(request_headers(), conn_id=1))  # pipelined: dropped with it
    assert running.wait(5)  # in the app (a request not started yet is never started)
    source.changed = True
    worker.check_frontend()
    assert worker._conns == {} and len(done) == 1  # the pipelined one, reported dropped
    gate.set()
    worker.stop()
    worker.drain(5)
    assert sink.sent == [] and outs[0].conn.closed  # the old id may be a new client's now


def test_the_monitor_sees_mongrel2_go_away_once() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    pull = ctx.socket(zmq.PULL)
    monitor = FrontendMonitor(pull)
    pull.connect("tcp://127.0.0.1:%d" % port)
    push.send(b"x")
    assert pull.recv() == b"x"
    assert not monitor.changed()  # connecting is no change
    push.close(linger=0)
    for _ in range(100):
        if monitor.changed():
            break
        pull.poll(20)
    else:
        raise AssertionError("no disconnect seen")
    assert not monitor.changed() and monitor.disconnects == 1
    monitor.close()
    pull.close(linger=0)
    ctx.term()


def test_dispatcher_keeps_old_threads_busy_but_never_routes_to_them() -> None:
    disp = Dispatcher()
    w = Worker(b"w1", 1, 1, capacity=2)
    w.to(WorkerState.READY)
    disp.add_worker(w)
    key = (SENDER.decode(), 1)
    assert disp.assign(peek(raw_req(1)), raw_req(1), 0.0) == Forward(b"w1")
    assert disp.reset_frontend() == 0 and disp.epoch == 1
    assert disp.owner == {} and w.load == 1  # its thread is still busy with it
    assert disp.assign(peek(raw_req(1)), raw_req(1), 1.0) == Forward(b"w1")  # a new client
    assert w.load == 2 and disp.owner == {key: b"w1"}
    assert disp.on_done(b"w1", key, 2.0, epoch=0)  # the old one: counted, not remembered
    assert w.load == 1 and disp.owner == {key: b"w1"} and key not in disp.last
    assert disp.on_done(b"w1", key, 2.0, epoch=1)
    assert w.load == 0 and disp.last[key] == b"w1"


def test_conn_reports_carry_the_epoch() -> None:
    assert wire.decode_reports(wire.encode_report("s", 5, 0)) == [("s", 0, [5])]
    assert wire.decode_reports(wire.encode_report("s", 5, 3)) == [("s", 3, [5])]
    assert wire.decode_reports(b"garbled") == []


def test_the_master_tells_its_workers_and_answers_no_old_id(rig: Rig) -> None:  # noqa: F811
    ready(rig)
    rig.deliver(request(5))
    assert rig.to_worker() == [request(5)]
    rig.router.frontend_gone()
    assert rig.to_worker() == [b"", wire.EPOCH, b"1"]
    rig.router.worker_gone(rig.worker, -9, 3.0)
    assert not rig.replies.poll(100)  # id 5 may be a new client's: no 502 for it
