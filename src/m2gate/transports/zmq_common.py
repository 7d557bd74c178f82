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
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import zmq

from m2gate.transports.base import ReplyStalled
from m2gate.transports.frontends import tag, tag_message

log = logging.getLogger("m2gate.transport")

_MONITORS = itertools.count()

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


# What a request message holds beside its body: the head Mongrel2 accepted
# (limits.buffer_size, 4 KiB by default) re-encoded as tnetstring or JSON
# (escaping can double it), Mongrel2's own keys, the sender and id.
REQUEST_HEAD_ROOM = 64 * 1024


def pull_limit(content_length: int) -> int:
    """MAXMSGSIZE for a PULL from a Mongrel2 with this limits.content_length (0: none).

    Bigger bodies reach us as upload files, so anything larger is not from
    a Mongrel2 configured so: whoever bound the spec while Mongrel2 was
    down. ZeroMQ drops such a peer before the message is allocated.
    """
    return content_length + REQUEST_HEAD_ROOM if content_length > 0 else -1


def open_pull(ctx: zmq.Context[Any], identity: bytes, max_size: int = -1) -> Any:
    """A PULL of ``ctx`` for Mongrel2's ``send_spec`` (not connected yet)."""
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    if max_size > 0:
        pull.setsockopt(zmq.MAXMSGSIZE, max_size)
    if identity:
        pull.setsockopt(zmq.IDENTITY, identity)
    return pull


def connect_pair(
    ctx: zmq.Context[Any],
    send_spec: str,
    recv_spec: str,
    identity: str,
    hwm: int = 0,
    max_size: int = -1,
) -> tuple[Any, Any]:
    """``(pull, pub)`` sockets of ``ctx``, connected to a Mongrel2 handler.

    The PUB connects first: a request we receive must find our reply path.
    ``max_size``: the PULL's MAXMSGSIZE (:func:`pull_limit`; -1: none).
    """
    ident = identity.encode("ascii")
    pull = open_pull(ctx, ident, max_size)
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


class FrontendMonitor:
    """Tells when the Mongrel2 behind a socket went away (it may have restarted).

    Connection ids restart at 1 when Mongrel2 restarts: whatever a process
    holds for a connection of the old incarnation must go, or a reply meant
    for an old client reaches a new one that got the same id. ZeroMQ's
    socket monitor reports the TCP/IPC connection dropping
    (``EVENT_DISCONNECTED``); only that counts (the first connect is not a
    change, and a reconnect always follows a disconnect). It is polled, not
    waited on: :meth:`changed` costs a few microseconds, so callers ask when
    idle or when a message does not match the state they hold, never per
    message.

    With ``endpoint`` it also connects ``sock`` there again after each
    disconnect: ZeroMQ gives up on a peer that broke the protocol (a frame
    over MAXMSGSIZE, say from a stranger bound at the spec while Mongrel2
    was down) and would never reconnect to the real Mongrel2 after it.
    What was still queued from the old peer goes with the old pipe: it
    belongs to the incarnation that just went away.
    """

    __slots__ = ("_endpoint", "_mon", "_sock", "disconnects")

    def __init__(
        self, sock: zmq.Socket[Any], endpoint: str = "", ctx: zmq.Context[Any] | None = None
    ) -> None:
        """Monitor ``sock``; ``ctx``: a blocking context for the monitor's own socket."""
        self._sock = sock
        self._endpoint = endpoint
        addr = "inproc://m2gate-frontend-%d" % next(_MONITORS)
        sock.monitor(addr, zmq.EVENT_DISCONNECTED)
        mon: zmq.Socket[Any] = (ctx or sock.context).socket(zmq.PAIR)
        mon.connect(addr)
        self._mon: zmq.Socket[Any] | None = mon
        self.disconnects = 0

    @property
    def socket(self) -> zmq.Socket[Any] | None:
        """The monitor's own socket (a master registers it in its poller)."""
        return self._mon

    def changed(self) -> bool:
        """True if the peer went away since the last call; never blocks."""
        mon = self._mon
        if mon is None:
            return False
        gone = False
        while True:
            try:
                frames = mon.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return gone
            except zmq.ZMQError:  # closed under us (shutdown)
                return gone
            if len(frames) >= 1 and len(frames[0]) >= 2:
                event = int.from_bytes(frames[0][:2], "little")
                if event == zmq.EVENT_DISCONNECTED:
                    gone = True
                    self.disconnects += 1
                    if self._endpoint:
                        self._reconnect()

    def _reconnect(self) -> None:
        with contextlib.suppress(zmq.ZMQError):  # already given up on: nothing to undo
            self._sock.disconnect(self._endpoint)
        try:
            self._sock.connect(self._endpoint)
        except zmq.ZMQError as exc:
            log.warning("reconnecting to %s failed: %s", self._endpoint, exc)

    def close(self) -> None:
        """Stop monitoring (before the socket is closed)."""
        mon, self._mon = self._mon, None
        if mon is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disable_monitor()
            mon.close(linger=0)


