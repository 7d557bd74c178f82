"""ASGI websockets through a real Mongrel2, driven by the ``websockets`` client."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect
from wsgi_http import read_events

from m2gate.testing.mongrel2 import Mongrel2

pytestmark = pytest.mark.integration

APP = "starlette_app:app"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def server(mongrel2: Mongrel2, m2gate_server: Any, state: Path) -> Any:
    return m2gate_server(APP, "--interface", "asgi", env={"M2GATE_TEST_STATE": str(state)})


def ws_url(m2: Mongrel2, path: str = "/ws") -> str:
    return m2.url.replace("http://", "ws://") + path


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 30))


def wait_for_line(path: Path, line: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if line in read_events(path):
            return True
        time.sleep(0.02)
    return False


def test_echo_text_and_binary(mongrel2: Mongrel2, server: Any) -> None:
    async def go() -> None:
        async with connect(ws_url(mongrel2)) as ws:
            await ws.send("héllo wörld")
            assert await ws.recv() == "héllo wörld"
            await ws.send(b"\x00\xffbinary")
            assert await ws.recv() == b"\x00\xffbinary"
            big = "x" * 70000  # 64-bit length form
            await ws.send(big)
            assert await ws.recv() == big

    run(go)


def test_fragmented_messages_are_reassembled(mongrel2: Mongrel2, server: Any) -> None:
    async def go() -> None:
        async with connect(ws_url(mongrel2)) as ws:
            await ws.send(["frag", "ment", "ed"])
            assert await ws.recv() == "fragmented"
            await ws.send([b"ab", b"cd", b"ef"])
            assert await ws.recv() == b"abcdef"

    run(go)


def test_ping_gets_pong(mongrel2: Mongrel2, server: Any) -> None:
    async def go() -> None:
        async with connect(ws_url(mongrel2)) as ws:
            waiter = await ws.ping(b"are you there")
            await asyncio.wait_for(waiter, 10)
            await ws.send("still open")
            assert await ws.recv() == "still open"

    run(go)


def test_subprotocol_is_negotiated(mongrel2: Mongrel2, server: Any) -> None:
    async def go() -> None:
        async with connect(ws_url(mongrel2), subprotocols=["chat"]) as ws:
            assert ws.subprotocol == "chat"

    run(go)


def test_client_close_code_reaches_the_app(mongrel2: Mongrel2, server: Any, state: Path) -> None:
    async def go() -> None:
        ws: ClientConnection
        async with connect(ws_url(mongrel2)) as ws:
            await ws.send("hi")
            await ws.recv()
            await ws.close(4002, "bye")
            assert ws.close_code == 4002  # the server echoed our code

    run(go)
    assert wait_for_line(state / "ws", "disconnect 4002"), read_events(state / "ws")


def test_app_close_code_reaches_the_client(mongrel2: Mongrel2, server: Any) -> None:
    async def go() -> None:
        async with connect(ws_url(mongrel2)) as ws:
            await ws.send("close:4001")
            with pytest.raises(websockets.ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 4001
            assert info.value.rcvd.reason == "asked to"

    run(go)


def test_rejected_handshake_is_403(mongrel2: Mongrel2, server: Any) -> None:
    async def go() -> None:
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(ws_url(mongrel2, "/ws-reject")):
                pass
        assert info.value.response.status_code == 403

    run(go)


def test_dropped_tcp_connection_is_a_1006_disconnect(
    mongrel2: Mongrel2, server: Any, state: Path
) -> None:
    """No close frame, just a closed socket: Mongrel2's notice becomes websocket.disconnect."""
    with socket.create_connection(("127.0.0.1", mongrel2.port), timeout=10) as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    assert wait_for_line(state / "ws", "disconnect 1006"), read_events(state / "ws")


def test_server_stop_closes_websockets_with_1001(mongrel2: Mongrel2, server: Any) -> None:
    async def go() -> None:
        async with connect(ws_url(mongrel2)) as ws:
            await ws.send("hi")
            await ws.recv()
            server.signal(15)
            with pytest.raises(websockets.ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1001

    run(go)
    assert server.proc.wait(timeout=20) == 0


def test_many_websockets_at_once(mongrel2: Mongrel2, server: Any) -> None:
    async def one(i: int) -> None:
        async with connect(ws_url(mongrel2)) as ws:
            for j in range(5):
                await ws.send("%d-%d" % (i, j))
                assert await ws.recv() == "%d-%d" % (i, j)

    async def go() -> None:
        await asyncio.gather(*(one(i) for i in range(50)))

    run(go)


@pytest.mark.mongrel2(settings={"limits.min_ping": 2, "limits.tick_timer": 1})
def test_quiet_websocket_outlives_min_ping(
    mongrel2: Mongrel2, m2gate_server: Any, state: Path
) -> None:
    """Mongrel2 kills connections idle for min_ping; m2gate's ctl keep-alives prevent it."""
    m2gate_server(
        APP,
        "--interface",
        "asgi",
        "--idle-keepalive",
        "0.5",
        env={"M2GATE_TEST_STATE": str(state)},
    )

    async def go() -> None:
        async with connect(ws_url(mongrel2), ping_interval=None) as ws:
            await ws.send("before")
            assert await ws.recv() == "before"
            await asyncio.sleep(6)  # three times min_ping without a byte either way
            await ws.send("after")
            assert await ws.recv() == "after"

    run(go)


@pytest.mark.parametrize("flow_control", [0, 1], ids=["plain", "flow-control"])
def test_server_floods_a_websocket(
    mongrel2_factory: Any, m2gate_server: Any, state: Path, flow_control: int
) -> None:
    """300 messages of 64 KB from the app: coalesced (or credit-paced), none lost."""
    m2 = mongrel2_factory(settings={"download.flow_control": flow_control})
    m2gate_server(APP, "--interface", "asgi", m2=m2, env={"M2GATE_TEST_STATE": str(state)})

    async def go() -> None:
        async with connect(ws_url(m2), max_size=None) as ws:
            await ws.send("flood:300")
            for i in range(300):
                assert await ws.recv() == bytes([i % 256]) * 65536
            await ws.send("done?")
            assert await ws.recv() == "done?"

    run(go)


def test_stop_ends_as_soon_as_the_client_answers_the_close(
    mongrel2: Mongrel2, m2gate_server: Any, state: Path, tmp_path: Path
) -> None:
    """SIGTERM: 1001 to the client, whose close reply (through Mongrel2) ends the stop.

    The reply used to go unread (the receiving had stopped), so every stop
    waited out the close timeout. Also: the upgrade's access line says GET.
    """
    access = tmp_path / "access.log"
    server = m2gate_server(
        APP,
        "--interface",
        "asgi",
        "--access-log",
        str(access),
        env={"M2GATE_TEST_STATE": str(state)},
    )

    async def go() -> None:
        async with connect(ws_url(mongrel2), close_timeout=30) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            server.signal(15)
            with pytest.raises(websockets.ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
            assert info.value.sent is not None and info.value.sent.code == 1001  # answered

    run(go)
    assert server.proc.wait(timeout=20) == 0
    out = server.output
    assert "websockets closed for the stop: 1 answered the close, 0 timed out" in out, out
    assert "no close reply" not in out
    assert wait_for_line(state / "ws", "disconnect 1001"), read_events(state / "ws")
    (line,) = [line for line in access.read_text().splitlines() if " /ws " in line]
    assert '"GET /ws HTTP/1.1" 101' in line, line
