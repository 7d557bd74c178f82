"""zmq.asyncio transport: PULL requests from Mongrel2, PUB replies back.

Receiving is a coroutine so one event loop can wait for Mongrel2 and run
many app coroutines. Sending stays a plain call: the PUB only blocks when
its high-water mark is reached, i.e. when Mongrel2 stopped reading (then
nothing can reach Mongrel2 anyway, and the wait is bounded by
``send_timeout``), so the same
:class:`~m2gate.transports.base.ReplySink` contract and the same writer code
serve the threaded and the asyncio runtimes. Use it from the loop's thread
only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import zmq
import zmq.asyncio

from m2gate.transports.frontends import MAX_FRONTENDS, FrontendSinks
from m2gate.transports.zmq_common import (
    FrontendIntake,
    FrontendMonitor,
    HandlerSockets,
    PubSink,
    connect_pair,
)


class AsyncZmqTransport(HandlerSockets):
    """Connects a PULL to Mongrel2's ``send_spec`` and a PUB to its ``recv_spec``."""

    send: Callable[[Sequence[bytes]], None]  # the PubSink's own send

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
        self.ctx = zmq.asyncio.Context()
        self.pull, pub = connect_pair(
            self.ctx, send_spec, recv_spec, identity, hwm=hwm, max_size=max_size
        )
        self._async_pub = pub
        # A blocking shadow of the same socket: PUB sends complete at once,
        # and a plain call needs no future per reply.
        # (The PubSink's lock is uncontended here: one thread.)
        self._pub: zmq.Socket[bytes] = zmq.Socket.shadow(pub.underlying)
        self.sink = PubSink(self._pub, send_timeout)
        self.send = self.sink.send
        self._pull_sync: zmq.Socket[bytes] = zmq.Socket.shadow(self.pull.underlying)
        self._monitor = FrontendMonitor(
            self._pull_sync, send_spec, zmq.Context.shadow(self.ctx.underlying)
        )
        self._receiving = True

    async def recv(self, timeout_ms: int | None = None) -> bytes | None:
        """Next raw message; ``None`` after ``timeout_ms`` (``None``: wait forever)."""
        if timeout_ms is not None:
            events = await self.pull.poll(timeout_ms)
            if not events:
                return None
        data: bytes = await self.pull.recv(copy=True)
        return data

    def recv_nowait(self) -> bytes | None:
        """A message already queued here, or ``None``; never waits.

        Goes through a blocking shadow of the PULL: no future per message
        while a burst is drained. The async ``recv`` checks the socket's
        events before it waits, so it still wakes up for what comes next.
        """
        try:
            data: bytes = self._pull_sync.recv(zmq.NOBLOCK, copy=True)
        except zmq.Again:
            return None
        return data

    def close(self, linger_s: float) -> None:
        """Close both sockets, giving queued replies ``linger_s`` to leave."""
        self._close_pull()
        self._async_pub.close(linger=int(linger_s * 1000))
        self.ctx.term()


class MultiAsyncZmqTransport(FrontendIntake):
    """Several Mongrel2 front-ends on one event loop: a PULL and a PUB for each.

    As :class:`~m2gate.transports.zmq_sync.MultiZmqTransport`: messages come
    out with their front-end's tag in front of the sender, replies go out on
    the PUB their tag names, PULLs are read in turn, and each PULL has its
    own :class:`FrontendMonitor`.
    """

    tagged = True

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
        self.ctx = zmq.asyncio.Context()
        blocking_ctx: zmq.Context[Any] = zmq.Context.shadow(self.ctx.underlying)
        self._pulls: list[zmq.asyncio.Socket] = []
        self._pulls_sync: list[zmq.Socket[bytes]] = []
        self._pubs: list[zmq.asyncio.Socket] = []
        self._monitors: list[FrontendMonitor] = []
        sinks: list[PubSink] = []
        self._poller = zmq.asyncio.Poller()
        for send_spec, recv_spec in self.frontends:
            pull, pub = connect_pair(
                self.ctx, send_spec, recv_spec, identity, hwm=hwm, max_size=max_size
            )
            self._pulls.append(pull)
            self._pubs.append(pub)
            pull_sync: zmq.Socket[bytes] = zmq.Socket.shadow(pull.underlying)
            self._pulls_sync.append(pull_sync)
            sinks.append(PubSink(zmq.Socket.shadow(pub.underlying), send_timeout))
            self._monitors.append(FrontendMonitor(pull_sync, send_spec, blocking_ctx))
            self._poller.register(pull, zmq.POLLIN)
        self._intake = self._pulls_sync
        self._open_intake()
        self.sink = FrontendSinks(sinks)
        self.send = self.sink.send

    async def recv(self, timeout_ms: int | None = None) -> bytes | None:
        """Next raw message (sender tagged); ``None`` after ``timeout_ms`` (``None``: forever)."""
        while True:
            data = self.recv_nowait()
            if data is not None:
                return data
            if not await self._poller.poll(timeout_ms):
                return None

    def close(self, linger_s: float) -> None:
        """Close every socket, giving queued replies ``linger_s`` to leave."""
        for monitor, pull in zip(self._monitors, self._pulls, strict=True):
            monitor.close()
            pull.close(linger=0)
        for pub in self._pubs:
            pub.close(linger=int(linger_s * 1000))
        self.ctx.term()