def disconnect_pull(pull: zmq.Socket[Any], send_spec: str) -> None:
    """Stop receiving new work; what is already queued here may still be read."""
    try:
        pull.disconnect(send_spec)
    except zmq.ZMQError as exc:  # already gone: nothing more will come
        log.debug("disconnect %s: %s", send_spec, exc)


class HandlerSockets:
    """What the blocking and the asyncio transports share: their PULL's end of life.

    Subclasses set ``pull``, ``send_spec``, ``_monitor`` (a
    :class:`FrontendMonitor` on the PULL) and ``_receiving``.
    """

    pull: Any
    send_spec: str
    _monitor: FrontendMonitor
    _receiving: bool

    def frontend_changed(self) -> bool:
        """True once each time Mongrel2 went away (see :class:`FrontendMonitor`)."""
        return self._receiving and self._monitor.changed()

    def stop_receiving(self) -> None:
        """Disconnect the PULL so Mongrel2 pushes new requests elsewhere."""
        if self._receiving:
            self._receiving = False
            disconnect_pull(self.pull, self.send_spec)

    def _close_pull(self) -> None:
        self._monitor.close()
        self.pull.close(linger=0)


class FrontendIntake:
    """The receiving side both multi-front-end transports share (threads, event loop).

    Their PULLs are read in turn, so a busy front-end cannot starve another;
    each message comes out with its front-end's tag in front of its sender;
    each PULL has its own :class:`FrontendMonitor`, so a Mongrel2 restart
    voids only its own front-end's connections (:meth:`frontend_changed`).
    ``_intake`` holds the blocking handles of the PULLs.
    """

    frontends: list[tuple[str, str]]
    _intake: list[zmq.Socket[bytes]]
    _monitors: list[FrontendMonitor]

    def _open_intake(self) -> None:
        self._tags = [tag(i) for i in range(len(self.frontends))]
        self._names = [t.decode("ascii") for t in self._tags]
        self._next = 0
        self._receiving = True

    def recv_nowait(self) -> bytes | None:
        """A message already queued on any PULL (in turn), tagged, or ``None``; never waits."""
        count = len(self._intake)
        for step in range(count):
            i = (self._next + step) % count
            try:
                data: bytes = self._intake[i].recv(zmq.NOBLOCK)
            except zmq.Again:
                continue
            self._next = (i + 1) % count
            return tag_message(self._tags[i], data)
        return None

    def frontend_changed(self) -> tuple[str, ...]:
        """The tags of the front-ends that went away since the last call."""
        if not self._receiving:
            return ()
        return tuple(n for n, m in zip(self._names, self._monitors, strict=True) if m.changed())

    def stop_receiving(self) -> None:
        """Disconnect every PULL so each Mongrel2 pushes new requests elsewhere."""
        if self._receiving:
            self._receiving = False
            for pull, (send_spec, _) in zip(self._intake, self.frontends, strict=True):
                disconnect_pull(pull, send_spec)
