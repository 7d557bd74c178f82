"""Issue 9 item 3: every queue a client or Mongrel2 fills has a bound and a policy."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

import pytest
import zmq

from m2gate.adapters.asgi import TRY_AGAIN_LATER, WebSocketSession, websocket_scope
from m2gate.conn.connection import Connection, Output
from m2gate.conn.table import ConnectionTable
from m2gate.protocol import websocket as ws
from m2gate.protocol.messages import Message, parse_message
from m2gate.runtime.threaded import ThreadedRuntime
from m2gate.transports.base import ReplyStalled
from m2gate.transports.zmq_common import PubSink, open_pub

from .helpers import control, message, request_headers
from .test_asgi_adapter import DEFAULTS, setup, ws_frame, ws_handshake


def request(conn_id: int = 7) -> Message:
    return parse_message(message(request_headers(), conn_id=conn_id))


# -- pipelining --------------------------------------------------------------------


def test_pipelining_beyond_the_bound_keeps_one_overflow_then_drops() -> None:
    table = ConnectionTable(Connection, max_pipelined=2)
    msgs = [request() for _ in range(5)]
    conn, start = table.admit(msgs[0])
    assert start
    assert table.admit(msgs[1]) == (conn, False)
    assert table.admit(msgs[2]) == (conn, False)
    assert table.admit(msgs[3]) == (conn, False)  # the overflow: answered 503 in its turn
    assert conn.overflow is msgs[3]
    assert table.admit(msgs[4]) == (conn, None)  # after the 503 the connection closes
    assert table.done(conn, True) == (msgs[1], 0)
    assert table.done(conn, True) == (msgs[2], 0)
    assert table.done(conn, True) == (msgs[3], 0)


def test_a_disconnect_counts_the_overflow_as_dropped() -> None:
    table = ConnectionTable(Connection, max_pipelined=1)
    conn, _ = table.admit(request())
    table.admit(request())
    table.admit(request())
    assert table.disconnected(conn.key) == (conn, 2)
    assert conn.overflow is None


# -- the threaded runtime ------------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.lock = threading.Lock()

    def send(self, messages: Sequence[bytes]) -> None:
        with self.lock:
            self.messages.extend(messages)

    def count(self, needle: bytes) -> int:
        with self.lock:
            return sum(needle in m for m in self.messages)


class Source:
    def recv(self, timeout_ms: int) -> bytes | None:
        return None

    def stop_receiving(self) -> None:
        pass


class Blocking:
    """A handler that holds its thread until ``release`` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.served: list[int] = []

    def __call__(
        self,
        msg: Message,
        out: Output,
        body: IO[bytes] | None = None,
        content_length: int | None = None,
    ) -> None:
        self.release.wait(10)
        self.served.append(msg.conn_id)
        out.finish(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def runtime(**kwargs: Any) -> tuple[ThreadedRuntime, Sink, Blocking, list[Connection]]:
    sink, handler, done = Sink(), Blocking(), []
    rt = ThreadedRuntime(Source(), sink, handler, threads=1, on_done=done.append, **kwargs)
    rt._start()
    return rt, sink, handler, done


def wait(check: Any) -> None:
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_requests_beyond_the_backlog_get_503_at_once() -> None:
    rt, sink, handler, done = runtime(backlog=3)
    for conn_id in range(1, 11):
        rt.feed(message(request_headers(), conn_id=conn_id))
        time.sleep(0.01 if conn_id == 1 else 0)  # the first one reaches the thread
    assert sink.count(b"503 Service Unavailable") == 10 - 1 - 3
    assert rt.overloaded == 6
    handler.release.set()
    wait(lambda: len(done) == 10)  # every request ends in exactly one on_done
    assert sorted(handler.served) == [1, 2, 3, 4]
    rt.drain(5)


def test_a_request_whose_client_left_while_queued_is_not_started() -> None:
    rt, _sink, handler, done = runtime()
    rt.feed(message(request_headers(), conn_id=1))
    time.sleep(0.05)
    rt.feed(message(request_headers(), conn_id=2))
    rt.feed(control("disconnect", conn_id=2))
    handler.release.set()
    wait(lambda: len(done) == 2)
    assert handler.served == [1]
    rt.drain(5)


def test_pipelined_overflow_is_answered_503_in_order_and_closes() -> None:
    rt, sink, handler, done = runtime(max_pipelined=2)
    for _ in range(6):
        rt.feed(message(request_headers(), conn_id=7))
    handler.release.set()
    wait(lambda: len(done) == 6)
    bodies = [m for m in sink.messages if b"HTTP/1.1" in m]
    assert [b"503" in m for m in bodies] == [False, False, False, True]
    assert sink.messages[-1].endswith(b", ")  # the close reply after the 503
    assert handler.served == [7, 7, 7]
    rt.drain(5)


# -- websocket receive queue -----------------------------------------------------------


def test_websocket_closed_with_1013_when_the_app_does_not_read() -> None:
    async def never_reads(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await asyncio.sleep(0.3)

    async def go() -> tuple[Any, WebSocketSession]:
        msg = ws_handshake()
        conn, out, sink = setup(msg)
        session = WebSocketSession(msg, conn, out, close_timeout=0.05, max_queue=10_000)
        task = asyncio.create_task(session.run(never_reads, websocket_scope(msg, DEFAULTS, {})))
        await asyncio.sleep(0.01)
        for _ in range(100):
            session.feed(ws_frame(0x82, b"x" * 1000))
        assert session.queued <= 10_000
        await task
        return sink, session

    sink, session = asyncio.run(go())
    assert ws.encode_close(TRY_AGAIN_LATER, "receive queue full") in b"".join(sink.bodies)
    assert session.state in ("closing", "closed")  # waiting for the client's close frame


def test_one_message_larger_than_the_queue_bound_is_accepted_when_nothing_waits() -> None:
    async def reads(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        got = await receive()
        assert len(got["bytes"]) == 5000
        await send({"type": "websocket.close"})

    async def go() -> WebSocketSession:
        msg = ws_handshake()
        conn, out, _ = setup(msg)
        session = WebSocketSession(msg, conn, out, close_timeout=0.05, max_queue=100)
        task = asyncio.create_task(session.run(reads, websocket_scope(msg, DEFAULTS, {})))
        await asyncio.sleep(0.01)
        session.feed(ws_frame(0x82, b"x" * 5000))
        await task
        return session

    assert asyncio.run(go()).queued == 0


# -- the PUB to Mongrel2 ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_stalled_mongrel2_makes_send_wait_then_raise_never_drop_silently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    endpoint = "tcp://127.0.0.1:%d" % free_port()
    sub = ctx.socket(zmq.SUB)  # "Mongrel2" that subscribes and then reads nothing
    sub.setsockopt(zmq.RCVHWM, 1)
    sub.setsockopt(zmq.LINGER, 0)
    sub.subscribe(b"")
    sub.bind(endpoint)
    sink = PubSink(open_pub(ctx, endpoint, b"ident", linger=0, hwm=2), timeout=0.3)
    try:
        deadline = time.monotonic() + 5
        while not sub.poll(10):  # the subscription reached the PUB
            sink.send([b"warm-up"])
            assert time.monotonic() < deadline
        big = b"x" * (1 << 20)
        started = time.monotonic()
        with pytest.raises(ReplyStalled):
            for _ in range(200):  # far more than TCP buffers and the HWM hold
                sink.send([big])
        assert time.monotonic() - started < 5
        assert sink.stalled == 1
        assert "dropped, its connection given up" in caplog.text
    finally:
        sink.close(0)
        sub.close(0)
        ctx.term()


def test_a_stalled_send_gives_the_connection_up() -> None:
    class Stalled:
        def send(self, messages: Sequence[bytes]) -> None:
            raise ReplyStalled()

    conn = Connection("s", 1, b"s")
    out = Output(conn, Stalled(), None, 1 << 20, 0.0)
    out.finish(b"x" * 100, close=True)  # no exception reaches the app's finish
    assert conn.closed and out.done
