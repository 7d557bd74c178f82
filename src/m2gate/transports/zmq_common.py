"""The socket set-up every ZeroMQ user of Mongrel2 shares, and the PUB send loop.

Mongrel2 facts live here once: the PULL connects to the handler's
``send_spec`` and the PUB to its ``recv_spec``, both with the handler
identity; the PUB never drops at its high-water mark (replies are already
coalesced into few large messages); stopping means disconnecting the PULL so
Mongrel2 pushes new requests to the other handlers. The blocking and asyncio
transports, the handler API and the supervisor's processes all use these.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import zmq

log = logging.getLogger("m2gate.transport")

# Below this a copy is cheaper than pinning the buffer for zero-copy.
COPY_BELOW = 65536


def open_pub(
    ctx: zmq.Context[Any], recv_spec: str, identity: bytes, linger: int | None = None
) -> Any:
    """A PUB of ``ctx`` connected to Mongrel2's ``recv_spec``, never dropping a reply."""
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    if identity:
        pub.setsockopt(zmq.IDENTITY, identity)
    if linger is not None:
        pub.setsockopt(zmq.LINGER, linger)
    pub.connect(recv_spec)
    return pub


def connect_pair(
    ctx: zmq.Context[Any], send_spec: str, recv_spec: str, identity: str
) -> tuple[Any, Any]:
    """``(pull, pub)`` sockets of ``ctx``, connected to a Mongrel2 handler.

    The PUB connects first: a request we receive must find our reply path.
    """
    ident = identity.encode("ascii")
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    if ident:
        pull.setsockopt(zmq.IDENTITY, ident)
    pub = open_pub(ctx, recv_spec, ident)
    pull.connect(send_spec)
    return pull, pub


class PubSink:
    """A :class:`~m2gate.transports.base.ReplySink` over one PUB; ``send`` is thread-safe.

    The lock makes each ``send`` atomic, so whole replies from different
    threads never interleave.
    """

    __slots__ = ("_lock", "pub")

    def __init__(self, pub: zmq.Socket[Any]) -> None:
        self.pub = pub
        self._lock = threading.Lock()

    def send(self, messages: Sequence[bytes]) -> None:
        send = self.pub.send
        with self._lock:
            for msg in messages:
                send(msg, 0, copy=len(msg) < COPY_BELOW)

    def close(self, linger_s: float) -> None:
        """Close the PUB, giving queued replies ``linger_s`` to leave."""
        with self._lock:
            self.pub.close(linger=int(linger_s * 1000))


def disconnect_pull(pull: zmq.Socket[Any], send_spec: str) -> None:
    """Stop receiving new work; what is already queued here may still be read."""
    try:
        pull.disconnect(send_spec)
    except zmq.ZMQError as exc:  # already gone: nothing more will come
        log.debug("disconnect %s: %s", send_spec, exc)
