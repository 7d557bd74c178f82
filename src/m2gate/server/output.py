"""Per-connection state and the coalescing writer every response goes through.

Mongrel2 drops a connection that has more than 16 replies queued, while PEP
3333 forbids holding back a block the app yielded. So a response's chunks are
merged into messages whose size grows with what was already sent (few
messages for a big body), and a timer flushes whatever waits longer than
``flush_interval`` (a slow stream still goes out promptly).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from m2gate.protocol import replies

if TYPE_CHECKING:
    from m2gate.protocol.messages import Message
    from m2gate.transports.base import ReplySink

log = logging.getLogger("m2gate.output")

MIN_MESSAGE = 64 * 1024


class ClientDisconnected(Exception):
    """Mongrel2 told us the client is gone; stop producing the response."""


class Connection:
    """What the runtime knows about one client connection (sender, conn id)."""

    __slots__ = ("busy", "closed", "conn_id", "credits", "key", "pending", "sender", "uuid")

    def __init__(self, sender: str, conn_id: int, uuid: bytes) -> None:
        self.sender = sender
        self.conn_id = conn_id
        self.key = (sender, conn_id)
        self.uuid = uuid
        self.busy = False
        self.closed = False
        self.credits = 0
        self.pending: deque[Message] = deque()


class Flusher:
    """One thread per process that flushes outputs whose deadline passed."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Output]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._run, name="m2gate-flusher", daemon=True)
        self._thread.start()

    def schedule(self, out: Output, deadline: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), out))
            if self._heap[0][2] is out:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, _, out = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
            try:
                out.timer_flush()
            except Exception:  # a send failure must not kill the flusher
                log.exception("timed flush failed")


class Output:
    """Writes one response to one connection, merging chunks into few messages."""

    __slots__ = (
        "_buf",
        "_lock",
        "_scheduled",
        "_size",
        "_target",
        "bytes_sent",
        "closing",
        "conn",
        "done",
        "flush_interval",
        "flusher",
        "max_message",
        "sink",
    )

    def __init__(
        self,
        conn: Connection,
        sink: ReplySink,
        flusher: Flusher | None,
        max_message: int,
        flush_interval: float,
    ) -> None:
        self.conn = conn
        self.sink = sink
        self.flusher = flusher
        self.max_message = max_message
        self.flush_interval = flush_interval
        self._buf: list[bytes] = []
        self._size = 0
        self._target = min(MIN_MESSAGE, max_message)
        self._lock = threading.Lock()
        self._scheduled = False
        self.bytes_sent = 0
        self.done = False
        self.closing = False

    def write(self, data: bytes) -> None:
        """Queue ``data``; it leaves at once if large, else within flush_interval."""
        if self.conn.closed:
            raise ClientDisconnected()
        if not data:
            return
        with self._lock:
            self._buf.append(data)
            self._size += len(data)
            if self._size >= self._target or self.flusher is None or self.flush_interval <= 0:
                self._flush_locked()
            elif not self._scheduled:
                self._scheduled = True
                self.flusher.schedule(self, time.monotonic() + self.flush_interval)

    def _drain_locked(self) -> list[bytes]:
        """Turn the buffered bytes into reply messages of at most max_message."""
        if not self._buf:
            return []
        payload = self._buf[0] if len(self._buf) == 1 else b"".join(self._buf)
        self._buf = []
        self._size = 0
        self.bytes_sent += len(payload)
        uuid, conn_id, step = self.conn.uuid, self.conn.conn_id, self.max_message
        return [
            replies.reply(uuid, conn_id, payload[i : i + step])
            for i in range(0, len(payload), step)
        ]

    def _flush_locked(self) -> None:
        msgs = self._drain_locked()
        if msgs:
            self.sink.send(msgs)
            # Grow messages with the body so a long stream stays far below
            # Mongrel2's 16 queued replies per connection.
            self._target = max(self._target, min(self.bytes_sent, self.max_message))

    def timer_flush(self) -> None:
        with self._lock:
            self._scheduled = False
            if not self.done and not self.conn.closed:
                self._flush_locked()

    def finish(self, data: bytes = b"", close: bool = False) -> None:
        """Send what is left (and the close reply if the connection must end)."""
        with self._lock:
            if self.done:
                return
            self.done = True
            self.closing = close
            if self.conn.closed:
                return
            if data:
                self._buf.append(data)
            msgs = self._drain_locked()
            if close:
                msgs += replies.close(self.conn.uuid, [self.conn.conn_id])
            if msgs:
                self.sink.send(msgs)
