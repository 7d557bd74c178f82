"""One ASGI ``websocket`` session over a Mongrel2 connection."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal

from m2gate.adapters.accesslog import AccessLogger
from m2gate.adapters.asgi.base import (
    ASGIApp,
    ASGIMessage,
    Scope,
    status_line,
)
from m2gate.conn.async_connection import AsyncConnection, AsyncOutput, ConnectionGone
from m2gate.protocol import websocket as ws
from m2gate.protocol.http import SERVER_HEADER, Response, error_response, request_framing
from m2gate.protocol.messages import WebSocketFrame, WebSocketHandshake

log = logging.getLogger("m2gate.asgi")

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
        # How our close frame ended: the client's close reply came, or its timeout.
        self.close_answered = False
        self.close_timed_out = False

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
            if self.state == "closing":
                self.close_answered = True
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
            self._close_timer = loop.call_later(self.close_timeout, self._no_close_reply)

    def _no_close_reply(self) -> None:
        self._close_timer = None
        self.close_timed_out = True
        log.info(
            "websocket %s:%s: no close reply in %.1fs, connection closed",
            self.msg.sender,
            self.msg.conn_id,
            self.close_timeout,
        )
        self._finish_tcp()

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
        self.out.push(error_response(status_line(status), version)[0])
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
                status_line(int(message["status"])),
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
