"""The ASGI adapter with no sockets: scopes, one HTTP cycle, a websocket session, lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from m2gate.adapters.asgi import (
    HTTPCycle,
    Lifespan,
    LifespanError,
    WebSocketSession,
    http_scope,
    is_asgi_app,
    resolve_interface,
    websocket_scope,
)
from m2gate.adapters.common import EnvironDefaults
from m2gate.conn.async_connection import AsyncConnection, AsyncOutput
from m2gate.protocol.messages import (
    HTTPRequest,
    WebSocketFrame,
    WebSocketHandshake,
    parse_message,
)

from .helpers import SENDER, message, request_headers

DEFAULTS = EnvironDefaults()
Msg = dict[str, Any]


class Sink:
    """Collects replies; ``bodies`` is what the client would read, ``closed`` the close reply."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    def send(self, messages: Sequence[bytes]) -> None:
        self.messages.extend(messages)

    @property
    def bodies(self) -> list[bytes]:
        return [m.split(b", ", 1)[1] for m in self.messages]

    @property
    def data(self) -> bytes:
        return b"".join(self.bodies)

    @property
    def closed(self) -> bool:
        return bool(self.messages) and self.messages[-1].endswith(b", ")


def request(method: str = "GET", path: str = "/p", body: bytes = b"", **headers: Any) -> Any:
    raw = message(request_headers(method, path, **headers), body, path=path.encode())
    return parse_message(raw)


def setup(msg: Any) -> tuple[AsyncConnection, AsyncOutput, Sink]:
    sink = Sink()
    conn = AsyncConnection(msg.sender, msg.conn_id, SENDER)
    out = AsyncOutput(conn, sink, 4 * 1024 * 1024, 0.0)
    return conn, out, sink


def run_cycle(app: Callable[..., Awaitable[None]], msg: Any = None, body: Any = None) -> Sink:
    msg = msg or request()

    async def go() -> Sink:
        conn, out, sink = setup(msg)
        cycle = HTTPCycle(msg, conn, out, msg.body if body is None else body)
        await cycle.run(app, http_scope(msg, DEFAULTS, {}))
        return sink

    return asyncio.run(go())


# -- scopes ----------------------------------------------------------------------


def test_http_scope_mapping() -> None:
    msg = request(
        "POST",
        "/api/a%20b",
        QUERY="x=1&y=%20",
        PATTERN="/api/(.*)",
        URL_SCHEME="https",
        VERSION="HTTP/1.0",
        host="example.org:8443",
        **{"x-custom": ["a", "b"], "content-type": "text/plain"},
    )
    scope = http_scope(msg, DEFAULTS, {"k": 1})
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["method"] == "POST"
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/a b"
    assert scope["raw_path"] == b"/api/a%20b"
    assert scope["query_string"] == b"x=1&y=%20"
    assert scope["scheme"] == "https"
    assert scope["http_version"] == "1.0"
    assert scope["server"] == ("example.org", 8443)
    assert scope["client"] == ("127.0.0.1", 0)
    assert (b"x-custom", b"a, b") in scope["headers"]
    assert (b"content-type", b"text/plain") in scope["headers"]
    assert all(isinstance(n, bytes) and n == n.lower() for n, _ in scope["headers"])
    assert not any(n in (b"METHOD", b"PATH") for n, _ in scope["headers"])
    assert scope["state"] == {"k": 1}


def test_websocket_scope() -> None:
    msg = request("WEBSOCKET_HANDSHAKE", "/ws", **{"sec-websocket-protocol": "chat, superchat"})
    scope = websocket_scope(msg, DEFAULTS, {})
    assert scope["type"] == "websocket"
    assert scope["scheme"] == "ws"
    assert scope["subprotocols"] == ["chat", "superchat"]
    assert "method" not in scope


def test_interface_detection() -> None:
    async def asgi_fn(scope: Any, receive: Any, send: Any) -> None: ...

    class AsgiObj:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...

    def wsgi_fn(environ: Any, start_response: Any) -> list[bytes]:
        return []

    assert is_asgi_app(asgi_fn) and is_asgi_app(AsgiObj())
    assert not is_asgi_app(wsgi_fn)
    assert resolve_interface("auto", AsgiObj()) == "asgi"
    assert resolve_interface("auto", wsgi_fn) == "wsgi"
    assert resolve_interface("asgi", wsgi_fn) == "asgi"
    assert resolve_interface("wsgi", asgi_fn) == "wsgi"


# -- http ------------------------------------------------------------------------


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]})
    await send({"type": "http.response.body", "body": b"hello"})


def test_whole_body_gets_content_length_in_one_message() -> None:
    sink = run_cycle(hello)
    assert len(sink.messages) == 1
    assert sink.data.startswith(b"HTTP/1.1 200 OK\r\nx-a: 1\r\n")
    assert b"Content-Length: 5\r\n" in sink.data
    assert sink.data.endswith(b"\r\n\r\nhello")


