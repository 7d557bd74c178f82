"""The coalescing writer of :mod:`m2gate.conn.connection`, driven by an event loop.

The merging rules (message size growing with the body, ``max_message``,
flow-control credits) are :class:`~m2gate.conn.connection.OutputBuffer`'s,
shared with the threaded writer, so both runtimes put the same bytes on the
wire. :class:`AsyncOutput` adds only awaits and ``loop.call_later`` timers:
it does not inherit the threaded writer's blocking ``write``/``finish``,
which would wait on a Condition inside the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from m2gate.conn.connection import CREDITS_TIMEOUT, Connection, OutputBuffer
from m2gate.protocol import replies
from m2gate.protocol.errors import ClientDisconnected
from m2gate.transports.base import ReplySink


class ConnectionGone(ClientDisconnected, OSError):
    """Raised by ASGI ``send`` once the client is gone (ASGI 2.4 wants an OSError)."""


class AsyncConnection(Connection):
    """A :class:`Connection` that wakes its writer and calls ``on_close`` when it closes.

    ``on_close`` is set by whatever serves the connection right now (the
    ASGI adapter sets it for a request or a websocket) and cleared after.
    """

    __slots__ = ("on_close",)

    def __init__(self, sender: str, conn_id: int, uuid: bytes) -> None:
        super().__init__(sender, conn_id, uuid)
        self.on_close: Callable[[], None] | None = None

    def mark_closed(self) -> None:
        super().mark_closed()
        out = self.output
        if isinstance(out, AsyncOutput):
            out.wake()
        if self.on_close is not None:
            self.on_close()


class AsyncOutput(OutputBuffer):
    """Writes one response (or one websocket's frames) without blocking the loop."""

    __slots__ = ("_draining", "_timer", "_wake")

    def __init__(
        self,
        conn: Connection,
        sink: ReplySink,
        max_message: int,
        flush_interval: float,
        credits_timeout: float = CREDITS_TIMEOUT,
        on_started: Callable[[Connection], None] | None = None,
    ) -> None:
        # on_started: a worker under the master reports a response (or a
        # websocket's 101) whose first part leaves before its end.
        super().__init__(conn, sink, None, max_message, flush_interval, on_started, credits_timeout)
        self._timer: asyncio.TimerHandle | None = None
        self._wake: asyncio.Event | None = None  # made by the first wait for credits
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
            if self.on_started is not None:
                self._starting_locked()
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
        if self.on_started is not None:
            self._starting_locked()
        self._send_ready_locked()

    def _on_timer(self) -> None:
        self._timer = None
        if not self.done and not self.conn.closed and not self._draining:
            if self.on_started is not None:
                self._starting_locked()
            self._send_ready_locked()

    async def _drain(self) -> None:
        """Send everything; with flow control, wait for the credits it needs."""
        self._draining = True
        deadline: float | None = None
        try:
            while True:
                if self.conn.closed:
                    raise ConnectionGone()
                if self._send_ready_locked():
                    return
                if self.on_started is not None and self.bytes_sent:
                    self._starting_locked()  # a part left; the rest waits for credits
                if deadline is None:
                    deadline = self._credits_deadline() or float("inf")
                left = deadline - time.monotonic()
                if left <= 0:
                    try:
                        self._credits_expired()
                    except ClientDisconnected:
                        raise ConnectionGone() from None
                if self._wake is None:
                    self._wake = asyncio.Event()
                wake = self._wake
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), left if left < 1e9 else None)
        finally:
            self._draining = False

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def credits_arrived(self) -> None:
        """Credits came: a waiting writer resumes, or data held back leaves now."""
        if self._wake is not None:
            self._wake.set()
        if self._buf and not self.done and not self._draining and not self.conn.closed:
            self._send_ready_locked()

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
            self._send_ready_locked()
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if conn.output is self:
            conn.output = None
        if not self.closing and not conn.closed:
            self.closing = True
            self.sink.send(replies.close(conn.uuid, [conn.conn_id]))
