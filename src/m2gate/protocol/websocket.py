"""RFC 6455 for a Mongrel2 handler, with no I/O.

Mongrel2 does the parts that need the socket: it computes Sec-WebSocket-Accept
(the body of the ``WEBSOCKET_HANDSHAKE`` message), unmasks incoming frames and
hands each one over with its first byte in ``FLAGS``. Everything else is the
handler's job and lives here: the 101 response, encoding the (unmasked)
frames we send, turning incoming frames into messages (continuations
reassembled, UTF-8 checked, ping and close recognised) and close codes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from m2gate.protocol.errors import LocalProtocolError
from m2gate.protocol.http import _BAD_VALUE_RE, _TOKEN_RE

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

# Close codes (RFC 6455 section 7.4.1).
NORMAL = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
NO_STATUS = 1005  # never sent: "the close frame had no code"
ABNORMAL = 1006  # never sent: "the connection dropped without a close frame"
INVALID_DATA = 1007
INTERNAL_ERROR = 1011

_RESERVED_TO_SEND = frozenset({NO_STATUS, ABNORMAL, 1015})
_VALID_RECEIVED = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013})


class WebSocketError(Exception):
    """The peer broke the protocol; close the connection with ``code``."""

    def __init__(self, msg: str, code: int = PROTOCOL_ERROR) -> None:
        super().__init__(msg)
        self.code = code


def encode_frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """One server-to-client frame (servers never mask)."""
    if not 0 <= opcode <= 0xF:
        raise ValueError("opcode %r out of range" % opcode)
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if opcode >= OP_CLOSE and (size > 125 or not fin):
        raise ValueError("control frames carry at most 125 bytes and are never fragmented")
    if size < 126:
        head = struct.pack("!BB", first, size)
    elif size < 65536:
        head = struct.pack("!BBH", first, 126, size)
    else:
        head = struct.pack("!BBQ", first, 127, size)
    return head + payload


def close_payload(code: int = NORMAL, reason: str = "") -> bytes:
    """Body of a close frame; codes that must never be sent are refused."""
    if code in _RESERVED_TO_SEND or not 1000 <= code <= 4999:
        raise ValueError("close code %r may not be sent" % code)
    raw = reason.encode("utf-8")
    if len(raw) > 123:
        raise ValueError("close reason is longer than 123 bytes")
    return struct.pack("!H", code) + raw


def encode_close(code: int = NORMAL, reason: str = "") -> bytes:
    return encode_frame(OP_CLOSE, close_payload(code, reason))


def parse_close(payload: bytes) -> tuple[int, str]:
    """``(code, reason)`` of a received close frame; 1005 when it has no code."""
    if not payload:
        return NO_STATUS, ""
    if len(payload) == 1:
        raise WebSocketError("close frame with a one-byte body")
    (code,) = struct.unpack("!H", payload[:2])
    if code not in _VALID_RECEIVED and not 3000 <= code <= 4999:
        raise WebSocketError("invalid close code %d" % code)
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketError("close reason is not UTF-8", INVALID_DATA) from None
    return code, reason


def handshake_response(
    accept: str,
    subprotocol: str | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> bytes:
    """The ``101 Switching Protocols`` Mongrel2 leaves to the handler to send."""
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Accept: " + accept,
    ]
    if subprotocol is not None:
        lines.append("Sec-WebSocket-Protocol: " + subprotocol)
    own = {"upgrade", "connection", "sec-websocket-accept", "sec-websocket-protocol"}
    for name, value in headers or ():
        if not _TOKEN_RE.match(name) or _BAD_VALUE_RE.search(value):
            raise LocalProtocolError("invalid header %r: %r" % (name, value))
        if name.lower() not in own:
            lines.append("%s: %s" % (name, value))
    for value in (accept, subprotocol or ""):
        if _BAD_VALUE_RE.search(value):
            raise LocalProtocolError("invalid handshake value %r" % value)
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise LocalProtocolError("handshake headers are not latin-1") from None


@dataclass(frozen=True, slots=True)
class TextMessage:
    data: str


@dataclass(frozen=True, slots=True)
class BinaryMessage:
    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


Event = TextMessage | BinaryMessage | Ping | Pong | Close


class MessageAssembler:
    """Turns incoming frames into whole messages and control events.

    Mongrel2 already reassembles most fragmented messages, but a data frame
    without FIN followed by continuation frames is still handled here, with
    control frames allowed in between as RFC 6455 says.
    """

    def __init__(self, max_size: int = 16 * 1024 * 1024) -> None:
        self.max_size = max_size
        self._opcode: int | None = None
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, flags: int, payload: bytes) -> Event | None:
        """Process one frame; a message is returned once its last frame is in."""
        if not 0 <= flags <= 0xFF:  # the first byte of a frame, as FLAGS carries it
            raise WebSocketError("frame flags %r are not one byte" % flags)
        fin = bool(flags & 0x80)
        opcode = flags & 0x0F
        if flags & 0x70:
            raise WebSocketError("reserved bits set without a negotiated extension")
        if opcode >= OP_CLOSE:
            if not fin or len(payload) > 125:
                raise WebSocketError("fragmented or oversized control frame")
            if opcode == OP_CLOSE:
                code, reason = parse_close(payload)
                return Close(code, reason)
            if opcode == OP_PING:
                return Ping(payload)
            if opcode == OP_PONG:
                return Pong(payload)
            raise WebSocketError("unknown control opcode 0x%x" % opcode)
        if opcode == OP_CONTINUATION:
            if self._opcode is None:
                raise WebSocketError("continuation frame without a message to continue")
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._opcode is not None:
                raise WebSocketError("new message before the previous one finished")
            self._opcode = opcode
        else:
            raise WebSocketError("unknown data opcode 0x%x" % opcode)
        self._size += len(payload)
        if self._size > self.max_size:
            raise WebSocketError("message larger than %d bytes" % self.max_size, 1009)
        self._parts.append(payload)
        if not fin:
            return None
        data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        kind = self._opcode
        self._opcode, self._parts, self._size = None, [], 0
        if kind == OP_TEXT:
            try:
                return TextMessage(data.decode("utf-8"))
            except UnicodeDecodeError:
                raise WebSocketError("text message is not UTF-8", INVALID_DATA) from None
        return BinaryMessage(data)
