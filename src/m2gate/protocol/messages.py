"""Parse what Mongrel2 PUSHes to a handler into typed message events.

Wire format: ``SENDER SP CONN_ID SP PATH SP <len>:HEADERS,<len>:BODY,`` where
HEADERS is a tnetstring dict (ends with ``}``) or a JSON object (plain
netstring, ends with ``,``), detected per message. Header names and values are
decoded as latin-1 so every byte survives (PEP 3333's "native strings"); this
is also why JSON is read leniently: Mongrel2 only escapes ``"`` and ``\\``.
Anything that does not parse raises :class:`MalformedMessage`.

Validation happens here, where the bytes enter, so that nothing downstream
can trip over a value a client chose: a message Mongrel2 could never have
framed (bad netstrings, headers that are not a dict, a conn id that is not
a bounded decimal) is :class:`MalformedMessage` (log and drop); a well-framed
request whose client-controlled values are unusable (a Content-Length that
is not ASCII digits, repeated upload or Host headers, a method that is not a
token) becomes a :class:`BadRequest` event, which the runtimes answer with
400 like any message kind they cannot serve. Every event returned satisfies
the contract in :func:`_check_request`: ``int()`` works on Content-Length,
DOWNLOAD_CREDITS, UPLOAD_STREAM, and upload paths are single strings.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from m2gate.protocol.errors import MalformedMessage
from m2gate.protocol.tnetstring import parse as _tnet_parse

HeaderValue = str | list[str]
Headers = dict[str, HeaderValue]

UPLOAD_START = "x-mongrel2-upload-start"
UPLOAD_DONE = "x-mongrel2-upload-done"

# Precompiled once: these run for (nearly) every request.
# A decimal that int() accepts and that fits comfortably in 64 bits; ASCII
# only, so '\xb2' (superscript two, which str.isdigit() accepts) is refused.
_DIGITS = re.compile(r"[0-9]{1,18}", re.ASCII).fullmatch
# A flow-control window: a request granted 0 bytes could never be answered.
_WINDOW = re.compile(r"0*[1-9][0-9]{0,17}", re.ASCII).fullmatch
_MAX_ID_DIGITS = 20
# What Mongrel2 accepts as a reply UUID: a sender we could not reply to is not Mongrel2's.
_SENDER = re.compile(rb"[A-Za-z0-9-]{1,128}").fullmatch
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}", re.ASCII).fullmatch
_VERSION = re.compile(r"HTTP/[0-9]\.[0-9]", re.ASCII).fullmatch
# host[:port]; the port must be ASCII digits (adapters int() it).
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[^:\[\]]*)(?::[0-9]{0,5})?").fullmatch
_FLAGS = re.compile(r"(?:0[xX])?[0-9A-Fa-f]{1,2}", re.ASCII).fullmatch
_MAX_UPLOAD_PATH = 4096


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


@dataclass(slots=True)
class BadRequest(Message):
    """A request from a known connection that cannot be served: answer 400, go on.

    Mongrel2 framed it correctly but a client-controlled value is unusable
    (``reason`` says which, for the log). ``headers`` keeps only values that
    passed validation (method, version, path keys, credits) and ``body`` is
    empty, so code that answers it cannot trip over what made it bad. The
    runtimes answer every message kind they do not serve with 400 and close.
    """

    reason: str = ""
    status: int = 400


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
        except _C_ERRORS as exc:
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
# Everything the C decoder was seen to raise on bad input, and more: it is
# third-party C, and one exception it raises that we do not catch stops the
# receiving loop (found by tests/integration/test_message_fuzz.py:
# ``3:\xfdbc#`` raises OverflowError). Whatever it raises, the message is bad.
_C_ERRORS = Exception


def _headers_json(raw: bytes) -> Headers:
    try:
        obj = json.loads(raw.decode("latin-1"), strict=False)
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage("bad JSON headers: %s" % exc) from None
    if not isinstance(obj, dict):
        raise MalformedMessage("JSON headers are not an object")
    return {str(k): _text(v) for k, v in obj.items()}


def _sender(raw: bytes) -> str:
    """The decoded sender, checked once per distinct value (it is nearly always the same)."""
    global _last_sender
    if raw == _last_sender[0]:
        return _last_sender[1]
    if not _SENDER(raw):
        raise MalformedMessage("sender %r is not a Mongrel2 UUID" % raw[:40])
    text = raw.decode("ascii")
    _last_sender = (raw, text)
    return text


_last_sender: tuple[bytes, str] = (b"", "")


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
    if not id_raw.isdigit() or len(id_raw) > _MAX_ID_DIGITS:  # bytes: ASCII digits only
        raise MalformedMessage("connection id %r is not a number" % id_raw[:20])
    sender = _sender(data[:sp1])
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
    if not (sender and path and id_raw.isdigit()) or len(id_raw) > _MAX_ID_DIGITS:
        return None
    try:
        raw, remainder = _c_pop(rest)
    except _C_ERRORS:
        return None
    if type(raw) is not dict or remainder != b"0:,":
        return None
    return _classify(
        _sender(sender),
        int(id_raw),
        path.decode("latin-1"),
        _decode_headers(raw),
        b"",
    )


def _classify(sender: str, conn_id: int, path: str, headers: Headers, body: bytes) -> Message:
    method = headers.get("METHOD")
    if path == "@*" and method == "JSON":
        return _control(sender, conn_id, path, headers, body)
    if method is None:
        # Only an upload.stream chunk carries no METHOD (its headers are reduced).
        stream = headers.get("UPLOAD_STREAM")
        if isinstance(stream, str) and _DIGITS(stream):
            # Admitted like a request (its DOWNLOAD_CREDITS read): the same contract.
            reason = _check_values(headers)
            if reason is not None:
                return _bad_request(sender, conn_id, path, headers, reason)
            done_flag = "UPLOAD_STREAM_DONE" in headers
            return UploadStream(sender, conn_id, path, headers, body, int(stream), done_flag)
        raise MalformedMessage("request without METHOD")
    # The everyday request, whose values were all seen valid before, costs a
    # few set lookups (inlined: this runs for every request); anything else
    # gets the full check.
    get = headers.get
    try:
        usual = (
            method in _GOOD_METHODS
            and get("VERSION", "HTTP/1.1") in _GOOD_VERSIONS
            and ((host := get("host")) is None or host in _GOOD_HOSTS)
            and "content-length" not in headers
            and "DOWNLOAD_CREDITS" not in headers
            and UPLOAD_START not in headers
        )
    except TypeError:  # a repeated METHOD, VERSION or Host: a list is not hashable
        usual = False
    if not usual:
        if not isinstance(method, str) or not method:
            # Mongrel2 always sends one non-empty METHOD (client names are lowercase).
            raise MalformedMessage("request with an empty or repeated METHOD")
        reason = _check_request(headers, method)
        if reason is not None:
            return _bad_request(sender, conn_id, path, headers, reason)
    if method == "WEBSOCKET_HANDSHAKE":
        return WebSocketHandshake(sender, conn_id, path, headers, body)
    if method == "WEBSOCKET":
        flags = headers.get("FLAGS")
        if isinstance(flags, str):
            if not _FLAGS(flags):
                raise MalformedMessage("websocket FLAGS %r is not a hex byte" % flags[:20])
            return WebSocketFrame(sender, conn_id, path, headers, body, int(flags, 16))
    start = headers.get(UPLOAD_START)
    if isinstance(start, str):  # _check_request refused repeated upload headers
        done = headers.get(UPLOAD_DONE)
        if not isinstance(done, str):
            return UploadStart(sender, conn_id, path, headers, body, start)
        return UploadDone(sender, conn_id, path, headers, body, start, done)
    stream = headers.get("UPLOAD_STREAM")
    if isinstance(stream, str) and _DIGITS(stream):
        done_flag = "UPLOAD_STREAM_DONE" in headers
        return UploadStream(sender, conn_id, path, headers, body, int(stream), done_flag)
    return HTTPRequest(sender, conn_id, path, headers, body)


def _control(sender: str, conn_id: int, path: str, headers: Headers, body: bytes) -> Message:
    """A ``@*`` message: Mongrel2's own, so anything odd in it is malformed, not a 400."""
    try:
        obj = json.loads(body.decode("latin-1"), strict=False)
    except (ValueError, RecursionError):
        raise MalformedMessage("control message body is not JSON") from None
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind == "disconnect":
        return Disconnect(sender, conn_id, path, headers, body)
    if kind == "credits":
        raw = headers.get("DOWNLOAD_CREDITS")
        if not isinstance(raw, str) or not _DIGITS(raw):
            raise MalformedMessage("credits message without numeric DOWNLOAD_CREDITS")
        return Credits(sender, conn_id, path, headers, body, int(raw))
    if not isinstance(kind, str):
        kind = type(kind).__name__
    return UnknownControl(sender, conn_id, path, headers, body, kind[:64])


