"""HTTP/1.x response framing and keep-alive decisions, with no I/O.

Mongrel2 writes our bytes to the client verbatim and leaves closing to us, so
this module decides, per response: Content-Length or chunked or
close-delimited, whether a body may be sent at all (HEAD, 1xx/204/304), and
whether the connection must end afterwards. It also refuses header injection.
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate

from m2gate import __version__
from m2gate.protocol.errors import LocalProtocolError
from m2gate.protocol.messages import Message

# The one Server header value every response carries unless the app sets one.
SERVER_HEADER = b"m2gate/" + __version__.encode("ascii")

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE_RE = re.compile(r"[\r\n\x00]")
_STATUS_RE = re.compile(r"[1-9][0-9][0-9] [^\r\n\x00]*\Z")
HOP_BY_HOP = frozenset(
    {
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)

_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """RFC 7231 date, formatted once per second (it is in every response)."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


def _tokens(value: str | None) -> set[str]:
    if not value:
        return set()
    return {t.strip().lower() for t in value.split(",")}


def request_keep_alive(version: str, connection: str | None) -> bool:
    """HTTP/1.1 keeps the connection unless told ``close``; 1.0 only if asked."""
    if not connection:
        return version == "HTTP/1.1"
    tokens = _tokens(connection)
    if version == "HTTP/1.1":
        return "close" not in tokens
    return "keep-alive" in tokens


def request_framing(msg: Message) -> tuple[str, bool]:
    """``(version, keep_alive)`` a response to ``msg`` starts from."""
    version = msg.header("VERSION") or "HTTP/1.0"
    return version, request_keep_alive(version, msg.header("connection"))


class Response:
    """Frames one HTTP response; call :meth:`head`, :meth:`body`*, :meth:`end`.

    After :meth:`head`, :attr:`keep_alive` tells whether the connection may
    carry another request once :meth:`end` is sent.
    """

    __slots__ = (
        "_bodyless",
        "_chunked",
        "_remaining",
        "head_sent",
        "keep_alive",
        "method",
        "server",
        "status_code",
        "version",
    )

    def __init__(self, method: str, version: str, keep_alive: bool, server: bytes = b"") -> None:
        self.method = method
        self.version = version
        self.keep_alive = keep_alive
        self.server = server
        self.status_code = 0
        self.head_sent = False
        self._chunked = False
        self._bodyless = False
        self._remaining: int | None = None

    def head(
        self,
        status: str,
        headers: list[tuple[str, str]],
        content_length: int | None = None,
    ) -> bytes:
        """Validate and encode the status line and headers.

        ``content_length`` lets the caller set a length it computed (a body it
        already holds whole) when the app gave none.
        """
        status_line = _STATUS_LINES.get(status) if type(status) is str else None
        if status_line is None:
            status_line = _status_line(status)
        line, code = status_line
        self.status_code = code
        self._bodyless = self.method == "HEAD" or code < 200 or code in (204, 304)
        out = [line]
        has_date = has_server = False
        length: int | None = None
        lines = _HEADER_LINES
        for item in headers:
            try:
                cached = lines.get(item)
            except TypeError:  # unhashable: not a (str, str) tuple, refused below
                cached = None
            if cached is None:
                cached = _header_line(item)
            encoded, special, number = cached
            if special is None:
                out.append(encoded)
                continue
            if special == "connection":
                if "close" in _tokens(item[1]):
                    self.keep_alive = False
                continue
            if special == "content-length":
                if length is not None and number != length:
                    raise LocalProtocolError("invalid Content-Length %r" % (item[1],))
                length = number
            elif special == "date":
                has_date = True
            else:
                has_server = True
            out.append(encoded)
        if length is None and content_length is not None and not self._bodyless:
            length = content_length
            out.append(b"Content-Length: %d\r\n" % length)
        if self._bodyless:
            pass
        elif length is not None:
            self._remaining = length
        elif self.version == "HTTP/1.1":
            self._chunked = True
            out.append(b"Transfer-Encoding: chunked\r\n")
        else:
            self.keep_alive = False  # the end of the body is the end of the connection
        if not has_date:
            out += (b"Date: ", http_date(), b"\r\n")
        if not has_server and self.server:
            out += (b"Server: ", self.server, b"\r\n")
        if not self.keep_alive:
            out.append(b"Connection: close\r\n")
        elif self.version != "HTTP/1.1":
            out.append(b"Connection: keep-alive\r\n")
        out.append(b"\r\n")
        self.head_sent = True
        return b"".join(out)

    def body(self, data: bytes) -> bytes:
        """Frame a piece of body; returns ``b""`` when nothing must be sent."""
        if not data or self._bodyless:
            return b""
        if self._chunked:
            return b"%x\r\n%s\r\n" % (len(data), data)
        if self._remaining is not None:
            if len(data) > self._remaining:
                # More than the app promised: cut it and end the connection,
                # the client could not tell the excess from the next response.
                data = data[: self._remaining]
                self.keep_alive = False
            self._remaining -= len(data)
        return data

    def end(self) -> bytes:
        """Finish the body; after this, close the connection unless keep_alive."""
        if self._chunked:
            return b"0\r\n\r\n"
        if self._remaining:
            self.keep_alive = False  # short body: only closing tells the client
        return b""

    def abort(self) -> None:
        """The response broke after its head: the connection cannot be reused."""
        self.keep_alive = False

    def error(self, status: str) -> bytes | None:
        """The error response that replaces this one, or None: cut the connection.

        Before the head went out, the client gets ``status`` instead (head
        only for HEAD) and :attr:`status_code` / :attr:`keep_alive` describe
        it; after, nothing can be said any more and the connection must end.
        """
        if self.head_sent:
            self.abort()
            return None
        payload, self.keep_alive = error_response(
            status, self.version, self.keep_alive, self.method, self.server
        )
        self.status_code = int(status[:3])
        return payload


