"""Which client connections a worker is serving, shared by every runtime.

Mongrel2 facts behind it: a client may pipeline requests on a keep-alive
connection (they must be answered in order, so each waits behind the one in
flight); a disconnect notice can arrive while a request is being served; with
``download.flow_control`` a connection's credits outlive one request.

A client can pipeline without limit, so the waiting requests are bounded by
``max_pipelined``: the first one beyond it is kept as the connection's
``overflow``, answered 503 in its turn (replies stay in order) and the
connection closed after it; anything after that is dropped at once. The
threaded worker calls this under its own lock; the asyncio worker, on its
loop, needs none, so the table has no lock of its own.

Connection ids restart at 1 when Mongrel2 restarts, so an id names a client
only within one Mongrel2 incarnation: :meth:`ConnectionTable.reset` forgets
every connection of the old one and starts a new ``epoch`` (each
:class:`~m2gate.conn.connection.Connection` carries the epoch it was made
in). ``on_held``, if set, is asked before a request joins a connection the
table already holds, the one place where an old incarnation's state would
swallow a new client's request; it may reset the table and return True.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from m2gate.conn.connection import Connection
from m2gate.protocol.messages import Message
from m2gate.protocol.replies import reply_uuid

C = TypeVar("C", bound=Connection)
Key = tuple[str, int]


def tagged_reply_uuid(recv_ident: str | bytes, sender: str) -> bytes:
    """:func:`reply_uuid` for a sender tagged with its front-end (``"1-"`` + sender).

    The tag stays in front, so the sink of several front-ends
    (:class:`~m2gate.transports.frontends.FrontendSinks`) knows where the
    reply goes and strips it.
    """
    cut = sender.index("-") + 1
    return sender[:cut].encode("ascii") + reply_uuid(recv_ident, sender[cut:])


class ConnectionTable(Generic[C]):
    """Connections with a request in flight, or with flow-control credits to keep."""

    __slots__ = (
        "_factory",
        "_reply_ident",
        "_reply_uuid",
        "conns",
        "disconnects",
        "epoch",
        "max_pipelined",
        "on_held",
    )

    def __init__(
        self,
        factory: Callable[[str, int, bytes], C],
        reply_ident: bytes = b"",
        max_pipelined: int = 16,
    ) -> None:
        self._factory = factory
        self._reply_ident = reply_ident
        self._reply_uuid = reply_uuid
        self.max_pipelined = max_pipelined
        self.conns: dict[Key, C] = {}
        self.disconnects = 0  # notices that came while a request was being served
        self.epoch = 0  # Mongrel2 incarnations seen go away (see reset)
        self.on_held: Callable[[], bool] | None = None

    def tag_senders(self) -> None:
        """Several front-ends: senders carry their front-end's tag (:func:`tagged_reply_uuid`)."""
        self._reply_uuid = tagged_reply_uuid

    def admit(self, msg: Message) -> tuple[C, bool | None]:
        """The connection for request ``msg``; True if it may start now.

        False: it was queued behind the request in flight on that connection
        (or kept as its ``overflow``, to be answered 503). None: dropped, as
        the connection closes before its turn (the caller counts it done).
        """
        conn = self.conns.get(msg.key)
        if conn is not None and self.on_held is not None and self.on_held():
            conn = self.conns.get(msg.key)  # reset: None if it was an old incarnation's
        if conn is None or (conn.closed and not conn.busy):
            uuid = self._reply_uuid(self._reply_ident, msg.sender)
            conn = self.conns[msg.key] = self._factory(msg.sender, msg.conn_id, uuid)
            if self.epoch:
                conn.epoch = self.epoch
            credits = msg.header("DOWNLOAD_CREDITS")
            if credits is not None and credits.isascii() and credits.isdigit():
                conn.grant(int(credits))
        if conn.busy:
            if len(conn.pending) < self.max_pipelined:
                conn.pending.append(msg)  # pipelined: answer after the one in flight
                return conn, False
            if conn.overflow is None and not conn.closed:
                conn.overflow = msg  # its turn gets a 503, then the connection closes
                return conn, False
            return conn, None
        conn.busy = True
        return conn, True

    def reset(
        self, epoch: int | None = None, frontends: tuple[str, ...] = ()
    ) -> list[tuple[C, int]]:
        """Mongrel2 went away: forget every connection, start ``epoch`` (default: next).

        Returns ``(conn, pipelined requests dropped)`` for each: the caller
        marks them closed, so nothing more is sent for them (their ids may
        already belong to new clients). A request still being served on one
        ends as usual; :meth:`done` leaves the new table alone. With
        ``frontends`` (sender tags, several front-ends) only the connections
        of those front-ends go; the others' stay.
        """
        if frontends:
            gone = [c for c in self.conns.values() if c.sender.startswith(frontends)]
            for conn in gone:
                del self.conns[conn.key]
        else:
            gone = list(self.conns.values())
            self.conns.clear()
        old = [(conn, len(conn.pending)) for conn in gone]
        for conn, _ in old:
            conn.pending.clear()
        self.epoch = self.epoch + 1 if epoch is None else epoch
        return old

    def disconnected(self, key: Key) -> tuple[C, int] | None:
        """A disconnect notice: ``(conn, pipelined requests dropped)``, None if unknown.

        The caller marks the connection closed (outside any lock it holds).
        """
        conn = self.conns.get(key)
        if conn is None:
            return None  # idle or unknown (e.g. stale from before we started)
        dropped = len(conn.pending) + (conn.overflow is not None)
        conn.pending.clear()
        conn.overflow = None
        if conn.busy:
            self.disconnects += 1
        else:
            del self.conns[key]
        return conn, dropped

    def done(self, conn: C, keep_alive: bool) -> tuple[Message | None, int]:
        """A request on ``conn`` ended: ``(next pipelined request or None, requests dropped)``.

        The next request may be ``conn.overflow``: the caller answers it 503,
        clears ``overflow`` and ends the connection (``done(conn, False)``).
        """
        dropped = 0
        if not keep_alive:
            conn.closed = True
            dropped = len(conn.pending) + (conn.overflow is not None)
            conn.pending.clear()
            conn.overflow = None
        if conn.pending:
            return conn.pending.popleft(), 0
        if conn.overflow is not None:
            return conn.overflow, 0
        conn.busy = False
        # Flow-controlled connections keep their credit count between
        # keep-alive requests; the disconnect notice removes them.
        if self.conns.get(conn.key) is conn and (conn.closed or not conn.flow_control):
            del self.conns[conn.key]
        return None, dropped
