"""One cookie's value from a raw Mongrel2 request, for routing by cookie.

The master forwards raw bytes and never parses a request in full
(:mod:`m2gate.protocol.peek`); sticky routing by cookie needs one more fact,
the value of one cookie, so only that mode calls :func:`cookie_value`. It
reads the headers netstring of either handler protocol (tnetstring or JSON),
takes the ``cookie`` header (Mongrel2 lowercases client header names; a
repeated header arrives as a list) and looks for the name in it.

Hostile input is the normal case here: whatever is malformed (the message,
the headers, the cookie string) gives None, meaning "no stickiness", and
never an exception: the request is still routed, and the worker's full
parse decides what it is. Work is bounded: only the first few ``cookie``
headers and their first :data:`MAX_COOKIE_HEADER` bytes are looked at.
"""

from __future__ import annotations

import json
from typing import Any

from m2gate.protocol import messages as _messages
from m2gate.protocol import tnetstring
from m2gate.protocol.messages import Message

MAX_COOKIE_HEADER = 8192  # bytes of one Cookie header searched (Mongrel2's head limit is 4096)
MAX_COOKIE_HEADERS = 5  # Mongrel2 passes at most 5 repeats of a header
MAX_VALUE = 1024  # a longer value is no session id: not sticky


def cookie_value(raw: bytes, name: bytes, msg: Message | None = None) -> bytes | None:
    """The value of cookie ``name`` in the request ``raw``, or None (absent or malformed).

    ``msg``: the request already parsed, if it was (``peek`` parses what is
    not a plain tnetstring request): its headers are used instead of ``raw``.
    """
    try:
        if msg is not None:
            found: Any = msg.headers.get("cookie")
        else:
            found = _raw_cookie_header(raw)
        if found is None:
            return None
        values = found if isinstance(found, list) else [found]
        for value in values[:MAX_COOKIE_HEADERS]:
            if isinstance(value, str):
                value = value.encode("latin-1", "replace")
            if not isinstance(value, bytes):
                continue
            hit = find_cookie(value, name)
            if hit is not None:
                return hit
    except Exception:  # hostile input must never cost the request its routing
        return None
    return None


def find_cookie(header: bytes, name: bytes) -> bytes | None:
    """``name``'s value in one ``Cookie:`` header value (RFC 6265 ``a=1; b=2``), or None.

    The first occurrence wins (browsers send the most specific path first).
    A double-quoted value is unquoted; an empty or overlong value is None.
    """
    header = header[:MAX_COOKIE_HEADER]
    for pair in header.split(b";"):
        key, eq, value = pair.partition(b"=")
        if not eq or key.strip() != name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == 0x22 and value[-1] == 0x22:
            value = value[1:-1]
        if not value or len(value) > MAX_VALUE:
            return None
        return value
    return None


def _raw_cookie_header(raw: bytes) -> Any:
    """The ``cookie`` header of ``raw`` (bytes, str or a list), None if absent or malformed."""
    sp1 = raw.find(b" ")
    sp2 = raw.find(b" ", sp1 + 1)
    sp3 = raw.find(b" ", sp2 + 1)
    if sp1 <= 0 or sp2 <= sp1 + 1 or sp3 <= sp2 + 1:
        return None
    pos = sp3 + 1
    colon = raw.find(b":", pos, pos + 11)
    digits = raw[pos:colon]
    if colon <= pos or not digits.isdigit():
        return None
    end = colon + 1 + int(digits)
    if end >= len(raw):
        return None
    term = raw[end]
    if term == 0x7D:  # "}": a tnetstring dict
        headers = _tnet_dict(raw[pos : end + 1])
        if headers is None:
            return None
        return headers.get(b"cookie")
    if term == 0x2C:  # ",": a JSON object in a netstring
        obj = json.loads(raw[colon + 1 : end].decode("latin-1"), strict=False)
        return obj.get("cookie") if isinstance(obj, dict) else None
    return None


def _tnet_dict(data: bytes) -> dict[Any, Any] | None:
    """``data`` decoded as one tnetstring dict (the C decoder if present), else None."""
    pop = _messages._c_pop
    if pop is not None:
        value, rest = pop(data)
    else:
        value, stop = tnetstring.parse(data)
        rest = data[stop:]
    return value if isinstance(value, dict) and not rest else None
