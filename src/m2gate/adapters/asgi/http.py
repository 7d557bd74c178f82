"""One ASGI ``http`` request/response cycle over a Mongrel2 connection.

Responses go through the same framer (:class:`m2gate.protocol.http.Response`)
and coalescing writer as WSGI ones, so an ASGI app gets the same keep-alive,
chunking and HEAD behaviour.
"""

from __future__ import annotations

import asyncio
import logging
import time

from m2gate.adapters.accesslog import AccessLogger
from m2gate.adapters.asgi.base import (
    ASGIApp,
    ASGIMessage,
    BodySource,
    Scope,
    status_line,
)
from m2gate.conn.async_connection import AsyncConnection, AsyncOutput, ConnectionGone
from m2gate.protocol.errors import ClientDisconnected, LocalProtocolError, RemoteProtocolError
from m2gate.protocol.http import SERVER_HEADER, Response, request_framing
from m2gate.protocol.messages import Message

log = logging.getLogger("m2gate.asgi")


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
        self._over = False  # the response ended or the client left
        self._ended: asyncio.Event | None = None  # made only if the app waits for it
        self.nbytes = 0  # body bytes sent, for the access log
        self.access_log = access_log

    @property
    def status_code(self) -> int:
        return self.resp.status_code

    # -- what the runtime sees --------------------------------------------
    def client_gone(self) -> None:
        self._end()

    def _end(self) -> None:
        # An asyncio.Event per request costs more than the hello-world app:
        # made only when receive() has to wait for the end.
        self._over = True
        if self._ended is not None:
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
                self._end()
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
            status = status_line(exc.status_hint)
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
                self._end()
            except RemoteProtocolError:
                # A broken upload: the app sees a disconnect, the client a 400.
                log.warning("upload for %s %s broke off", self.msg.method, self.msg.path)
                self._body_done = True
                if not self.resp.head_sent and not self.out.done:
                    await self._fail(RemoteProtocolError("broken upload"))
                self._end()
                return {"type": "http.disconnect"}
            if chunk is not None and not self.conn.closed:
                return {"type": "http.request", "body": chunk, "more_body": True}
            if chunk is None and not self.conn.closed:
                self._body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
        if not (self.conn.closed or self.complete):
            if not self._over:
                if self._ended is None:
                    self._ended = asyncio.Event()
                await self._ended.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: ASGIMessage) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            if self._status is not None:
                raise RuntimeError("http.response.start sent twice")
            self._status = status_line(int(message["status"]))
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
        body = message.get("body", b"")
        if type(body) is not bytes:
            body = bytes(body)
        more = message.get("more_body", False)
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
            self._end()
            await self.out.afinish(payload, close=not resp.keep_alive or self._body_pending())
            return
        if not resp.head_sent:
            await self.out.awrite(resp.head(self._status, self._headers))
        framed = resp.body(body)
        if framed:
            self.nbytes += len(body)
            await self.out.awrite(framed)


# RFC 6455 7.4.1 / IANA: "Try Again Later", the server is overloaded for now.
