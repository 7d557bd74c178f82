"""The gevent worker: one greenlet per request, many slow requests per process.

Only *how* a unit of work runs differs from :class:`ThreadedRuntime`: a
greenlet from a bounded pool instead of one of N threads. What happens to a
message is the runtime contract (:mod:`m2gate.runtime.base`), and serving a
request (uploads, coalesced :class:`~m2gate.conn.connection.Output`) is the
threaded runtime's code, unchanged. That code uses ``threading`` and ``time``,
which become cooperative once the process is monkey-patched: call
:func:`~m2gate.runtime.gevent_patch.patch` before the app, or anything it
imports, is loaded (the CLI does it first thing). The flusher
thread then is a greenlet and its Condition a gevent one.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import Any

import gevent
import gevent.pool
import zmq.green

from m2gate.conn.connection import Connection
from m2gate.protocol.messages import Message
from m2gate.runtime.gevent_patch import patch
from m2gate.runtime.threaded import RequestHandler, ThreadedRuntime
from m2gate.transports.base import ReplySink, RequestSource
from m2gate.transports.zmq_sync import MultiZmqTransport, ZmqTransport

log = logging.getLogger("m2gate.worker")

# Let the app's greenlets run at least this often while messages keep arriving.
YIELD_EVERY = 16


class GreenZmqTransport(ZmqTransport):
    """The same transport on ``zmq.green``: waiting for a message lets greenlets run."""

    context_class = zmq.green.Context
    poller_class = zmq.green.Poller
    blocking_recv = False


class GreenMultiZmqTransport(MultiZmqTransport):
    """Several front-ends on ``zmq.green``: waiting for a message lets greenlets run."""

    context_class = zmq.green.Context
    poller_class = zmq.green.Poller


class GeventRuntime(ThreadedRuntime):
    """Serves each connection's requests on a greenlet, at most ``connections`` at once.

    The receiving loop never blocks on a full pool (it must keep reading
    disconnect notices): requests beyond the bound wait in a backlog that
    finishing greenlets pick up, as idle threads take from the queue; the
    backlog holds at most ``backlog`` requests, beyond it clients get 503.
    """

    def __init__(
        self,
        source: RequestSource,
        sink: ReplySink,
        handler: RequestHandler,
        connections: int = 1000,
        **kwargs: Any,
    ) -> None:
        kwargs["threads"] = 0  # the pool replaces the app threads
        super().__init__(source, sink, handler, **kwargs)
        self._pool = gevent.pool.Pool(connections)
        self._backlog: deque[tuple[Connection, Message]] = deque()
        self._fed = 0

    def _start(self) -> None:
        """Greenlets are spawned per request; nothing runs in advance."""

    def feed(self, data: bytes) -> None:
        super().feed(data)
        self._fed += 1
        if self._fed % YIELD_EVERY == 0:
            gevent.sleep(0)  # a busy PULL never blocks, so yield explicitly

    def _submit(self, conn: Connection, msg: Message) -> None:
        if self._pool.free_count() > 0:
            self._pool.spawn(self._run_greenlet, conn, msg)
        elif len(self._backlog) < self.backlog:
            self._backlog.append((conn, msg))
        else:
            self._refuse(conn, msg)

    def _run_greenlet(self, conn: Connection, msg: Message) -> None:
        item: tuple[Connection, Message] | None = (conn, msg)
        while item is not None:
            self._serve_connection(*item)
            item = self._backlog.popleft() if self._backlog else None

    @property
    def in_flight(self) -> int:
        """Requests being served or waiting for a free greenlet."""
        return len(self._pool) + len(self._backlog)

    def drain(self, timeout: float) -> bool:
        """Let running and backlogged requests finish, at most ``timeout`` seconds."""
        if self._pool.join(timeout=timeout):
            return True
        log.warning(
            "graceful timeout (%.1fs): %d request(s) still running", timeout, self.in_flight
        )
        return False


SignalHandler = Callable[[int, FrameType | None], None]


def install_signals(handler: SignalHandler, signums: tuple[int, ...]) -> None:
    """Run ``handler`` for ``signums`` in the hub's own greenlet, as gevent requires.

    A plain ``signal.signal`` handler runs in whichever greenlet happens to be
    current; a ``SystemExit`` it raises (the forced stop) would only end that
    greenlet. Here it is re-raised in the main greenlet, which runs the loop.
    """
    main = gevent.getcurrent()

    def call(signum: int) -> None:
        try:
            handler(signum, None)
        except SystemExit as exc:
            gevent.kill(main, exc)

    for signum in signums:
        gevent.signal_handler(signum, call, signum)


__all__ = ["GeventRuntime", "GreenZmqTransport", "install_signals", "patch"]
