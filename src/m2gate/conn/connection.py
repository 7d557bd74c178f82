"""Per-connection state and the coalescing writer every response goes through.

Mongrel2 drops a connection that has more than 16 replies queued, while PEP
3333 forbids holding back a block the app yielded. So a response's chunks are
merged into messages whose size grows with what was already sent (few
messages for a big body), and a timer flushes whatever waits longer than
``flush_interval`` (a slow stream still goes out promptly).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from m2gate.protocol import replies
from m2gate.protocol.errors import ClientDisconnected
from m2gate.transports.base import ReplyStalled

if TYPE_CHECKING:
    from m2gate.conn.uploads import Upload
    from m2gate.protocol.messages import Message
    from m2gate.transports.base import ReplySink

log = logging.getLogger("m2gate.output")

MIN_MESSAGE = 64 * 1024
# Seconds a response waits for flow-control credits before its connection is
# given up (the ``credits_timeout`` setting): a client that never reads must
# not hold an app thread forever.
CREDITS_TIMEOUT = 60.0


class Connection:
    """What the runtime knows about one client connection (sender, conn id).

    ``lock`` guards the fields the receiving thread changes while an app
    thread writes: ``closed`` and, with Mongrel2's ``download.flow_control``,
    ``credits`` (bytes we may still have in flight to this client). A
    Condition on it is only built when a writer must wait for credits: most
    connections never wait, and building one costs more than a whole reply.
    """

    __slots__ = (
        "_cond",
        "busy",
        "closed",
        "conn_id",
        "credits",
        "epoch",
        "flow_control",
        "key",
        "lock",
        "max_credit_message",
        "output",
        "overflow",
        "pending",
        "sender",
        "upload",
        "uuid",
    )

    def __init__(self, sender: str, conn_id: int, uuid: bytes) -> None:
        self.sender = sender
        self.conn_id = conn_id
        self.key = (sender, conn_id)
        self.uuid = uuid
        self.busy = False
        self.closed = False
        self.epoch = 0  # the Mongrel2 incarnation its id belongs to (ConnectionTable.reset)
        self.lock = threading.Lock()
        self._cond: threading.Condition | None = None
        self.flow_control = False
        self.credits = 0
        self.max_credit_message = 0
        self.output: OutputBuffer | None = None
        self.upload: Upload | None = None
        self.pending: deque[Message] = deque()
        self.overflow: Message | None = None  # pipelined beyond the bound: answered 503

    def grant(self, initial: int) -> None:
        """Flow control is on: the first request carries the initial credits."""
        self.flow_control = True
        self.credits = initial
        # One message larger than the initial window kills the connection.
        self.max_credit_message = initial

    def wait_locked(self, timeout: float) -> None:
        """With ``lock`` held: sleep until credits arrive, the client goes, or ``timeout``."""
        if self._cond is None:
            self._cond = threading.Condition(self.lock)
        self._cond.wait(timeout)

    def _wake_locked(self) -> None:
        if self._cond is not None:
            self._cond.notify_all()

    def add_credits(self, amount: int) -> None:
        with self.lock:
            self.credits += amount
            self._wake_locked()
            out = self.output
        if out is not None:
            out.credits_arrived()

    def mark_closed(self) -> None:
        with self.lock:
            self.closed = True
            self._wake_locked()


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


class OutputBuffer:
    """The merging rules every response writer shares, and nothing that waits.

    Chunks queue in a buffer and leave as messages whose size grows with what
    was already sent, capped by ``max_message`` and, with flow control, by
    the connection's credits. :meth:`_send_ready_locked` sends what may leave
    *now* and never blocks: how to wait (a Condition in :class:`Output`,
    an awaited event in :class:`~m2gate.conn.async_connection.AsyncOutput`)
    is the subclass's business, so a blocking wait cannot reach an event loop.
    """

    __slots__ = (
        "_buf",
        "_scheduled",
        "_size",
        "_target",
        "bytes_sent",
        "closing",
        "conn",
        "credits_timeout",
        "done",
        "flush_interval",
        "flusher",
        "max_message",
        "on_started",
        "sink",
    )

    # One __init__ for both writers (no super() layer per response): the
    # flusher is the threaded writer's timer, None for the asyncio one.
    def __init__(
        self,
        conn: Connection,
        sink: ReplySink,
        flusher: Flusher | None,
        max_message: int,
        flush_interval: float,
        on_started: Callable[[Connection], None] | None = None,
        credits_timeout: float = CREDITS_TIMEOUT,
    ) -> None:
        self.conn = conn
        self.credits_timeout = credits_timeout  # 0: wait as long as the client lets us
        # Called once, just before the first part of a response leaves while
        # more is to come (a supervisor must then never answer in its place).
        # A response sent whole by ``finish`` never calls it.
        self.on_started = on_started
        self.sink = sink
        self.flusher = flusher
        self._scheduled = False
        self.max_message = max_message
        if conn.flow_control:  # at least a byte: a 0-byte window could send nothing ever
            self.max_message = max(1, min(max_message, conn.max_credit_message))
        self.flush_interval = flush_interval
        self._buf: list[bytes] = []
        self._size = 0
        self._target = min(MIN_MESSAGE, self.max_message)
        self.bytes_sent = 0
        self.done = False
        self.closing = False
        conn.output = self

    def credits_arrived(self) -> None:
        """Called by :meth:`Connection.add_credits` while this response is written."""

    def _starting_locked(self) -> None:
        """A part of the response is about to leave before its end: say so, once."""
        cb = self.on_started
        if cb is not None:
            self.on_started = None
            cb(self.conn)

    def _take_locked(self, limit: int) -> bytes:
        payload = self._buf[0] if len(self._buf) == 1 else b"".join(self._buf)
        if len(payload) > limit:
            self._buf = [payload[limit:]]
            payload = payload[:limit]
        else:
            self._buf = []
        self._size -= len(payload)
        self.bytes_sent += len(payload)
        return payload

    def _send_ready_locked(self, tail: Sequence[bytes] = ()) -> bool:
        """Send the buffer as far as credits allow; True once it is empty.

        ``tail`` (e.g. the close reply) follows the buffer, in the same send
        when there is no flow control; it is only sent once the buffer is
        empty (call again with it after waiting for credits).
        """
        conn = self.conn
        uuid, conn_id = conn.uuid, conn.conn_id
        if not conn.flow_control:
            msgs = []
            while self._buf:
                msgs.append(replies.reply(uuid, conn_id, self._take_locked(self.max_message)))
            if msgs:
                # Grow messages with the body so a long stream stays far
                # below Mongrel2's 16 queued replies per connection.
                self._target = max(self._target, min(self.bytes_sent, self.max_message))
            msgs += tail
            if msgs:
                try:
                    self.sink.send(msgs)
                except ReplyStalled:
                    self._given_up()
            return True
        try:
            while self._buf:
                if conn.closed:
                    raise ClientDisconnected()
                if conn.credits <= 0:
                    return False
                payload = self._take_locked(min(conn.credits, self.max_message))
                conn.credits -= len(payload)
                self.sink.send([replies.reply(uuid, conn_id, payload)])
            if tail:
                self.sink.send(tail)
        except ReplyStalled:
            self._given_up()
        return True

    def _credits_deadline(self) -> float | None:
        """When a writer that starts waiting for credits now gives up (None: never)."""
        return time.monotonic() + self.credits_timeout if self.credits_timeout > 0 else None

    def _credits_expired(self) -> None:
        """No credits came in ``credits_timeout``: give the connection up, tell Mongrel2.

        The client reads nothing (or Mongrel2 lost it): the connection is
        closed at Mongrel2 (a close reply needs no credits) and marked closed
        here, so the app stops as for a client that went away and its thread
        is free again.
        """
        conn = self.conn
        log.warning(
            "no flow-control credits from %s:%s for %.1fs (%d bytes unsent): connection closed",
            conn.sender,
            conn.conn_id,
            self.credits_timeout,
            self._size,
        )
        conn.closed = True
        self._buf = []
        self._size = 0
        self.closing = True
        try:
            self.sink.send(replies.close(conn.uuid, [conn.conn_id]))
        except ReplyStalled:
            pass  # the sink logged it; the connection is lost either way
        raise ClientDisconnected()

    def _given_up(self) -> None:
        """Mongrel2 stopped reading and part of this reply was dropped: the connection is lost.

        Marked closed (as a disconnect would), so nothing more is written for
        it and the app stops as for a client that went away; the sink logged
        and counted the drop.
        """
        self.conn.closed = True
        self._buf = []
        self._size = 0
        raise ClientDisconnected()


class Output(OutputBuffer):
    """Writes one response to one connection from an app thread (or greenlet).

    Without flow control nothing here blocks. With it, a writer waits until
    Mongrel2 has granted credits for what it sends, so a slow client holds
    back the app instead of filling memory; the flusher thread only ever
    sends what credits allow, never waits.
    """

    __slots__ = ()

    def write(self, data: bytes) -> None:
        """Queue ``data``; it leaves at once if large, else within flush_interval."""
        if self.conn.closed:
            raise ClientDisconnected()
        if not data:
            return
        with self.conn.lock:
            self._buf.append(data)
            self._size += len(data)
            if self._size >= self._target or self.flusher is None or self.flush_interval <= 0:
                if self.on_started is not None:
                    self._starting_locked()
                if not self._send_ready_locked():
                    self._wait_send_locked(())
            elif not self._scheduled:
                self._scheduled = True
                self.flusher.schedule(self, time.monotonic() + self.flush_interval)

    def _wait_send_locked(self, tail: Sequence[bytes]) -> None:
        """Flow control: wait for credits until the buffer (then ``tail``) is sent."""
        if self.on_started is not None and self.bytes_sent:
            self._starting_locked()  # finish() sent a part and must wait for the rest
        deadline = self._credits_deadline()
        while True:
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if wait > 0:
                self.conn.wait_locked(wait)
            if self._send_ready_locked(tail):
                return
            if deadline is not None and time.monotonic() >= deadline:
                self._credits_expired()

    def credits_arrived(self) -> None:
        """Credits came while data waited: let the flusher send it."""
        if self._buf and not self.done and self.flusher is not None:
            self.flusher.schedule(self, time.monotonic())

    def timer_flush(self) -> None:
        with self.conn.lock:
            self._scheduled = False
            if not self.done and not self.conn.closed:
                if self.on_started is not None and self._buf:
                    self._starting_locked()
                self._send_ready_locked()

    def finish(self, data: bytes = b"", close: bool = False) -> None:
        """Send what is left (and the close reply if the connection must end)."""
        conn = self.conn
        with conn.lock:
            if self.done:
                if close and not self.closing and not conn.closed:
                    self.closing = True  # e.g. an upload still arriving after the reply
                    self.sink.send(replies.close(conn.uuid, [conn.conn_id]))
                return
            self.closing = close
            tail = replies.close(conn.uuid, [conn.conn_id]) if close else []
            if (
                not self._buf
                and not conn.flow_control
                and not conn.closed
                and 0 < len(data) <= self.max_message
            ):
                # Nearly every response: whole, small, nothing buffered before it.
                self.bytes_sent += len(data)
                self.done = True
                if conn.output is self:
                    conn.output = None
                try:
                    self.sink.send([replies.reply(conn.uuid, conn.conn_id, data), *tail])
                except ReplyStalled:
                    with contextlib.suppress(ClientDisconnected):
                        self._given_up()  # the connection is lost, as on the slow path
                return
            try:
                if data and not conn.closed:
                    self._buf.append(data)
                    self._size += len(data)
                # A whole small response and its close reply: one send.
                if not conn.closed and not self._send_ready_locked(tail):
                    self._wait_send_locked(tail)
            except ClientDisconnected:
                pass
            finally:
                self.done = True
                if conn.output is self:
                    conn.output = None
