"""Several Mongrel2 front-ends behind one m2gate: tagging senders, routing replies.

Two front-ends may use the same ``send_ident`` and hand out the same
connection ids, and everything above the transport keys a connection by
``(sender, conn_id)``. So with several front-ends the receiving side puts
the front-end's index in front of each message's sender (``"1-"`` +
``SENDER``; Mongrel2 senders are ``[A-Za-z0-9-]``, so the tag survives the
parser's check), and the connection's reply uuid carries the same tag
(:func:`m2gate.conn.table.tagged_reply_uuid`). :class:`FrontendSinks` reads the tag of a
reply, strips it and sends the reply on that front-end's PUB: a reply can
only reach the Mongrel2 its request came from.

With one front-end nothing here is used: no tag, no extra copy, the
runtime's sink is the :class:`~m2gate.transports.zmq_common.PubSink`
itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from m2gate.transports.base import ReplySink

# The tag is digits (and, under a master, 'g' and the incarnation) then '-'.
MAX_FRONTENDS = 999
_TAG_SPAN = 24


def tag(index: int) -> bytes:
    """What front-end ``index``'s messages' senders are prefixed with."""
    return b"%d-" % index


def gen_tag(index: int, gen: int) -> bytes:
    """The tag under a master: front-end ``index`` in its ``gen``-th incarnation.

    A restarted Mongrel2 reuses connection ids; its senders get a new tag,
    so no key of the old incarnation names a new client, and replies with
    an old tag are refused (:class:`FrontendPubs`).
    """
    return b"%dg%d-" % (index, gen)


def _index_of(msg: bytes | memoryview) -> tuple[int, int]:
    """``(front-end index, bytes of tag)`` of a tagged reply; ValueError if untagged."""
    head = bytes(msg[:_TAG_SPAN])
    dash = head.find(b"-")
    number = head[:dash].split(b"g", 1)[0]
    if dash <= 0 or not number.isdigit():
        raise ValueError("reply without a front-end tag: %r" % head)
    return int(number), dash + 1


def tag_message(prefix: bytes, data: bytes) -> bytes:
    """A raw Mongrel2 message with its sender tagged (one copy of the message)."""
    return prefix + data


def frontend_of(sender: str) -> str:
    """The tag (``"1-"``) of a tagged sender."""
    return sender[: sender.index("-") + 1]


class FrontendSinks:
    """A :class:`~m2gate.transports.base.ReplySink` over one sink per front-end.

    Each ``send`` holds the replies of one connection (one uuid), so the
    first message's tag routes all of them; each leaves without its tag.
    An untagged reply is a bug of ours and raises ``ValueError``.
    """

    __slots__ = ("sinks",)

    def __init__(self, sinks: Sequence[ReplySink]) -> None:
        self.sinks = list(sinks)

    def send(self, messages: Sequence[bytes]) -> None:
        if not messages:
            return
        index, cut = _index_of(messages[0])
        self.sinks[index].send([memoryview(m)[cut:] for m in messages])  # type: ignore[misc]


class FrontendPubs:
    """The master's own PUBs, one per front-end: ``send`` one tagged reply.

    ``tags`` holds each front-end's current tag (:func:`gen_tag`); a reply
    whose tag is an old incarnation's raises ``ValueError`` instead of
    reaching a new client that got the same connection id.
    """

    __slots__ = ("pubs", "tags")

    def __init__(self, pubs: Sequence[Any], tags: list[bytes]) -> None:
        self.pubs = list(pubs)
        self.tags = tags

    def send(self, msg: bytes) -> None:
        index, cut = _index_of(msg)
        if msg[:cut] != self.tags[index]:
            raise ValueError("reply for an old incarnation of front-end %d dropped" % index)
        self.pubs[index].send(memoryview(msg)[cut:])

    def close(self, linger: int) -> None:
        for pub in self.pubs:
            pub.close(linger=linger)