def test_streamed_body_is_chunked() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200})
        for part in (b"a", b"", b"bc"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body"})

    sink = run_cycle(app)
    assert b"Transfer-Encoding: chunked" in sink.data
    assert sink.data.endswith(b"\r\n\r\n1\r\na\r\n2\r\nbc\r\n0\r\n\r\n")
    assert not sink.closed


def test_http10_without_keep_alive_closes() -> None:
    sink = run_cycle(hello, request(VERSION="HTTP/1.0"))
    assert b"Connection: close" in sink.data and sink.closed


def test_head_has_no_body() -> None:
    sink = run_cycle(hello, request("HEAD"))
    assert sink.data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert sink.data.endswith(b"\r\n\r\n")
    assert b"hello" not in sink.data


def test_error_before_start_is_500() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("nope")

    sink = run_cycle(app)
    assert sink.data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")


def test_no_response_at_all_is_500() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    assert run_cycle(app).data.startswith(b"HTTP/1.1 500 ")


def test_error_after_start_cuts_the_connection() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("late")

    sink = run_cycle(app)
    assert b"4\r\npart\r\n" in sink.data
    assert not sink.data.endswith(b"0\r\n\r\n")
    assert sink.closed


def test_invalid_header_is_500() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x", b"a\nb")]})
        await send({"type": "http.response.body", "body": b""})

    assert run_cycle(app).data.startswith(b"HTTP/1.1 500 ")


def test_receive_inline_body_then_disconnect_after_response() -> None:
    seen: list[Msg] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(await receive())
        await hello(scope, receive, send)
        seen.append(await receive())

    run_cycle(app, request("POST", body=b"data"))
    assert seen == [
        {"type": "http.request", "body": b"data", "more_body": False},
        {"type": "http.disconnect"},
    ]


def test_body_from_an_async_iterator() -> None:
    seen: list[Msg] = []

    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"ab", b"cd"):
            await asyncio.sleep(0)
            yield part

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            event = await receive()
            seen.append(event)
            if not event.get("more_body"):
                break
        await hello(scope, receive, send)

    run_cycle(app, request("POST"), body=chunks())
    assert [e["body"] for e in seen] == [b"ab", b"cd", b""]
    assert [e["more_body"] for e in seen] == [True, True, False]


def test_client_gone_wakes_receive_and_fails_send() -> None:
    events: list[Any] = []

    async def go() -> Sink:
        msg = request()
        conn, out, sink = setup(msg)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()  # the (empty) body
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            events.append(await receive())  # blocks until the client goes away
            with pytest.raises(OSError):
                await send({"type": "http.response.body", "body": b"y", "more_body": True})
            events.append("send raised")

        cycle = HTTPCycle(msg, conn, out, b"")
        task = asyncio.create_task(cycle.run(app, http_scope(msg, DEFAULTS, {})))
        for _ in range(5):
            await asyncio.sleep(0)
        conn.mark_closed()
        await task
        return sink

    sink = asyncio.run(go())
    assert events == [{"type": "http.disconnect"}, "send raised"]
    assert not sink.closed  # no reply to a connection Mongrel2 already closed


# -- websocket -------------------------------------------------------------------


def ws_handshake() -> WebSocketHandshake:
    msg = parse_message(
        message(request_headers("WEBSOCKET_HANDSHAKE", "/ws"), b"acc=", path=b"/ws")
    )
    assert isinstance(msg, WebSocketHandshake)
    return msg


def ws_frame(flags: int, body: bytes) -> WebSocketFrame:
    msg = parse_message(
        message(request_headers("WEBSOCKET", "/ws", FLAGS=hex(flags)), body, path=b"/ws")
    )
    assert isinstance(msg, WebSocketFrame)
    return msg


def run_ws(
    app: Callable[..., Awaitable[None]], frames: list[WebSocketFrame]
) -> tuple[Sink, WebSocketSession]:
    async def go() -> tuple[Sink, WebSocketSession]:
        msg = ws_handshake()
        conn, out, sink = setup(msg)
        session = WebSocketSession(msg, conn, out, close_timeout=0.05)
        task = asyncio.create_task(session.run(app, websocket_scope(msg, DEFAULTS, {})))
        await asyncio.sleep(0.01)
        for frame in frames:
            session.feed(frame)
            await asyncio.sleep(0.01)
        await task
        await asyncio.wait_for(session.wait_closed(), 5)
        return sink, session

    return asyncio.run(go())


async def echo(scope: Any, receive: Any, send: Any) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            return
        if "text" in event:
            await send({"type": "websocket.send", "text": event["text"]})
        else:
            await send({"type": "websocket.send", "bytes": event["bytes"]})


def test_websocket_echo_ping_and_client_close() -> None:
    sink, session = run_ws(
        echo,
        [
            ws_frame(0x81, b"hi"),
            ws_frame(0x89, b"p"),
            ws_frame(0x82, b"\x00"),
            ws_frame(0x88, b"\x0f\xa2bye"),
        ],
    )
    data = sink.data
    assert data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: acc=\r\n" in data
    assert data.endswith(b"\r\n\r\n\x81\x02hi\x8a\x01p\x82\x01\x00\x88\x02\x0f\xa2")
    assert sink.closed
    assert session.state == "closed"


