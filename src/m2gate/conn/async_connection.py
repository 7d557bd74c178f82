"""The coalescing writer of :mod:`m2gate.conn.connection`, driven by an event loop.

The merging rules (message size growing with the body, ``max_message``,
flow-control credits) are the threaded writer's own: this subclass only
replaces its blocking waits with awaits and its flusher thread with
``loop.call_later``, so both runtimes put the same bytes on the wire.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from m2gate.conn.connection import Connection, Output
from m2gate.protocol import replies
from m2gate.protocol.errors import ClientDisconnected
from m2gate.transports.base import ReplySink


class ConnectionGone(ClientDisconnected, OSError):
    """Raised by ASGI ``send`` once the client is gone (ASGI 2.4 wants an OSError)."""


class Session(Protocol):
    """What serves a connection right now (an HTTP cycle or a websocket)."""

    def client_gone(self) -> None: ...


class AsyncConnection(Connection):
    """A :class:`Connection` that also tells its current session when it closes."""

    __slots__ = ("session",)

    def __init__(self, sender: str, conn_id: int, uuid: bytes) -> None:
        super().__init__(sender, conn_id, uuid)
        self.session: Session | None = None

    def mark_closed(self) -> None:
        super().mark_closed()
        out = self.output
        if isinstance(out, AsyncOutput):
            out.wake()
        if self.session is not None:
            self.session.client_gone()


class AsyncOutput(Output):
    """Writes one response (or one websocket's frames) without blocking the loop."""

    __slots__ = ("_draining", "_timer", "_wake")

    def __init__(
        self, conn: Connection, sink: ReplySink, max_message: int, flush_interval: float
    ) -> None:
        super().__init__(conn, sink, None, max_message, flush_interval)
        self._timer: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._draining = False

    async def awrite(self, data: bytes) -> None:
        """Queue ``data``; it leaves at once if large, else within flush_interval."""
        if self.conn.closed:
            raise ConnectionGone()
        if not data:
            return
        self._buf.append(data)
        self._size += len(data)
        if self._size >= self._target or self.flush_interval <= 0:
            await self._drain()
            # Without flow control nothing above waits: let the other
            # connections run between the messages of a fast stream.
            await asyncio.sleep(0)
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.flush_interval, self._on_timer)

    def push(self, data: bytes) -> None:
        """Queue ``data`` and send what credits allow now (control frames)."""
        if self.conn.closed or self.done or not data:
            return
        self._buf.append(data)
        self._size += len(data)
        self._send_locked(block=False)

    def _on_timer(self) -> None:
        self._timer = None
        if not self.done and not self.conn.closed and not self._draining:
            self._send_locked(block=False)

    async def _drain(self) -> None:
        """Send everything; with flow control, wait for the credits it needs."""
        self._draining = True
        try:
            while True:
                if self.conn.closed:
                    raise ConnectionGone()
                self._send_locked(block=False)
                if not self._buf:
                    return
                self._wake.clear()
                await self._wake.wait()
        finally:
            self._draining = False

    def wake(self) -> None:
        self._wake.set()

    def credits_arrived(self) -> None:
        """Credits came: a waiting writer resumes, or data held back leaves now."""
        self._wake.set()
        if self._buf and not self.done and not self._draining and not self.conn.closed:
            self._send_locked(block=False)

    async def afinish(self, data: bytes = b"", close: bool = False) -> None:
        """Send what is left (and the close reply if the connection must end)."""
        conn = self.conn
        if self.done:
            if close and not self.closing and not conn.closed:
                self.closing = True
                self.sink.send(replies.close(conn.uuid, [conn.conn_id]))
            return
        self.closing = close
        try:
            if data and not conn.closed:
                self._buf.append(data)
                self._size += len(data)
            if not conn.closed:
                await self._drain()
        except ClientDisconnected:
            pass
        finally:
            self.done = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if conn.output is self:
                conn.output = None
        if close and not conn.closed:
            self.sink.send(replies.close(conn.uuid, [conn.conn_id]))

    def close_now(self) -> None:
        """End the connection at once, after what was already sent."""
        conn = self.conn
        if not self._draining and self._buf and not conn.closed:
            self._send_locked(block=False)
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if conn.output is self:
            conn.output = None
        if not self.closing and not conn.closed:
            self.closing = True
            self.sink.send(replies.close(conn.uuid, [conn.conn_id]))
