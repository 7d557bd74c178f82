"""The socket set-up both ZeroMQ transports (blocking and asyncio) share.

Mongrel2 facts live here once: the PULL connects to the handler's
``send_spec`` and the PUB to its ``recv_spec``, both with the handler
identity; the PUB never drops at its high-water mark (replies are already
coalesced into few large messages); stopping means disconnecting the PULL so
Mongrel2 pushes new requests to the other handlers.
"""

from __future__ import annotations

import logging
from typing import Any

import zmq

log = logging.getLogger("m2gate.transport")


def connect_pair(
    ctx: zmq.Context[Any], send_spec: str, recv_spec: str, identity: str
) -> tuple[Any, Any]:
    """``(pull, pub)`` sockets of ``ctx``, connected to a Mongrel2 handler."""
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    if identity:
        pull.setsockopt(zmq.IDENTITY, identity.encode("ascii"))
        pub.setsockopt(zmq.IDENTITY, identity.encode("ascii"))
    pub.connect(recv_spec)
    pull.connect(send_spec)
    return pull, pub


def disconnect_pull(pull: zmq.Socket[Any], send_spec: str) -> None:
    """Stop receiving new work; what is already queued here may still be read."""
    try:
        pull.disconnect(send_spec)
    except zmq.ZMQError as exc:  # already gone: nothing more will come
        log.debug("disconnect %s: %s", send_spec, exc)
