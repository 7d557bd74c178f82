"""The socket set-up every ZeroMQ user of Mongrel2 shares, and the PUB send loop.

Mongrel2 facts live here once: the PULL connects to the handler's
``send_spec`` and the PUB to its ``recv_spec``, both with the handler
identity; stopping means disconnecting the PULL so Mongrel2 pushes new
requests to the other handlers. The blocking and asyncio transports, the
handler API and the supervisor's processes all use these.

Replies are never dropped silently, and never pile up without bound: a plain
PUB drops at its high-water mark, so a bounded reply socket is an XPUB with
``XPUB_NODROP`` (Mongrel2's SUB cannot tell the difference), whose send
fails with EAGAIN instead. While Mongrel2 does not read (stopped, stalled,
restarting; ZeroMQ keeps queueing for a connect-side peer that is gone) a
writer waits up to ``send_timeout``; after that :class:`PubSink` raises
:class:`~m2gate.transports.base.ReplyStalled` and counts the reply it
dropped, and the writer gives the connection up. Memory held for Mongrel2 is
at most ``hwm`` messages (each at most ``max_message`` bytes).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import zmq

from m2gate.transports.base import ReplyStalled

log = logging.getLogger("m2gate.transport")

# Below this a copy is cheaper than pinning the buffer for zero-copy.
COPY_BELOW = 65536


def open_pub(
    ctx: zmq.Context[Any],
    recv_spec: str,
    identity: bytes,
    linger: int | None = None,
    hwm: int = 0,
) -> Any:
    """A PUB of ``ctx`` connected to Mongrel2's ``recv_spec``, never dropping a reply.

    ``hwm`` 0: no bound (a plain PUB, for the few small replies of the
    master and the handler API); else an XPUB that holds at most ``hwm``
    messages for Mongrel2 and refuses (EAGAIN) rather than drops the next.
    """
    if hwm > 0:
        pub = ctx.socket(zmq.XPUB)
        pub.setsockopt(zmq.XPUB_NODROP, 1)
        pub.setsockopt(zmq.SNDHWM, hwm)
    else:
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, 0)
    if identity:
        pub.setsockopt(zmq.IDENTITY, identity)
    if linger is not None:
        pub.setsockopt(zmq.LINGER, linger)
    pub.connect(recv_spec)
    return pub


def connect_pair(
    ctx: zmq.Context[Any], send_spec: str, recv_spec: str, identity: str, hwm: int = 0
) -> tuple[Any, Any]:
    """``(pull, pub)`` sockets of ``ctx``, connected to a Mongrel2 handler.

    The PUB connects first: a request we receive must find our reply path.
    """
    ident = identity.encode("ascii")
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    if ident:
        pull.setsockopt(zmq.IDENTITY, ident)
    pub = open_pub(ctx, recv_spec, ident, hwm=hwm)
    pull.connect(send_spec)
    return pull, pub


class PubSink:
    """A :class:`~m2gate.transports.base.ReplySink` over one PUB; ``send`` is thread-safe.

    The lock makes each ``send`` atomic, so whole replies from different
    threads never interleave. Over a bounded PUB (:func:`open_pub` with
    ``hwm``) a full buffer makes ``send`` wait up to ``timeout`` seconds,
    then raise :class:`ReplyStalled`; ``stalled`` counts those replies.
    """

    __slots__ = ("_green", "_lock", "pub", "stalled", "timeout")

    def __init__(self, pub: zmq.Socket[Any], timeout: float = 30.0) -> None:
        self.pub = pub
        self._lock = threading.Lock()
        self.timeout = timeout
        self.stalled = 0
        # zmq.green ignores SNDTIMEO (it retries forever, and an XPUB always
        # polls writable): wait in short sleeps there, which gevent makes
        # cooperative. A plain socket waits in libzmq, woken when room frees.
        self._green = type(pub).__module__.startswith("zmq.green")
        if not self._green:
            with contextlib.suppress(zmq.ZMQError):  # a closed or fake socket: no wait
                pub.setsockopt(zmq.SNDTIMEO, max(0, int(timeout * 1000)))

    def send(self, messages: Sequence[bytes]) -> None:
        send = self.pub.send
        with self._lock:
            for msg in messages:
                try:
                    send(msg, zmq.NOBLOCK, copy=len(msg) < COPY_BELOW)
                except zmq.Again:
                    self._send_waiting(msg, len(messages))

    def _send_waiting(self, msg: bytes, count: int) -> None:
        """Mongrel2 is not reading: wait for room, at most ``timeout``; else give up."""
        copy = len(msg) < COPY_BELOW
        started = time.monotonic()
        try:
            if not self._green:
                self.pub.send(msg, 0, copy=copy)  # SNDTIMEO bounds the wait
                return
            delay = 0.001
            while True:
                time.sleep(delay)
                try:
                    self.pub.send(msg, zmq.NOBLOCK, copy=copy)
                    return
                except zmq.Again:
                    if time.monotonic() - started >= self.timeout:
                        raise
                    delay = min(delay * 2, 0.05)
        except zmq.Again:
            self.stalled += 1
            log.warning(
                "Mongrel2 read no reply for %.1fs (%d message(s) buffered for it):"
                " a reply of %d message(s) dropped, its connection given up",
                time.monotonic() - started,
                self.pub.getsockopt(zmq.SNDHWM),
                count,
            )
            raise ReplyStalled() from None

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
