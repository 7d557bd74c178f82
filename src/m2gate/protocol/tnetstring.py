"""Tnetstring codec (https://tnetstrings.info) for Mongrel2 headers and ctl replies.

Pure Python, so the core needs nothing but the stdlib. Decoding request
headers is the one hot use: there ``messages`` prefers the C package
``tnetstring3`` when installed (``m2gate[speedups]``, ~14x faster on captured
headers, see ``benchmarks/tnetstring_codec.py``). Strings come back as
``bytes``; the caller decides the text encoding.
"""

from __future__ import annotations

from typing import Any

from m2gate.protocol.errors import MalformedMessage

_MAX_LEN_DIGITS = 10
_MAX_DEPTH = 32  # Mongrel2 nests two deep; this stops a RecursionError


def parse(data: bytes, pos: int = 0, _depth: int = 0) -> tuple[Any, int]:
    """Parse one tnetstring starting at ``pos``; return ``(value, end)``."""
    colon = data.find(b":", pos, pos + _MAX_LEN_DIGITS + 1)
    if colon <= pos:
        raise MalformedMessage("tnetstring: missing length prefix")
    digits = data[pos:colon]
    if not digits.isdigit():
        raise MalformedMessage("tnetstring: bad length prefix %r" % digits[:12])
    start = colon + 1
    end = start + int(digits)
    if end >= len(data):
        raise MalformedMessage("tnetstring: truncated payload")
    tag = data[end]
    if tag == 0x2C:  # ','
        return data[start:end], end + 1
    if tag == 0x7D:  # '}'
        return _parse_dict(data, start, end, _depth + 1), end + 1
    if tag == 0x5D:  # ']'
        if _depth >= _MAX_DEPTH:
            raise MalformedMessage("tnetstring: nested too deeply")
        out: list[Any] = []
        while start < end:
            item, start = parse(data, start, _depth + 1)
            out.append(item)
        if start != end:
            raise MalformedMessage("tnetstring: list overruns its length")
        return out, end + 1
    if tag == 0x23:  # '#'
        try:
            return int(data[start:end]), end + 1
        except ValueError:
            raise MalformedMessage("tnetstring: bad integer") from None
    if tag == 0x21:  # '!'
        if data[start:end] == b"true":
            return True, end + 1
        if data[start:end] == b"false":
            return False, end + 1
        raise MalformedMessage("tnetstring: bad boolean")
    if tag == 0x7E and start == end:  # '~'
        return None, end + 1
    if tag == 0x5E:  # '^'
        try:
            return float(data[start:end]), end + 1
        except ValueError:
            raise MalformedMessage("tnetstring: bad float") from None
    raise MalformedMessage("tnetstring: unknown type tag %r" % chr(tag))


def _parse_dict(data: bytes, start: int, end: int, depth: int) -> dict[bytes, Any]:
    if depth > _MAX_DEPTH:
        raise MalformedMessage("tnetstring: nested too deeply")
    out: dict[bytes, Any] = {}
    while start < end:
        key, start = parse(data, start, depth)
        if not isinstance(key, bytes):
            raise MalformedMessage("tnetstring: dict key is not a string")
        if start >= end:
            raise MalformedMessage("tnetstring: dict key without value")
        out[key], start = parse(data, start, depth)
    if start != end:
        raise MalformedMessage("tnetstring: dict overruns its length")
    return out


def loads(data: bytes) -> Any:
    """Parse a whole buffer holding exactly one tnetstring."""
    value, end = parse(data, 0)
    if end != len(data):
        raise MalformedMessage("tnetstring: trailing bytes")
    return value


def dumps(value: Any) -> bytes:
    """Encode ``value``; ``str`` is written as UTF-8."""
    if isinstance(value, bytes):
        return b"%d:%s," % (len(value), value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return b"%d:%s," % (len(raw), raw)
    if value is True:
        return b"4:true!"
    if value is False:
        return b"5:false!"
    if value is None:
        return b"0:~"
    if isinstance(value, int):
        raw = b"%d" % value
        return b"%d:%s#" % (len(raw), raw)
    if isinstance(value, float):
        raw = repr(value).encode("ascii")
        return b"%d:%s^" % (len(raw), raw)
    if isinstance(value, dict):
        raw = b"".join(dumps(k) + dumps(v) for k, v in value.items())
        return b"%d:%s}" % (len(raw), raw)
    if isinstance(value, (list, tuple)):
        raw = b"".join(dumps(v) for v in value)
        return b"%d:%s]" % (len(raw), raw)
    raise TypeError("cannot encode %s as a tnetstring" % type(value).__name__)
