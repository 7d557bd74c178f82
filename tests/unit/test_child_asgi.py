"""The ASGI worker's end of the hand-off (supervisor/child_asgi.py), against a real ROUTER.

Done reports of one event-loop turn leave in one frame; a started report
flushes them first; control frames act on the runtime and never reach it as
messages; an open websocket is not a harakiri candidate in the dispatcher.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from m2gate.conn.async_connection import AsyncConnection
from m2gate.protocol.peek import peek
from m2gate.supervisor.child_asgi import AsyncMasterLink
from m2gate.supervisor.handoff import Dispatcher
from m2gate.supervisor.state import Worker
from m2gate.supervisor.wire import DONE, EPOCH, HELLO, READY, STARTED, STOP, decode_reports

from .helpers import SENDER, message, request_headers

_names = itertools.count()
WID = b"w1"


class Sink:
    """The PUB side: what the link would publish to Mongrel2."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, messages: list[bytes]) -> None:
        self.sent.extend(messages)


class Runtime:
    """What the link calls on its runtime."""

    def __init__(self) -> None:
        self.stopped = False
        self.epochs: list[int] = []
        self.requests = 0
        self.disconnects = 0

    def stop(self) -> None:
        self.stopped = True

    def reset_frontend(self, epoch: int) -> None:
        self.epochs.append(epoch)


@pytest.fixture
def sockets() -> Iterator[tuple[zmq.Context[Any], zmq.Socket[Any], zmq.Socket[Any], str]]:
    ctx: zmq.Context[Any] = zmq.Context()
    endpoint = "inproc://asgi-link-%d" % next(_names)
    router = ctx.socket(zmq.ROUTER)
    router.bind(endpoint)
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, WID)
    dealer.connect(endpoint)
    dealer.send_multipart((HELLO, b"{}"))
    assert router.poll(1000) and router.recv_multipart()[1] == HELLO
    try:
        yield ctx, router, dealer, endpoint
    finally:
        router.close(linger=0)
        dealer.close(linger=0)
        ctx.destroy(linger=0)


def make_link(sockets: Any) -> tuple[AsyncMasterLink, Runtime, Any]:
    ctx, router, dealer, endpoint = sockets
    link = AsyncMasterLink(dealer, ctx, endpoint, WID, os.getppid(), Sink())  # type: ignore[arg-type]
    runtime = Runtime()
    link.runtime = runtime  # type: ignore[assignment]
    return link, runtime, router


def frames_at(router: zmq.Socket[Any], timeout_ms: int = 1000) -> list[list[bytes]]:
    out: list[list[bytes]] = []
    while router.poll(timeout_ms if not out else 100):
        out.append(router.recv_multipart())
    return out


def conn(conn_id: int) -> AsyncConnection:
    return AsyncConnection(SENDER.decode(), conn_id, b"uuid")


def test_done_reports_of_one_loop_turn_leave_in_one_frame(sockets: Any) -> None:
    link, _, router = make_link(sockets)

    async def go() -> None:
        for i in range(1, 6):
            link.done(conn(i))
        await asyncio.sleep(0)  # the turn ends: the flush runs
        await asyncio.sleep(0)

    asyncio.run(go())
    frames = frames_at(router)
    assert [f[:2] for f in frames] == [[WID + b".0", DONE]]  # on the reports socket
    assert [ids for _, _, ids in decode_reports(frames[0][2])] == [[1, 2, 3, 4, 5]]
    link.close(0)


def test_started_flushes_the_done_reports_made_before_it(sockets: Any) -> None:
    link, _, router = make_link(sockets)

    async def go() -> None:
        link.done(conn(1))
        link.started(conn(2))
        link.done(conn(3))
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(go())
    got = [
        (f[1], [i for _, _, ids in decode_reports(f[2]) for i in ids]) for f in frames_at(router)
    ]
    assert got == [(DONE, [1]), (STARTED, [2]), (DONE, [3])]
    link.close(0)


def test_control_frames_act_and_messages_come_through(sockets: Any) -> None:
    link, runtime, router = make_link(sockets)
    for frames in ([WID, b"", READY], [WID, b"", EPOCH, b"3"], [WID, b"raw"], [WID, b"", STOP]):
        router.send_multipart(frames)

    async def go() -> list[bytes | None]:
        first = await asyncio.wait_for(link.recv(), 5)
        return [first, await link.recv(timeout_ms=200)]

    got = asyncio.run(go())
    assert got == [b"raw", None]
    assert link.ready and runtime.epochs == [3] and runtime.stopped
    link.close(0)


def test_an_open_websocket_is_no_harakiri_candidate() -> None:
    d = Dispatcher(100, 0)
    d.add_worker(Worker(b"w0", 1000, 1, 10))
    d.mark_ready(b"w0")
    handshake = message(
        request_headers("WEBSOCKET_HANDSHAKE", "/ws", **{"sec-websocket-key": "x"}), conn_id=1
    )
    d.assign(peek(handshake), handshake, 0.0)
    slow = message(request_headers("GET", "/slow"), conn_id=2)
    d.assign(peek(slow), slow, 0.0)
    # Before its 101 a handshake is a request like any other.
    assert sorted(e.key[1] for _, e in d.overdue(10.0, 1.0)) == [1, 2]
    d.mark_started(b"w0", (SENDER.decode(), 1))
    d.mark_started(b"w0", (SENDER.decode(), 2))  # a streaming HTTP response still counts
    assert [e.key[1] for _, e in d.overdue(10.0, 1.0)] == [2]
