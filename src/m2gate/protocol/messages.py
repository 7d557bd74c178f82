"""Parse what Mongrel2 PUSHes to a handler into typed message events.

Wire format: ``SENDER SP CONN_ID SP PATH SP <len>:HEADERS,<len>:BODY,`` where
HEADERS is a tnetstring dict (ends with ``}``) or a JSON object (plain
netstring, ends with ``,``), detected per message. Header names and values are
decoded as latin-1 so every byte survives (PEP 3333's "native strings"); this
is also why JSON is read leniently: Mongrel2 only escapes ``"`` and ``\\``.
Anything that does not parse raises :class:`MalformedMessage`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from m2gate.protocol.errors import MalformedMessage
from m2gate.protocol.tnetstring import parse as _tnet_parse

HeaderValue = str | list[str]
Headers = dict[str, HeaderValue]

UPLOAD_START = "x-mongrel2-upload-start"
UPLOAD_DONE = "x-mongrel2-upload-done"


# Messages are read-only by convention, not ``frozen``: a frozen dataclass
# builds 4x slower (0.45 vs 0.11 us, once per request; benchmarks/hotpath.py).
@dataclass(slots=True)
class Message:
    """Fields every Mongrel2 message has; subclasses say what it means."""

    sender: str
    conn_id: int
    path: str
    headers: Headers
    body: bytes = field(repr=False)

    @property
    def key(self) -> tuple[str, int]:
        """Identifies the client connection across messages."""
        return (self.sender, self.conn_id)

    def header(self, name: str, default: str | None = None) -> str | None:
        """First value of header ``name`` (client names are lowercase)."""
        value = self.headers.get(name, default)
        if value is None or isinstance(value, str):
            return value
        return value[0] if value else default  # a repeated header

    @property
    def method(self) -> str:
        return self.header("METHOD") or ""


@dataclass(slots=True)
class HTTPRequest(Message):
    """An ordinary HTTP request with its (small) body inline."""


@dataclass(slots=True)
class UploadStart(Message):
    """Mongrel2 began writing a large body to ``upload_path`` (body is empty)."""

    upload_path: str = ""


@dataclass(slots=True)
class UploadDone(Message):
    """Mongrel2 finished the upload; ``start_path`` must equal ``upload_path``."""

    start_path: str = ""
    upload_path: str = ""


@dataclass(slots=True)
class UploadStream(Message):
    """A chunk of an ``upload.stream=1`` body at ``offset``."""

    offset: int = 0
    done: bool = False


@dataclass(slots=True)
class Disconnect(Message):
    """The client went away (or we addressed an unknown connection)."""


@dataclass(slots=True)
class Credits(Message):
    """Flow control: Mongrel2 wrote ``amount`` bytes, which we may send again."""

    amount: int = 0


@dataclass(slots=True)
class UnknownControl(Message):
    """A ``@*`` control message of a type this version does not know."""

    type: str = ""


@dataclass(slots=True)
class WebSocketHandshake(Message):
    """A websocket upgrade; ``body`` is the computed Sec-WebSocket-Accept."""

    @property
    def accept(self) -> str:
        return self.body.decode("latin-1")


@dataclass(slots=True)
class WebSocketFrame(Message):
    """One (reassembled, unmasked) websocket frame; ``flags`` is its first byte."""

    flags: int = 0

    @property
    def opcode(self) -> int:
        return self.flags & 0x0F

    @property
    def fin(self) -> bool:
        return bool(self.flags & 0x80)


def _netstring(data: bytes, pos: int) -> tuple[int, int, int]:
    """Return ``(start, end, terminator)`` of the netstring at ``pos``."""
    colon = data.find(b":", pos, pos + 11)
    if colon <= pos:
        raise MalformedMessage("missing netstring length")
    digits = data[pos:colon]
    if not digits.isdigit():
        raise MalformedMessage("bad netstring length %r" % digits[:12])
    start = colon + 1
    end = start + int(digits)
    if end >= len(data):
        raise MalformedMessage("truncated netstring")
    return start, end, data[end]


def _text(value: Any) -> HeaderValue:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return [v if isinstance(v, str) else _scalar(v) for v in value]
    return _scalar(value)


def _scalar(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (bool, dict, list)) or value is None:
        raise MalformedMessage("header value of unexpected type %s" % type(value).__name__)
    return str(value)


def _headers_tnet(data: bytes, pos: int, end: int) -> Headers:
    if _c_pop is not None:
        try:
            raw, rest = _c_pop(data[pos : end + 1])
        except (ValueError, TypeError, RecursionError) as exc:
            raise MalformedMessage("tnetstring headers: %s" % exc) from None
        ok = not rest
    else:
        raw, stop = _tnet_parse(data, pos)
        ok = stop == end + 1
    if not ok or not isinstance(raw, dict):
        raise MalformedMessage("tnetstring headers are not a dict")
    return _decode_headers(raw)


def _decode_headers(raw: dict[Any, Any]) -> Headers:
    # One pass that checks and decodes: this runs for every header of every
    # request, so names seen before skip their decode.
    names = _NAMES
    headers: Headers = {}
    for key, value in raw.items():
        name = names.get(key)
        if name is None:
            if type(key) is not bytes:
                raise MalformedMessage("tnetstring: dict key is not a string")
            name = key.decode("latin-1")
            if len(names) >= 1024:
                names.clear()  # bounded: clients pick names; the common ones come back
            names[key] = name
        headers[name] = value.decode("latin-1") if type(value) is bytes else _text(value)
    return headers


_NAMES: dict[bytes, str] = {}


def use_accelerator(enabled: bool) -> bool:
    """Switch the optional C header decoder on or off; returns whether it is on."""
    global _c_pop
    _c_pop = _load_c_pop() if enabled else None
    return _c_pop is not None


def _load_c_pop() -> Any:
    # tnetstring3 (extra ``m2gate[speedups]``) decodes headers ~14x faster than
    # the pure-Python codec (benchmarks/tnetstring_codec.py): ~8-14 us of a
    # request. Without it the stdlib-only path is used; both are fuzzed.
    try:
        from tnetstring import pop
    except ImportError:
        return None
    return pop


_c_pop: Any = _load_c_pop()


def _headers_json(raw: bytes) -> Headers:
    try:
        obj = json.loads(raw.decode("latin-1"), strict=False)
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage("bad JSON headers: %s" % exc) from None
    if not isinstance(obj, dict):
        raise MalformedMessage("JSON headers are not an object")
    return {str(k): _text(v) for k, v in obj.items()}


def parse_message(data: bytes) -> Message:
    """Parse one raw message from Mongrel2 into the most specific event."""
    if _c_pop is not None:
        msg = _parse_common(data)
        if msg is not None:
            return msg
    sp1 = data.find(b" ")
    sp2 = data.find(b" ", sp1 + 1)
    sp3 = data.find(b" ", sp2 + 1)
    if sp1 <= 0 or sp2 <= sp1 + 1 or sp3 <= sp2 + 1:
        raise MalformedMessage("message does not start with SENDER ID PATH")
    id_raw = data[sp1 + 1 : sp2]
    if not id_raw.isdigit():
        raise MalformedMessage("connection id %r is not a number" % id_raw[:20])
    sender = data[:sp1].decode("latin-1")
    conn_id = int(id_raw)
    path = data[sp2 + 1 : sp3].decode("latin-1")

    hstart, hend, hterm = _netstring(data, sp3 + 1)
    if hterm == 0x7D:  # '}': the headers netstring is itself a tnetstring dict
        headers = _headers_tnet(data, sp3 + 1, hend)
    elif hterm == 0x2C:
        headers = _headers_json(data[hstart:hend])
    else:
        raise MalformedMessage("headers end with %r, not '}' or ','" % chr(hterm))
    if hend + 4 == len(data) and data.endswith(b"0:,"):
        body = b""  # most requests: no body, no need to parse its netstring
    else:
        bstart, bend, bterm = _netstring(data, hend + 1)
        if bterm != 0x2C or bend + 1 != len(data):
            raise MalformedMessage("body netstring is malformed or has trailing bytes")
        body = data[bstart:bend]
    return _classify(sender, conn_id, path, headers, body)


def _parse_common(data: bytes) -> Message | None:
    """The usual message (tnetstring headers, no body) with two C calls, or None.

    None means "not that shape": the full parser below then decides, and
    raises its precise error if the message is malformed.
    """
    parts = data.split(b" ", 3)
    if len(parts) != 4:
        return None
    sender, id_raw, path, rest = parts
    if not (sender and path and id_raw.isdigit()):
        return None
    try:
        raw, remainder = _c_pop(rest)
    except (ValueError, TypeError, RecursionError):
        return None
    if type(raw) is not dict or remainder != b"0:,":
        return None
    return _classify(
        sender.decode("latin-1"),
        int(id_raw),
        path.decode("latin-1"),
        _decode_headers(raw),
        b"",
    )


def _classify(sender: str, conn_id: int, path: str, headers: Headers, body: bytes) -> Message:
    method = headers.get("METHOD")
    if path == "@*" and method == "JSON":
        try:
            obj = json.loads(body.decode("latin-1"), strict=False)
        except (ValueError, RecursionError):
            raise MalformedMessage("control message body is not JSON") from None
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind == "disconnect":
            return Disconnect(sender, conn_id, path, headers, body)
        if kind == "credits":
            raw = headers.get("DOWNLOAD_CREDITS")
            if not isinstance(raw, str) or not (raw.isascii() and raw.isdigit()):
                raise MalformedMessage("credits message without numeric DOWNLOAD_CREDITS")
            return Credits(sender, conn_id, path, headers, body, int(raw))
        return UnknownControl(sender, conn_id, path, headers, body, str(kind))
    if method == "WEBSOCKET_HANDSHAKE":
        return WebSocketHandshake(sender, conn_id, path, headers, body)
    if method == "WEBSOCKET":
        flags = headers.get("FLAGS")
        if isinstance(flags, str):
            try:
                value = int(flags, 16)
            except ValueError:
                raise MalformedMessage("websocket FLAGS %r is not hex" % flags) from None
            return WebSocketFrame(sender, conn_id, path, headers, body, value)
    start = headers.get(UPLOAD_START)
    if start is not None:
        done = headers.get(UPLOAD_DONE)
        if not isinstance(start, str) or isinstance(done, list):
            raise MalformedMessage("repeated upload headers")
        if done is None:
            return UploadStart(sender, conn_id, path, headers, body, start)
        return UploadDone(sender, conn_id, path, headers, body, start, done)
    stream = headers.get("UPLOAD_STREAM")
    if isinstance(stream, str) and stream.isascii() and stream.isdigit():
        done_flag = "UPLOAD_STREAM_DONE" in headers
        return UploadStream(sender, conn_id, path, headers, body, int(stream), done_flag)
    if not isinstance(method, str) or not method:
        raise MalformedMessage("request without METHOD")
    return HTTPRequest(sender, conn_id, path, headers, body)
