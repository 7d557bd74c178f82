"""Blocking pyzmq transport: one PULL from Mongrel2, one PUB back, shared by threads.

:class:`MultiZmqTransport`: the same for several Mongrel2 front-ends at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import zmq

from m2gate.transports.frontends import MAX_FRONTENDS, FrontendSinks
from m2gate.transports.zmq_common import (
    FrontendIntake,
    FrontendMonitor,
    HandlerSockets,
    PubSink,
    connect_pair,
)


class ZmqTransport(HandlerSockets):
    """Connects to a Mongrel2 handler's ``send_spec`` (PULL) and ``recv_spec`` (PUB).

    The PULL is only used by the receiving thread. The PUB is shared through
    a :class:`PubSink`: each ``send`` is atomic, so replies never interleave
    between threads; with ``hwm`` it holds at most that many messages for a
    Mongrel2 that stopped reading, waiting ``send_timeout`` for room.
    Create it after any ``fork``: ZeroMQ contexts do not survive one.
    """

    # zmq.green's classes here make every wait cooperative (gevent worker).
    context_class: type[zmq.Context[zmq.Socket[bytes]]] = zmq.Context
    poller_class: type[zmq.Poller] = zmq.Poller
    blocking_recv = True  # False: wait through poller_class (cooperative under gevent)
    send: Callable[[Sequence[bytes]], None]  # the ReplySink side: the PubSink's own send

    def __init__(
        self,
        send_spec: str,
        recv_spec: str,
        identity: str,
        hwm: int = 0,
        send_timeout: float = 30.0,
        max_size: int = -1,
    ) -> None:
        self.send_spec = send_spec
        self.recv_spec = recv_spec
        self.ctx = self.context_class()
        self.pull, self.pub = connect_pair(
            self.ctx, send_spec, recv_spec, identity, hwm=hwm, max_size=max_size
        )
        self.sink = PubSink(self.pub, send_timeout)
        self.send = self.sink.send  # no layer of ours between the writer and the socket
        self._monitor = FrontendMonitor(self.pull, send_spec)
        self._receiving = True
        self._poller = self.poller_class()
        self._poller.register(self.pull, zmq.POLLIN)
        self._rcvtimeo = -1

    def recv(self, timeout_ms: int) -> bytes | None:
        if not self.blocking_recv:
            return self._poll_recv(timeout_ms)
        # A blocking recv bounded by RCVTIMEO is the cheapest pyzmq receive
        # (no Poller object, no exception when a message is waiting).
        if timeout_ms != self._rcvtimeo:
            self.pull.setsockopt(zmq.RCVTIMEO, timeout_ms)
            self._rcvtimeo = timeout_ms
        try:
            data: bytes = self.pull.recv()
        except zmq.Again:
            return None
        return data

    def _poll_recv(self, timeout_ms: int) -> bytes | None:
        # Under load a message is usually waiting: try that before polling.
        try:
            data: bytes = self.pull.recv(zmq.NOBLOCK)
            return data
        except zmq.Again:
            pass
        if not self._poller.poll(timeout_ms):
            return None
        data = self.pull.recv()
        return data

    def close(self, linger_s: float) -> None:
        """Close both sockets, giving queued replies ``linger_s`` to leave."""
        self._close_pull()
        self.sink.close(linger_s)
        self.ctx.term()


class MultiZmqTransport(FrontendIntake):
    """Several Mongrel2 front-ends: a PULL and a PUB for each, shared by threads.

    Each message comes out with its front-end's tag in front of its sender
    and each reply goes out on the PUB of the front-end its tag names
    (:mod:`m2gate.transports.frontends`); PULLs are read in turn, so a busy
    front-end cannot starve another. Each PULL has its own
    :class:`FrontendMonitor`: a Mongrel2 restart voids only its own
    front-end's connections (:meth:`frontend_changed` names them).
    """

    context_class: type[zmq.Context[zmq.Socket[bytes]]] = zmq.Context
    poller_class: type[zmq.Poller] = zmq.Poller
    tagged = True  # the runtime keys connections by tagged senders

    def __init__(
        self,
        frontends: Sequence[tuple[str, str]],
        identity: str,
        hwm: int = 0,
        send_timeout: float = 30.0,
        max_size: int = -1,
    ) -> None:
        if not 1 <= len(frontends) <= MAX_FRONTENDS:
            raise ValueError("1 to %d front-ends, not %d" % (MAX_FRONTENDS, len(frontends)))
        self.frontends = list(frontends)
        self.ctx = self.context_class()
        self.pulls: list[zmq.Socket[bytes]] = []
        self.sinks: list[PubSink] = []
        self._monitors: list[FrontendMonitor] = []
        self._poller = self.poller_class()
        for send_spec, recv_spec in self.frontends:
            pull, pub = connect_pair(
                self.ctx, send_spec, recv_spec, identity, hwm=hwm, max_size=max_size
            )
            self.pulls.append(pull)
            self.sinks.append(PubSink(pub, send_timeout))
            self._monitors.append(FrontendMonitor(pull, send_spec))
            self._poller.register(pull, zmq.POLLIN)
        self._intake = self.pulls
        self._open_intake()
        self.sink = FrontendSinks(self.sinks)
        self.send = self.sink.send

    def recv(self, timeout_ms: int) -> bytes | None:
        """Next raw message (sender tagged) from any front-end, in turn; None after the wait."""
        data = self.recv_nowait()
        if data is None and self._poller.poll(timeout_ms):
            data = self.recv_nowait()
        return data

    def close(self, linger_s: float) -> None:
        """Close every socket, giving queued replies ``linger_s`` to leave."""
        for monitor, pull in zip(self._monitors, self.pulls, strict=True):
            monitor.close()
            pull.close(linger=0)
        for sink in self.sinks:
            sink.close(linger_s)
        self.ctx.term()