# Values seen valid before skip their regex (bounded: clients choose them).
_GOOD_METHODS: set[str] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"}
_GOOD_HOSTS: set[str] = set()
_GOOD_VERSIONS = frozenset({"HTTP/1.1", "HTTP/1.0"})


def _check_request(headers: Headers, method: str) -> str | None:
    """Why a request's client-controlled values are unusable, or None if they are fine.

    The contract every returned request satisfies: METHOD is a token,
    VERSION (if any) ``HTTP/d.d``, Content-Length (if any) a single run of
    at most 18 ASCII digits, DOWNLOAD_CREDITS (if any) such a run above 0, Host (if any) a single
    ``host[:port]`` with an ASCII port, and the upload headers single paths
    without NUL. A handful of dict lookups on the usual request.
    """
    if method not in _GOOD_METHODS:
        if not _TOKEN(method):
            return "method %r is not a token" % method[:40]
        if len(_GOOD_METHODS) < 64:
            _GOOD_METHODS.add(method)
    return _check_values(headers)


def _check_values(headers: Headers) -> str | None:
    """:func:`_check_request` but for METHOD, which an upload.stream chunk lacks."""
    get = headers.get
    version = get("VERSION")
    if version is not None and (version.__class__ is not str or version not in _GOOD_VERSIONS):
        if not isinstance(version, str) or not _VERSION(version):
            return "bad HTTP version"
    length = get("content-length")
    if length is not None and not (isinstance(length, str) and _DIGITS(length)):
        return "Content-Length %r is not a decimal number" % (length,)
    host = get("host")
    if host is not None and (host.__class__ is not str or host not in _GOOD_HOSTS):
        if not isinstance(host, str):
            return "repeated Host header"
        if not _HOST(host.strip()):
            return "Host %r is not host[:port]" % host[:80]
        if len(_GOOD_HOSTS) >= 256:
            _GOOD_HOSTS.clear()
        _GOOD_HOSTS.add(host)
    credits = get("DOWNLOAD_CREDITS")
    if credits is not None and not (isinstance(credits, str) and _WINDOW(credits)):
        return "DOWNLOAD_CREDITS is not a positive number"
    start = get(UPLOAD_START)
    if start is not None:
        if not isinstance(start, str):
            return "repeated %s headers" % UPLOAD_START
        done = get(UPLOAD_DONE)
        if isinstance(done, list):
            return "repeated %s headers" % UPLOAD_DONE
        for value in (start, done):
            if value is not None and (
                not value or len(value) > _MAX_UPLOAD_PATH or "\x00" in value
            ):
                return "unusable upload path %r" % value[:80]
    return None


_KEPT_ON_BAD_REQUEST = ("METHOD", "PATH", "URI", "QUERY", "PATTERN", "URL_SCHEME", "REMOTE_ADDR")


def _bad_request(sender: str, conn_id: int, path: str, headers: Headers, reason: str) -> BadRequest:
    """A :class:`BadRequest` whose headers hold only values that are safe to use."""
    safe: Headers = {}
    for name in _KEPT_ON_BAD_REQUEST:
        value = headers.get(name)
        if isinstance(value, str):
            safe[name] = value
    version = headers.get("VERSION")
    if isinstance(version, str) and _VERSION(version):
        safe["VERSION"] = version
    credits = headers.get("DOWNLOAD_CREDITS")
    if isinstance(credits, str) and _WINDOW(credits):
        safe["DOWNLOAD_CREDITS"] = credits  # a flow-controlled connection may answer
    return BadRequest(sender, conn_id, path, safe, b"", reason)