def _latin1(text: str, what: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise LocalProtocolError("%s %r is not latin-1" % (what, text)) from None


# Apps send the same status lines and headers over and over: validating and
# encoding each once takes a third off Response.head (benchmarks/hotpath.py).
# Bounded, and emptied when full, so values that never recur (ETags, cookies)
# give way again to the ones that do.
_CACHE_MAX = 4096
_STATUS_LINES: dict[str, tuple[bytes, int]] = {}
_HEADER_LINES: dict[tuple[str, str], tuple[bytes, str | None, int | None]] = {}
# Headers whose presence or value the framing must see in every response.
_SPECIAL = frozenset({"connection", "content-length", "date", "server"})


def _status_line(status: object) -> tuple[bytes, int]:
    if not isinstance(status, str) or not _STATUS_RE.match(status):
        raise LocalProtocolError("invalid status %r" % (status,))
    result = (b"HTTP/1.1 " + _latin1(status, "status") + b"\r\n", int(status[:3]))
    if type(status) is str:
        if len(_STATUS_LINES) >= _CACHE_MAX:
            _STATUS_LINES.clear()
        _STATUS_LINES[status] = result
    return result


def _header_line(item: object) -> tuple[bytes, str | None, int | None]:
    """Validate one ``(name, value)`` header: ``(encoded line, special name, length)``."""
    if not isinstance(item, tuple) or len(item) != 2:
        raise LocalProtocolError("header %r is not a (name, value) tuple" % (item,))
    name, value = item
    if not isinstance(name, str) or not _TOKEN_RE.match(name):
        raise LocalProtocolError("invalid header name %r" % (name,))
    if not isinstance(value, str) or _BAD_VALUE_RE.search(value):
        raise LocalProtocolError("invalid value for header %s: %r" % (name, value))
    lower = name.lower()
    if lower in HOP_BY_HOP:
        raise LocalProtocolError("hop-by-hop header %s is the server's job" % name)
    number: int | None = None
    if lower == "content-length":
        digits = value.strip()
        if not (digits.isascii() and digits.isdigit()):
            raise LocalProtocolError("invalid Content-Length %r" % value)
        number = int(digits)
    line = b"".join((_latin1(name, "header name"), b": ", _latin1(value, name), b"\r\n"))
    result = (line, lower if lower in _SPECIAL else None, number)
    # Only exact str/tuple types: a subclass could hash or compare differently.
    if type(item) is tuple and type(name) is str and type(value) is str:
        if len(_HEADER_LINES) >= _CACHE_MAX:
            _HEADER_LINES.clear()
        _HEADER_LINES[item] = result
    return result


def simple_response(
    status: str, body: bytes, version: str, keep_alive: bool, server: bytes = b""
) -> tuple[bytes, bool]:
    """A complete small response (errors, 504s); returns ``(bytes, keep_alive)``."""
    resp = Response("GET", version, keep_alive, server)
    head = resp.head(status, [("Content-Type", "text/plain; charset=utf-8")], len(body))
    return head + resp.body(body) + resp.end(), resp.keep_alive


def error_response(
    status: str,
    version: str,
    keep_alive: bool = False,
    method: str = "GET",
    server: bytes = SERVER_HEADER,
) -> tuple[bytes, bool]:
    """The response m2gate sends itself (500, 400, 413, 503): the reason as body.

    A HEAD request gets the head only. Returns ``(bytes, keep_alive)``.
    """
    payload, keep_alive = simple_response(
        status, status[4:].encode("ascii") + b"\n", version, keep_alive, server
    )
    if method == "HEAD":
        payload = payload.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    return payload, keep_alive