def test_websocket_reject_before_accept_is_403() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 1008})

    sink, _ = run_ws(app, [])
    assert sink.data.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert sink.closed


def test_websocket_denial_response_extension() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert "websocket.http.response" in scope["extensions"]
        await receive()
        await send({"type": "websocket.http.response.start", "status": 401, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b"who?"})

    sink, _ = run_ws(app, [])
    assert sink.data.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert b"Content-Length: 4\r\n" in sink.data
    assert sink.data.endswith(b"\r\n\r\nwho?") and sink.closed


def test_websocket_app_error_after_accept_closes_1011() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        raise RuntimeError("oops")

    sink, _ = run_ws(app, [])
    assert sink.bodies[-2].endswith(b"\x88\x02\x03\xf3")  # close 1011, then the close timer
    assert sink.closed


def test_websocket_protocol_error_closes_1002_and_tells_the_app() -> None:
    codes: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        codes.append((await receive())["code"])

    sink, _ = run_ws(app, [ws_frame(0x80, b"continuation of nothing")])
    assert codes == [1002]
    assert b"\r\n\r\n\x88\x32\x03\xeacontinuation frame" in sink.data and sink.closed


def test_websocket_app_close_waits_for_the_clients_close() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4000, "reason": "done"})

    sink, session = run_ws(app, [ws_frame(0x88, b"\x0f\xa0")])
    assert sink.data.endswith(b"\x88\x06\x0f\xa0done")  # no echo of the client's answer
    assert sink.closed and session.state == "closed"


# -- lifespan --------------------------------------------------------------------


def lifespan_app(startup: Msg | None, raise_at: str = "") -> Callable[..., Awaitable[None]]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if raise_at == "before":
            raise ValueError("only http")
        assert scope["type"] == "lifespan"
        await receive()
        scope["state"]["db"] = "ok"
        if raise_at == "startup":
            raise RuntimeError("no database\nreally")
        if startup is None:
            return
        await send(startup)
        await receive()
        await send({"type": "lifespan.shutdown.complete"})

    return app


def test_lifespan_complete() -> None:
    async def go() -> dict[str, Any]:
        life = Lifespan(lifespan_app({"type": "lifespan.startup.complete"}))
        await life.startup()
        await life.shutdown(1.0)
        assert life.supported
        return life.state

    assert asyncio.run(go()) == {"db": "ok"}


@pytest.mark.parametrize(
    ("app", "error"),
    [
        (
            lifespan_app({"type": "lifespan.startup.failed", "message": "Traceback\nX: bad\n"}),
            "lifespan startup failed: X: bad",
        ),
        (lifespan_app(None, raise_at="startup"), "lifespan startup failed: RuntimeError: really"),
    ],
    ids=["failed-message", "raised"],
)
def test_lifespan_startup_failure(app: Any, error: str) -> None:
    async def go() -> None:
        await Lifespan(app).startup()

    with pytest.raises(LifespanError) as info:
        asyncio.run(go())
    assert str(info.value) == error


@pytest.mark.parametrize("raise_at", ["before", ""])
def test_lifespan_unsupported_is_tolerated(raise_at: str) -> None:
    async def go() -> bool:
        life = Lifespan(lifespan_app(None, raise_at=raise_at))
        await life.startup()
        await life.shutdown(1.0)
        return life.supported

    assert asyncio.run(go()) is False


def test_hanging_lifespan_shutdown_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    cancelled: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def go() -> float:
        life = Lifespan(app)
        await life.startup()
        loop = asyncio.get_running_loop()
        started = loop.time()
        # The outer bound turns a shutdown that ignores its timeout into a failure, not a hang.
        await asyncio.wait_for(life.shutdown(0.05), 5)
        elapsed = loop.time() - started
        for _ in range(3):
            await asyncio.sleep(0)  # let the cancelled app task run its except clause
        return elapsed

    with caplog.at_level("WARNING", logger="m2gate.asgi"):
        elapsed = asyncio.run(go())
    assert 0.04 <= elapsed < 2.0  # the app would sleep 60 s
    assert cancelled == [True]  # by shutdown itself, before asyncio.run cleans up
    assert "lifespan shutdown did not finish" in caplog.text


def test_http_request_type_is_used() -> None:
    assert isinstance(request(), HTTPRequest)


def test_websocket_receive_after_disconnect_repeats_it() -> None:
    seen: list[Msg] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        seen.append(await receive())
        seen.append(await receive())  # must not hang

    run_ws(app, [ws_frame(0x88, b"\x03\xe8")])
    assert seen == [{"type": "websocket.disconnect", "code": 1000, "reason": ""}] * 2


def test_scope_path_is_utf8_decoded() -> None:
    scope = http_scope(request("GET", "/caf%C3%A9/%FF"), DEFAULTS, {})
    assert scope["path"] == "/café/\ufffd"
    assert scope["raw_path"] == b"/caf%C3%A9/%FF"
