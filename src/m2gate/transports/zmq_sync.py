"""Blocking pyzmq transport: one PULL from Mongrel2, one PUB back, shared by threads."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import zmq

from m2gate.transports.zmq_common import (
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
