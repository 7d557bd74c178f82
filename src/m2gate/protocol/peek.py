"""What the master needs of a Mongrel2 message to route it, without parsing it all.

The master hands each message's raw bytes to a worker, which parses it (once,
:func:`~m2gate.protocol.messages.parse_message`). To route it, the master only
needs its connection (sender, connection id), its kind, and METHOD and PATH
for ``m2gate status``. :func:`peek` gets those for the usual request (tnetstring
headers whose keys and values are all strings) with one C call and a few byte
checks; every other shape falls back to ``parse_message``, so a control
message, an upload, a websocket message, JSON headers or anything odd is
classified exactly as the parser classifies it, and a malformed message
raises :class:`~m2gate.protocol.errors.MalformedMessage` as it does there.

Exact, not merely likely: the master counts a request in flight until its
worker reports it done, and a worker reports only what its parser accepted
as a request. So whatever :func:`peek` calls a plain :data:`REQUEST`, the
parser makes an ``HTTPRequest`` (or a ``BadRequest``, answered 400 and
reported done alike) of it: tests/unit/test_peek.py checks that against the
captured corpus and generated messages. Without the C tnetstring decoder
every message takes the fallback (the pure-Python codec costs what parsing
costs).
"""

from __future__ import annotations

from m2gate.protocol import messages as _messages
from m2gate.protocol.messages import (
    Credits,
    Disconnect,
    Message,
    UnknownControl,
    UploadDone,
    UploadStart,
    parse_message,
)

# Kinds, in the order the dispatcher cares about them: below DISCONNECT a
# worker serves it and reports it done (UPLOAD_DONE only when it completes
# no upload in flight); from DISCONNECT on it is a notice.
REQUEST = 0  # anything a worker answers: HTTP, websocket, upload.stream, a bad request
UPLOAD_START = 1  # a request whose body Mongrel2 writes to a temp file
UPLOAD_DONE = 2  # Mongrel2 finished that file (or a forged header: then a request)
DISCONNECT = 3
CREDITS = 4
CONTROL = 5  # a control message of a type this version does not know: ignored

# (sender, conn_id, kind, METHOD, PATH, the parsed message or None): None for
# the plain request, whose worker parses it; METHOD and PATH as raw bytes
# (latin-1), decoded only when ``m2gate status`` shows them.
Peeked = tuple[str, int, int, bytes, bytes, Message | None]

_MAX_ID_DIGITS = 20  # as the parser: a bounded decimal
# tnetstring type tags other than "," (string): headers in which the only one
# of them is the dict's own closing "}" hold only strings.
_TAGS = b"#^!~]}"
_UPLOAD_START = _messages.UPLOAD_START.encode("latin-1")
# Their classification needs more than a glance (FLAGS, the handshake).
_FALLBACK_METHODS = frozenset({b"WEBSOCKET", b"WEBSOCKET_HANDSHAKE"})


def peek(data: bytes) -> Peeked:
    """Sender, connection id, kind, METHOD and PATH of one raw Mongrel2 message.

    Raises :class:`~m2gate.protocol.errors.MalformedMessage` where
    ``parse_message`` would.
    """
    pop = _messages._c_pop
    if pop is not None:
        parts = data.split(b" ", 3)
        if len(parts) == 4:
            sender, id_raw, path, rest = parts
            if (
                sender
                and path
                and path != b"@*"
                and id_raw.isdigit()
                and len(id_raw) <= _MAX_ID_DIGITS
            ):
                try:
                    headers, body = pop(rest)
                except Exception:  # third-party C: whatever it raises, the parser decides
                    headers = None
                # The usual request has no body and no type tag but the dict's own
                # closing "}": every key and value is a string.
                if type(headers) is dict and (
                    (body == b"0:," and len(rest) - len(rest.translate(None, _TAGS)) == 1)
                    or _strings_only(rest, body, headers)
                ):
                    method = headers.get(b"METHOD")
                    if (
                        method
                        and method not in _FALLBACK_METHODS
                        and _UPLOAD_START not in headers
                        and b"UPLOAD_STREAM" not in headers
                    ):
                        text = _senders.get(sender)
                        if text is None:
                            text = _sender(sender)
                        return (text, int(id_raw), REQUEST, method, path, None)
    return _classified(data)


_senders: dict[bytes, str] = {}  # checked as the parser checks them


def _sender(raw: bytes) -> str:
    """The parser's check of a sender, remembered (bounded: nearly always one value)."""
    text = _messages._sender(raw)  # raises MalformedMessage as the parser does
    if len(_senders) >= 64:
        _senders.clear()
    _senders[raw] = text
    return text


def _strings_only(rest: bytes, body: bytes, headers: dict[object, object]) -> bool:
    """True if ``rest`` is tnetstring headers of strings only, then a body netstring.

    ``body`` is what the decoder left after the headers; it must be one
    netstring that ends the message, as the parser requires. (The usual
    case, no body and no tag byte in any value, is checked inline.)
    """
    region = rest
    if body != b"0:,":
        colon = body.find(b":", 0, 11)
        if colon <= 0:
            return False
        digits = body[:colon]
        if not (digits.isdigit() and colon + 2 + int(digits) == len(body) and body[-1] == 0x2C):
            return False
        region = rest[: len(rest) - len(body)]
    # No type tag but the dict's own closing "}": every key and value is a string.
    if len(region) - len(region.translate(None, _TAGS)) == 1:
        return True
    # A value holds one of those bytes: look at the types themselves.
    return all(type(k) is bytes and type(v) is bytes for k, v in headers.items())


_KINDS: dict[type[Message], int] = {
    Disconnect: DISCONNECT,
    Credits: CREDITS,
    UnknownControl: CONTROL,
    UploadDone: UPLOAD_DONE,
    UploadStart: UPLOAD_START,
}


def _classified(data: bytes) -> Peeked:
    """The full parser's answer, as a :data:`Peeked`."""
    msg = parse_message(data)
    return (
        msg.sender,
        msg.conn_id,
        _KINDS.get(type(msg), REQUEST),
        msg.method.encode("latin-1", "replace"),  # JSON headers may escape any character
        msg.path.encode("latin-1", "replace"),
        msg,
    )


def describe(method: bytes, path: bytes) -> str:
    """``"METHOD PATH"`` as ``m2gate status`` shows a request."""
    return "%s %s" % (method.decode("latin-1"), path.decode("latin-1"))
