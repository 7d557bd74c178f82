"""The sans-IO RFC 6455 pieces: frames out, messages in, close codes, the 101."""

from __future__ import annotations

from pathlib import Path

import pytest

from m2gate.protocol import websocket as ws
from m2gate.protocol.errors import LocalProtocolError
from m2gate.protocol.messages import WebSocketFrame, WebSocketHandshake, parse_message

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


@pytest.mark.parametrize(
    ("size", "head"),
    [
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_frame_length_forms(size: int, head: bytes) -> None:
    frame = ws.encode_frame(ws.OP_TEXT, b"a" * size)
    assert frame == head + b"a" * size


def test_frames_are_never_masked_and_fin_is_optional() -> None:
    assert ws.encode_frame(ws.OP_BINARY, b"xy", fin=False) == b"\x02\x02xy"
    assert ws.encode_frame(ws.OP_PONG, b"p") == b"\x8a\x01p"


def test_control_frames_are_small_and_whole() -> None:
    with pytest.raises(ValueError):
        ws.encode_frame(ws.OP_PING, b"x" * 126)
    with pytest.raises(ValueError):
        ws.encode_frame(ws.OP_CLOSE, b"", fin=False)


def test_close_round_trip() -> None:
    frame = ws.encode_close(4001, "bye")
    assert frame[:2] == b"\x88\x05"
    assert ws.parse_close(frame[2:]) == (4001, "bye")
    assert ws.parse_close(b"") == (ws.NO_STATUS, "")


@pytest.mark.parametrize("code", [1005, 1006, 1015, 999, 5000])
def test_codes_that_must_not_be_sent(code: int) -> None:
    with pytest.raises(ValueError):
        ws.close_payload(code)


@pytest.mark.parametrize("payload", [b"\x03", b"\x03\xed", b"\x00\x00", b"\x03\xe8\xff"])
def test_bad_close_frames_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(ws.WebSocketError):
        ws.parse_close(payload)


def test_long_close_reason_refused() -> None:
    with pytest.raises(ValueError):
        ws.close_payload(1000, "x" * 124)


def test_handshake_response() -> None:
    head = ws.handshake_response("abc=", "chat", [("X-Extra", "1"), ("Upgrade", "nope")])
    assert head == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: abc=\r\nSec-WebSocket-Protocol: chat\r\nX-Extra: 1\r\n\r\n"
    )


@pytest.mark.parametrize("headers", [[("Bad Name", "1")], [("X", "a\r\nb")]], ids=["name", "value"])
def test_handshake_refuses_header_injection(headers: list[tuple[str, str]]) -> None:
    with pytest.raises(LocalProtocolError):
        ws.handshake_response("abc=", None, headers)


def test_whole_messages() -> None:
    asm = ws.MessageAssembler()
    assert asm.feed(0x81, "é".encode()) == ws.TextMessage("é")
    assert asm.feed(0x82, b"\x00") == ws.BinaryMessage(b"\x00")
    assert asm.feed(0x89, b"p") == ws.Ping(b"p")
    assert asm.feed(0x8A, b"q") == ws.Pong(b"q")
    assert asm.feed(0x88, b"\x03\xe8ok") == ws.Close(1000, "ok")


def test_continuations_with_a_ping_in_between() -> None:
    asm = ws.MessageAssembler()
    text = "fragmenté".encode()
    assert asm.feed(0x01, text[:5]) is None
    assert asm.feed(0x89, b"") == ws.Ping(b"")
    assert asm.feed(0x00, text[5:9]) is None  # splits the UTF-8 sequence: fine until the end
    assert asm.feed(0x80, text[9:]) == ws.TextMessage("fragmenté")
    assert asm.feed(0x02, b"a") is None
    assert asm.feed(0x80, b"b") == ws.BinaryMessage(b"ab")


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([(0x80, b"x")], 1002),  # continuation of nothing
        ([(0x01, b"a"), (0x81, b"b")], 1002),  # new message inside a fragmented one
        ([(0xC1, b"a")], 1002),  # RSV1 without an extension
        ([(0x83, b"")], 1002),  # unknown data opcode
        ([(0x8B, b"")], 1002),  # unknown control opcode
        ([(0x09, b"")], 1002),  # fragmented ping
        ([(0x81, b"\xff")], 1007),  # not UTF-8
        ([(0x01, b"a" * 8), (0x80, b"b" * 8)], 1009),  # over max_size
    ],
)
def test_protocol_errors(frames: list[tuple[int, bytes]], code: int) -> None:
    asm = ws.MessageAssembler(max_size=10)
    with pytest.raises(ws.WebSocketError) as info:
        for flags, payload in frames:
            asm.feed(flags, payload)
    assert info.value.code == code


@pytest.mark.parametrize("proto", ["tnetstring", "json"])
def test_real_mongrel2_frames(proto: str) -> None:
    def load(name: str) -> object:
        return parse_message((CORPUS / ("%s_%s.bin" % (proto, name))).read_bytes())

    hs = load("ws_handshake")
    assert isinstance(hs, WebSocketHandshake)
    assert hs.accept == "I+NrYhov/bHcEJAx92TRoJvqIMU="
    asm = ws.MessageAssembler()
    events = []
    for name in ("ws_text", "ws_binary", "ws_fragmented", "ws_ping", "ws_close"):
        frame = load(name)
        assert isinstance(frame, WebSocketFrame)
        events.append(asm.feed(frame.flags, frame.body))
    assert events[0] == ws.TextMessage("héllo wörld")
    assert isinstance(events[1], ws.BinaryMessage)
    assert events[2] == ws.TextMessage("fragment")
    assert events[3] == ws.Ping(b"are you there")
    assert events[4] == ws.Close(1000, "bye")
