"""ASGI 3 adapter: ``http``, ``websocket`` and ``lifespan`` over Mongrel2.

The scope follows the WSGI environ's mapping rules (:mod:`m2gate.adapters.common`),
responses go through the same framer (:class:`m2gate.protocol.http.Response`)
and the same coalescing writer, so an ASGI app gets the keep-alive, chunking
and HEAD behaviour a WSGI app gets. The runtime (:mod:`m2gate.runtime.asyncio`)
owns the connections; this module only speaks ASGI for one of them at a time.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any, Literal

from m2gate.adapters.accesslog import AccessLogger
from m2gate.adapters.common import (
    EnvironDefaults,
    client_headers,
    remote_addr,
    server_address,
    split_path,
)
from m2gate.conn.async_connection import AsyncConnection, AsyncOutput, ConnectionGone
from m2gate.protocol import websocket as ws
from m2gate.protocol.errors import ClientDisconnected, LocalProtocolError, RemoteProtocolError
from m2gate.protocol.http import SERVER_HEADER, Response, error_response, request_framing
from m2gate.protocol.messages import Message, WebSocketFrame, WebSocketHandshake

log = logging.getLogger("m2gate.asgi")

Scope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
BodySource = AsyncIterator[bytes]

# 2.4: ``send`` raises an OSError once the client is gone; ``http.disconnect``
# is delivered through ``receive`` as well, for apps that listen for it.
ASGI_INFO = {"version": "3.0", "spec_version": "2.4"}


def is_asgi_app(app: Any) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(app):
        return True
    call = getattr(app, "__call__", None)  # noqa: B004 - the method itself is inspected
    return call is not None and inspect.iscoroutinefunction(call)


def resolve_interface(interface: Literal["auto", "wsgi", "asgi"], app: Any) -> str:
    """``"asgi"`` or ``"wsgi"``: the setting, or what ``app`` looks like."""
    if interface != "auto":
        return interface
    return "asgi" if is_asgi_app(app) else "wsgi"


@functools.lru_cache(maxsize=256)
def _status_line(code: int) -> str:
    try:
        return "%d %s" % (code, HTTPStatus(code).phrase)
    except ValueError:
        return "%d Unknown" % code


def _utf8(text: str) -> str:
    return text.encode("latin-1").decode("utf-8", "replace")


def _scope_headers(msg: Message) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in client_headers(msg)]


def _base_scope(
    kind: str, msg: Message, scheme: str, defaults: EnvironDefaults, state: dict[str, Any]
) -> dict[str, Any]:
    # split_path gives WSGI's latin-1 strings; ASGI wants the UTF-8 characters.
    root_path, path = (_utf8(p) for p in split_path(msg))
    http_scheme = msg.header("URL_SCHEME") or "http"
    server_name, server_port = server_address(msg, http_scheme, defaults)
    version = msg.header("VERSION") or "HTTP/1.0"
    raw_path = msg.path.encode("latin-1")
    client = remote_addr(msg, defaults)
    return {
        "type": kind,
        "asgi": dict(ASGI_INFO),
        "http_version": version[5:] if version.startswith("HTTP/") else "1.0",
        "scheme": scheme,
        # ASGI wants the full path with root_path in front of it.
        "path": root_path + path,
        "raw_path": raw_path,
        "root_path": root_path,
        "query_string": (msg.header("QUERY") or "").encode("latin-1"),
        "headers": _scope_headers(msg),
        "client": (client, 0) if client else None,
        "server": (
            server_name,
            int(server_port) if server_port.isascii() and server_port.isdigit() else None,
        ),
        "state": dict(state),
        "extensions": {},
    }


def http_scope(msg: Message, defaults: EnvironDefaults, state: dict[str, Any]) -> dict[str, Any]:
    """The ASGI ``http`` scope of a Mongrel2 request."""
    scope = _base_scope("http", msg, msg.header("URL_SCHEME") or "http", defaults, state)
    scope["method"] = msg.method
    return scope


def websocket_scope(
    msg: Message, defaults: EnvironDefaults, state: dict[str, Any]
) -> dict[str, Any]:
    """The ASGI ``websocket`` scope of a Mongrel2 ``WEBSOCKET_HANDSHAKE``."""
    scheme = "wss" if msg.header("URL_SCHEME") == "https" else "ws"
    scope = _base_scope("websocket", msg, scheme, defaults, state)
    offered = msg.header("sec-websocket-protocol") or ""
    scope["subprotocols"] = [p.strip() for p in offered.split(",") if p.strip()]
    scope["extensions"] = {"websocket.http.response": {}}
    return scope


class HTTPCycle:
    """One request and its response: the ``receive`` and ``send`` of an http scope.

    ``body`` is the inline body Mongrel2 sent, or an async iterator of chunks
    (an upload read from Mongrel2's temp store while it is being written).
    The access log line is written here, as the WSGI adapter does.
    """

    def __init__(
        self,
        msg: Message,
        conn: AsyncConnection,
        out: AsyncOutput,
        body: bytes | BodySource,
        access_log: AccessLogger | None = None,
    ) -> None:
        version, keep_alive = request_framing(msg)
        self.msg = msg
        self.conn = conn
        self.out = out
        self.resp = Response(msg.method, version, keep_alive, SERVER_HEADER)
        self._inline: bytes | None = body if isinstance(body, bytes) else None
        self._source: BodySource | None = None if isinstance(body, bytes) else body
        self._body_done = False
        self._status: str | None = None
        self._headers: list[tuple[str, str]] = []
        self.complete = False
        self._ended = asyncio.Event()
        self.nbytes = 0  # body bytes sent, for the access log
        self.access_log = access_log

    @property
    def status_code(self) -> int:
        return self.resp.status_code

    # -- what the runtime sees --------------------------------------------
    def client_gone(self) -> None:
        self._ended.set()

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        """Call ``app``; always finishes the response (500 or a cut connection)."""
        started = time.perf_counter()
        conn = self.conn
        conn.on_close = self.client_gone
        try:
            try:
                await app(scope, self.receive, self.send)
            except ClientDisconnected:
                log.info("client %s:%s went away", self.msg.sender, self.msg.conn_id)
            except asyncio.CancelledError:
                log.warning("request %s %s cancelled", self.msg.method, self.msg.path)
                await self._cut()
                raise
            except BaseException as exc:  # SystemExit too: a 500, the loop goes on
                if conn.closed:
                    log.info("client %s:%s went away (%r)", self.msg.sender, self.msg.conn_id, exc)
                else:
                    self._log_error(exc)
                    await self._fail(exc)
            finally:
                self._ended.set()
                conn.on_close = None  # one request at a time: nothing else set it meanwhile
            if not self.complete and not self.out.done:
                if self._status is None:
                    log.error(
                        "app returned without a response for %s %s",
                        self.msg.method,
                        self.msg.path,
                    )
                await self._fail(None)
        finally:
            if self.access_log is not None:
                duration = time.perf_counter() - started
                self.access_log.log(self.msg, self.status_code, self.nbytes, duration)

    def _log_error(self, exc: BaseException) -> None:
        if isinstance(exc, RemoteProtocolError):
            log.warning("bad request %s %s: %s", self.msg.method, self.msg.path, exc)
        elif isinstance(exc, LocalProtocolError):
            log.error("invalid response for %s %s: %s", self.msg.method, self.msg.path, exc)
        else:
            log.error("error in app for %s %s", self.msg.method, self.msg.path, exc_info=exc)

    async def _cut(self) -> None:
        self.resp.abort()
        self.complete = True
        await self.out.afinish(close=True)

    async def _fail(self, exc: BaseException | None) -> None:
        """500 (400 for a bad request) if nothing went out yet, else cut."""
        if self.out.done:
            return
        status = "500 Internal Server Error"
        if isinstance(exc, RemoteProtocolError):
            status = _status_line(exc.status_hint)
        payload = self.resp.error(status)
        self.complete = True
        if payload is None:
            await self.out.afinish(close=True)  # the head went out: cut the connection
            return
        close = not self.resp.keep_alive or self._body_pending()
        await self.out.afinish(payload, close=close)

    def _body_pending(self) -> bool:
        """An unread streamed body means the connection cannot carry another request."""
        return self._source is not None and not self._body_done

    # -- ASGI callables -----------------------------------------------------
    async def receive(self) -> ASGIMessage:
        if not self._body_done and not self.conn.closed:
            if self._inline is not None:
                body, self._inline = self._inline, None
                self._body_done = True
                return {"type": "http.request", "body": body, "more_body": False}
            assert self._source is not None
            try:
                chunk = await anext(self._source, None)
            except ClientDisconnected:
                chunk = None
                self._ended.set()
            except RemoteProtocolError:
                # A broken upload: the app sees a disconnect, the client a 400.
                log.warning("upload for %s %s broke off", self.msg.method, self.msg.path)
                self._body_done = True
                if not self.resp.head_sent and not self.out.done:
                    await self._fail(RemoteProtocolError("broken upload"))
                self._ended.set()
                return {"type": "http.disconnect"}
            if chunk is not None and not self.conn.closed:
                return {"type": "http.request", "body": chunk, "more_body": True}
            if chunk is None and not self.conn.closed:
                self._body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
        if not (self.conn.closed or self.complete):
            await self._ended.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: ASGIMessage) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            if self._status is not None:
                raise RuntimeError("http.response.start sent twice")
            self._status = _status_line(int(message["status"]))
            self._headers = [
                (bytes(n).decode("latin-1"), bytes(v).decode("latin-1"))
                for n, v in message.get("headers", ())
            ]
            return
        if kind != "http.response.body":
            raise RuntimeError("unexpected ASGI message %r in an http scope" % (kind,))
        if self._status is None:
            raise RuntimeError("http.response.body before http.response.start")
        if self.complete:
            if self.conn.closed:
                raise ConnectionGone()
            raise RuntimeError("http.response.body after the response finished")
        if self.conn.closed:
            raise ConnectionGone()
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        resp = self.resp
        if not more:
            payload = b""
            if not resp.head_sent:
                payload = resp.head(self._status, self._headers, len(body))
            framed = resp.body(body)
            if framed:
                self.nbytes += len(body)
            payload += framed + resp.end()
            self.complete = True
            self._ended.set()
            await self.out.afinish(payload, close=not resp.keep_alive or self._body_pending())
            return
        if not resp.head_sent:
            await self.out.awrite(resp.head(self._status, self._headers))
        framed = resp.body(body)
        if framed:
            self.nbytes += len(body)
            await self.out.awrite(framed)


# RFC 6455 7.4.1 / IANA: "Try Again Later", the server is overloaded for now.
TRY_AGAIN_LATER = 1013
# What a queued message costs beyond its data (the dict, the queue slot).
EVENT_OVERHEAD = 200


def _queued_size(event: ASGIMessage) -> int:
    data = event.get("text")
    if data is None:
        data = event.get("bytes") or b""
    return len(data) + EVENT_OVERHEAD


class WebSocketSession:
    """One websocket: handshake, frames both ways, close handshake, disconnect.

    ``feed`` is called by the runtime's receiving task for each frame;
    pings and the close handshake are answered right there, data messages
    queue up for the app's ``receive``, at most ``max_queue`` bytes of them.

    Beyond that the websocket is closed with 1013 (try again later). There
    is no backpressure to apply: Mongrel2 reads the client's socket and
    pushes every frame, and the only way to stop it for one client is to
    stop reading all of them. 1013 rather than 1009 (message too big): no
    single message was too big, the app was too slow for this client right
    now, and a client may reconnect and send more slowly. A message arriving
    when nothing is queued is always accepted (``max_message`` bounds it).
    """

    def __init__(
        self,
        msg: WebSocketHandshake,
        conn: AsyncConnection,
        out: AsyncOutput,
        close_timeout: float = 5.0,
        max_message: int = 16 * 1024 * 1024,
        access_log: AccessLogger | None = None,
        max_queue: int = 16 * 1024 * 1024,
    ) -> None:
        self.access_log = access_log
        self.max_queue = max_queue
        self.queued = 0  # bytes of received messages the app has not read
        self.msg = msg
        self.conn = conn
        self.out = out
        self.close_timeout = close_timeout
        self.state: Literal["connecting", "open", "closing", "closed"] = "connecting"
        self._assembler = ws.MessageAssembler(max_message)
        self._events: asyncio.Queue[ASGIMessage] = asyncio.Queue()
        self._events.put_nowait({"type": "websocket.connect"})
        self._disconnected = False
        self._final: ASGIMessage | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._denial: Response | None = None
        self._denial_head: tuple[str, list[tuple[str, str]]] | None = None
        self.status_code = 0  # 101, or the status of the refusal, for the access log
        self._tcp_closed = asyncio.Event()

    # -- runtime side -------------------------------------------------------
    def feed(self, frame: WebSocketFrame) -> None:
        """One frame from the client (Mongrel2 unmasked it)."""
        if self.state == "closed":
            return
        try:
            event = self._assembler.feed(frame.flags, frame.body)
        except ws.WebSocketError as exc:
            log.info("websocket %s:%s protocol error: %s", frame.sender, frame.conn_id, exc)
            self._close_both(exc.code, str(exc)[:100])
            return
        if isinstance(event, (ws.TextMessage, ws.BinaryMessage)):
            if self.state != "open":
                return  # after our close frame, data is discarded (RFC 6455 5.5.1)
            item: ASGIMessage
            if isinstance(event, ws.TextMessage):
                item = {"type": "websocket.receive", "text": event.data}
            else:
                item = {"type": "websocket.receive", "bytes": event.data}
            size = _queued_size(item)
            if self.queued and self.queued + size > self.max_queue:
                log.warning(
                    "websocket %s:%s: app has %d bytes unread, closing with %d",
                    frame.sender,
                    frame.conn_id,
                    self.queued,
                    TRY_AGAIN_LATER,
                )
                # The close handshake, not an abrupt TCP close: closing a socket
                # with unread data sends a RST, which can destroy our close frame
                # before the client reads it. Until the answer, frames are discarded.
                self._close_both(TRY_AGAIN_LATER, "receive queue full", start_timer=True)
                return
            self.queued += size
            self._events.put_nowait(item)
        elif isinstance(event, ws.Ping):
            if self.state == "open":
                self.out.push(ws.encode_frame(ws.OP_PONG, event.payload))
        elif isinstance(event, ws.Close):
            if self.state == "open":
                # Echo the code, as RFC 6455 asks, then end the TCP connection.
                code = ws.NORMAL if event.code == ws.NO_STATUS else event.code
                self.out.push(ws.encode_close(code))
            self._finish_tcp()
            self._disconnect(event.code, event.reason)

    def client_gone(self) -> None:
        """Mongrel2 reports the TCP connection closed."""
        self.state = "closed"
        self._cancel_timer()
        self._tcp_closed.set()
        self._disconnect(ws.ABNORMAL)

    async def wait_closed(self) -> None:
        """Until the TCP connection is closed (close handshake done or timed out)."""
        if self.state != "closed":
            await self._tcp_closed.wait()

    def shutdown(self) -> None:
        """The server stops: tell the client (1001) and the app."""
        if self.state == "open":
            self._close_both(ws.GOING_AWAY, "server shutting down", start_timer=True)
        elif self.state == "connecting":
            self._disconnect(ws.GOING_AWAY)

    def _disconnect(self, code: int, reason: str = "") -> None:
        if not self._disconnected:
            self._disconnected = True
            self._final = {"type": "websocket.disconnect", "code": code, "reason": reason}
            self._events.put_nowait(dict(self._final))

    def _close_both(self, code: int, reason: str = "", start_timer: bool = False) -> None:
        """Send our close frame; the client's answer (or a timeout) ends TCP."""
        if self.state == "open":
            self.out.push(ws.encode_close(code, reason))
            self.state = "closing"
        if start_timer:
            self._start_timer()
        else:
            self._finish_tcp()
        self._disconnect(code, reason)

    def _start_timer(self) -> None:
        if self._close_timer is None and self.state == "closing":
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(self.close_timeout, self._finish_tcp)

    def _cancel_timer(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None

    def _finish_tcp(self) -> None:
        self._cancel_timer()
        self._tcp_closed.set()
        if self.state != "closed":
            self.state = "closed"
            self.out.close_now()

    # -- app side -------------------------------------------------------------
    async def serve(self, app: ASGIApp, scope: Scope) -> None:
        """:meth:`run`, then wait for the TCP connection to close; one access log line."""
        started = time.perf_counter()
        try:
            await self.run(app, scope)
            await self.wait_closed()  # the client's close frame, or a timeout
        finally:
            if self.access_log is not None:
                duration = time.perf_counter() - started
                self.access_log.log(self.msg, self.status_code, 0, duration)

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        """Call ``app``; whatever it does, the connection ends up answered and closed."""
        self.conn.on_close = self.client_gone
        try:
            await app(scope, self.receive, self.send)
        except asyncio.CancelledError:
            self._after_app(ws.GOING_AWAY, 500)
            self._finish_tcp()  # the server is stopping: no time for the close handshake
            raise
        except BaseException as exc:  # SystemExit too: close 1011, the loop goes on
            if self.state == "closed" or self._disconnected:
                log.info("websocket app ended after disconnect: %r", exc)
            else:
                log.error("error in websocket app for %s", self.msg.path, exc_info=exc)
            self._after_app(ws.INTERNAL_ERROR, 500)
        else:
            if self.state == "connecting" and self._denial is None:
                log.error("websocket app for %s returned without accepting", self.msg.path)
            self._after_app(ws.NORMAL, 500)
        finally:
            if self.state == "closed":
                self._cancel_timer()

    def _after_app(self, code: int, status: int) -> None:
        if self._denial is not None:
            if not self.out.done:
                self._denial.abort()
                self.out.close_now()
            self.state = "closed"
            return
        if self.state == "connecting":
            self._reject(status)
        elif self.state == "open":
            self.out.push(ws.encode_close(code))
            self.state = "closing"
            self._start_timer()

    def _reject(self, status: int) -> None:
        self.status_code = status
        version, _ = request_framing(self.msg)
        self.out.push(error_response(_status_line(status), version)[0])
        self._finish_tcp()

    async def receive(self) -> ASGIMessage:
        if self._events.empty() and self._final is not None:
            return dict(self._final)  # asked again after the disconnect: same answer
        event = await self._events.get()
        if event["type"] == "websocket.receive":
            self.queued -= _queued_size(event)
        return event

    async def send(self, message: ASGIMessage) -> None:
        kind = message.get("type")
        if kind == "websocket.send":
            if self.state != "open":
                if self.state == "connecting":
                    raise RuntimeError("websocket.send before websocket.accept")
                raise ConnectionGone()
            text = message.get("text")
            if text is not None:
                frame = ws.encode_frame(ws.OP_TEXT, str(text).encode("utf-8"))
            else:
                frame = ws.encode_frame(ws.OP_BINARY, bytes(message.get("bytes") or b""))
            await self.out.awrite(frame)
        elif kind == "websocket.accept":
            if self.state != "connecting" or self._denial is not None:
                raise RuntimeError("websocket.accept in state %s" % self.state)
            headers = [
                (bytes(n).decode("latin-1"), bytes(v).decode("latin-1"))
                for n, v in message.get("headers", ())
            ]
            sub = message.get("subprotocol")
            self.out.push(ws.handshake_response(self.msg.accept, sub, headers))
            self.state = "open"
            self.status_code = 101
        elif kind == "websocket.close":
            code = int(message.get("code") or ws.NORMAL)
            reason = str(message.get("reason") or "")
            if self.state == "connecting":
                self._reject(403)
                self._disconnect(code, reason)
            elif self.state == "open":
                self.out.push(ws.encode_close(code, reason))
                self.state = "closing"
                self._start_timer()
            elif self.state == "closed" and self._disconnected:
                raise ConnectionGone()
        elif kind == "websocket.http.response.start":
            if self.state != "connecting" or self._denial is not None:
                raise RuntimeError("denial response after the handshake")
            version, _ = request_framing(self.msg)
            self._denial = Response("GET", version, False, SERVER_HEADER)
            self.status_code = int(message["status"])
            self._denial_head = (
                _status_line(int(message["status"])),
                [
                    (bytes(n).decode("latin-1"), bytes(v).decode("latin-1"))
                    for n, v in message.get("headers", ())
                ],
            )
        elif kind == "websocket.http.response.body":
            denial = self._denial
            if denial is None or self._denial_head is None:
                raise RuntimeError("websocket.http.response.body without a start")
            body = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            payload = b""
            if not denial.head_sent:
                payload = denial.head(
                    *self._denial_head, content_length=None if more else len(body)
                )
            payload += denial.body(body)
            if not more:
                payload += denial.end()
            self.out.push(payload)
            if not more:
                self._finish_tcp()
                self._disconnect(ws.NORMAL)
        else:
            raise RuntimeError("unexpected ASGI message %r in a websocket scope" % (kind,))


class LifespanError(Exception):
    """The app's lifespan startup failed; the message is the one line shown."""


class Lifespan:
    """Runs the app's ``lifespan`` scope; apps without lifespan support are fine."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.supported = True
        self._events: asyncio.Queue[ASGIMessage] = asyncio.Queue()
        self._replies: asyncio.Queue[ASGIMessage] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._received = False
        self._error: BaseException | None = None

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": dict(ASGI_INFO), "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except Exception as exc:
            self._error = exc

    async def _receive(self) -> ASGIMessage:
        self._received = True
        return await self._events.get()

    async def _send(self, message: ASGIMessage) -> None:
        await self._replies.put(message)

    async def _reply(self, timeout: float | None) -> ASGIMessage | None:
        """The app's answer, or ``None`` when it returned or raised instead."""
        assert self._task is not None
        getter = asyncio.ensure_future(self._replies.get())
        try:
            done, _ = await asyncio.wait(
                {getter, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not getter.done():
                getter.cancel()
        if getter in done:
            return getter.result()
        if not done:
            raise TimeoutError()
        return None

    async def startup(self) -> None:
        """Raise :class:`LifespanError` if the app reports (or raises) a failed startup."""
        self._task = asyncio.create_task(self._run())
        await self._events.put({"type": "lifespan.startup"})
        reply = await self._reply(None)
        if reply is None:
            if self._error is not None and self._received:
                raise LifespanError("lifespan startup failed: %s" % _one_line(self._error))
            # Raised before asking for the event, or returned: no lifespan support.
            self.supported = False
            log.info(
                "the app does not support the ASGI lifespan protocol%s",
                " (%s)" % _one_line(self._error) if self._error else "",
            )
            return
        if reply.get("type") == "lifespan.startup.failed":
            raise LifespanError("lifespan startup failed: %s" % _last_line(reply.get("message")))
        if reply.get("type") != "lifespan.startup.complete":
            raise LifespanError("lifespan startup: unexpected message %r" % reply.get("type"))

    async def shutdown(self, timeout: float) -> None:
        """Ask the app to shut down; errors and a timeout are logged, not raised."""
        if not self.supported or self._task is None or self._task.done():
            return
        await self._events.put({"type": "lifespan.shutdown"})
        try:
            reply = await self._reply(timeout)
        except TimeoutError:
            log.warning("lifespan shutdown did not finish in %.1fs", timeout)
            self._task.cancel()
            return
        if reply is None:
            if self._error is not None:
                log.error("lifespan shutdown failed: %s", _one_line(self._error))
        elif reply.get("type") == "lifespan.shutdown.failed":
            log.error("lifespan shutdown failed: %s", _last_line(reply.get("message")))
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return "%s: %s" % (type(exc).__name__, text[-1]) if text else type(exc).__name__


def _last_line(message: Any) -> str:
    """Starlette puts a whole traceback in ``message``: its last line says what failed."""
    lines = [ln.strip() for ln in str(message or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "no reason given"
