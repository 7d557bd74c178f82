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

from m2gate.transports.base import ReplySink

# The tag is digits then '-': at most this many bytes (index below 1000).
MAX_FRONTENDS = 999
_TAG_SPAN = 4


def tag(index: int) -> bytes:
    """What front-end ``index``'s messages' senders are prefixed with."""
    return b"%d-" % index


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
        first = messages[0]
        dash = first.find(b"-", 0, _TAG_SPAN)
        if dash <= 0 or not first[:dash].isdigit():
            raise ValueError("reply without a front-end tag: %r" % first[:40])
        sink = self.sinks[int(first[:dash])]
        cut = dash + 1
        sink.send([memoryview(m)[cut:] for m in messages])  # type: ignore[misc]
