"""Property tests: whatever arrives on the wire, the parsers either return an
event or raise MalformedMessage, never anything else."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m2gate.protocol import tnetstring
from m2gate.protocol.errors import LocalProtocolError, MalformedMessage
from m2gate.protocol.http import Response
from m2gate.protocol.messages import Message, parse_message

from .helpers import RawValue, control, message, request_headers

pytestmark = pytest.mark.usefixtures("both_codecs")


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SEEDS: list[bytes] = [
    message(request_headers()),
    message(request_headers(), json=True),
    message(request_headers("POST", cookie=["a=1", "b=2"]), b"x=1&y=2"),
    message(request_headers("POST", cookie=["a=1", "b=2"]), b"x=1&y=2", json=True),
    control("disconnect"),
    control("disconnect", json=True),
    control("credits", DOWNLOAD_CREDITS="4096"),
    control("credits", json=True, DOWNLOAD_CREDITS="4096"),
    message(request_headers("WEBSOCKET_HANDSHAKE"), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    message(request_headers("WEBSOCKET", FLAGS="0x81"), b"hello"),
    message(request_headers("POST", **{"x-mongrel2-upload-start": "/tmp/up.XXX"})),
    message({"UPLOAD_STREAM": "1024", "UPLOAD_STREAM_DONE": "1"}, b"chunk"),
]

TNET_SEEDS: list[bytes] = [
    tnetstring.dumps({b"METHOD": b"GET", b"cookie": [b"a", b"b"], b"n": 12}),
    tnetstring.dumps(["ctl", {"credits": 5, "keep-alive": True, "x": None, "f": 1.5}]),
    tnetstring.dumps([[[], {}], [b""], False]),
]

# Bytes that matter to the grammar are over-represented in what gets inserted.
INTERESTING = st.sampled_from(b'0123456789:,}]#!~^ {}[]"\\\x00\xb2\xff')
ANY_BYTE = st.one_of(st.integers(0, 255), INTERESTING)


def _parse_message_or_malformed(data: bytes) -> None:
    try:
        result = parse_message(data)
    except MalformedMessage:
        return
    assert isinstance(result, Message)


def _loads_or_malformed(data: bytes) -> None:
    try:
        tnetstring.loads(data)
    except MalformedMessage:
        return


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid message with a few bytes flipped, inserted, deleted or duplicated."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut", "dup"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(ANY_BYTE)
        elif op == "insert":
            data[pos:pos] = bytes(draw(st.lists(ANY_BYTE, min_size=1, max_size=4)))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 4))]
        elif op == "cut":
            data = data[:pos]
        elif op == "dup":
            end = pos + draw(st.integers(1, 16))
            data[end:end] = data[pos:end]
    return bytes(data)


@FUZZ
@given(st.binary(max_size=200))
def test_parse_message_arbitrary_bytes(data: bytes) -> None:
    _parse_message_or_malformed(data)


@FUZZ
@given(st.binary(max_size=120).map(lambda b: b"S 1 / " + b))
def test_parse_message_arbitrary_bytes_after_a_valid_prefix(data: bytes) -> None:
    _parse_message_or_malformed(data)


@settings(max_examples=1000, deadline=None)
@given(mutated(SEEDS))
def test_parse_message_mutated_valid_messages(data: bytes) -> None:
    _parse_message_or_malformed(data)


@FUZZ
@given(st.binary(max_size=200))
def test_tnetstring_loads_arbitrary_bytes(data: bytes) -> None:
    _loads_or_malformed(data)


@settings(max_examples=500, deadline=None)
@given(mutated(TNET_SEEDS))
def test_tnetstring_loads_mutated_valid_values(data: bytes) -> None:
    _loads_or_malformed(data)


TNET_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.binary(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(TNET_VALUES)
def test_tnetstring_round_trip(value: Any) -> None:
    assert tnetstring.loads(tnetstring.dumps(value)) == value


HEADER_NAME = st.binary(min_size=1, max_size=12)
HEADER_VALUE = st.binary(max_size=24)
HEADERS = st.dictionaries(
    HEADER_NAME.filter(lambda n: n != b"METHOD"),
    HEADER_VALUE | st.lists(HEADER_VALUE, min_size=2, max_size=3),
    max_size=6,
)


@FUZZ
@given(HEADERS, st.binary(max_size=40), st.booleans())
def test_any_header_bytes_survive_as_latin1(
    raw: dict[bytes, bytes | list[bytes]], body: bytes, json: bool
) -> None:
    headers: dict[str, RawValue] = {"METHOD": "GET"}
    headers.update({k.decode("latin-1"): v for k, v in raw.items()})
    msg = parse_message(message(headers, body, json=json))
    assert msg.body == body
    for name, value in raw.items():
        got = msg.headers[name.decode("latin-1")]
        if isinstance(value, bytes):
            assert got == value.decode("latin-1")
        else:
            assert got == [v.decode("latin-1") for v in value]


# Values of the headers the classifier reads (numbers, flags, paths) drawn from
# digits, hex, signs and look-alike "digits" such as '\xb2' (superscript two).
TRICKY_VALUE = (
    st.lists(st.sampled_from(b"0123456789\xb2\xb3\xb9"), min_size=1, max_size=4).map(bytes)
    | st.lists(st.sampled_from(b"0123456789abcdefxX-+_ .\xb2\xbd\x00"), max_size=6).map(bytes)
    | st.binary(max_size=6)
)


@FUZZ
@given(TRICKY_VALUE, st.booleans())
def test_credits_amount_tricky_values(amount: bytes, json: bool) -> None:
    raw = control("credits", json=json, DOWNLOAD_CREDITS=amount)
    _parse_message_or_malformed(raw)


@FUZZ
@given(TRICKY_VALUE, st.booleans(), st.booleans())
def test_upload_stream_offset_tricky_values(offset: bytes, done: bool, json: bool) -> None:
    headers: dict[str, RawValue] = {"UPLOAD_STREAM": offset}
    if done:
        headers["UPLOAD_STREAM_DONE"] = "1"
    _parse_message_or_malformed(message(headers, b"chunk", json=json))


@FUZZ
@given(TRICKY_VALUE, st.booleans())
def test_websocket_flags_tricky_values(flags: bytes, json: bool) -> None:
    raw = message(request_headers("WEBSOCKET", FLAGS=flags), b"frame", json=json)
    _parse_message_or_malformed(raw)


SPECIAL = st.sampled_from(
    [
        "DOWNLOAD_CREDITS",
        "UPLOAD_STREAM",
        "UPLOAD_STREAM_DONE",
        "FLAGS",
        "x-mongrel2-upload-start",
        "x-mongrel2-upload-done",
    ]
)
METHODS = st.sampled_from(["JSON", "WEBSOCKET", "WEBSOCKET_HANDSHAKE", "GET", ""])


@FUZZ
@given(
    st.none() | METHODS,
    st.dictionaries(SPECIAL, TRICKY_VALUE | st.lists(TRICKY_VALUE, max_size=2)),
    st.sampled_from([b"/", b"@*"]),
    st.sampled_from([b"", b'{"type":"credits"}', b'{"type":"disconnect"}']),
    st.booleans(),
)
def test_classifier_mixed_headers(
    method: str | None, extra: dict[str, RawValue], path: bytes, body: bytes, json: bool
) -> None:
    headers: dict[str, RawValue] = {} if method is None else {"METHOD": method}
    headers.update(extra)
    _parse_message_or_malformed(message(headers, body, path=path, json=json))


RESPONSE_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8
) | st.sampled_from(["0", "12", " 3 ", "\xb2", "close", "keep-alive"])
RESPONSE_NAME = RESPONSE_TEXT | st.sampled_from(
    ["Content-Length", "Connection", "Date", "Server", "Transfer-Encoding", "X-Ok"]
)


@FUZZ
@given(
    st.sampled_from(["GET", "HEAD"]),
    st.sampled_from(["HTTP/1.0", "HTTP/1.1"]),
    st.booleans(),
    RESPONSE_TEXT.map(lambda reason: "200 " + reason) | RESPONSE_TEXT,
    st.lists(st.tuples(RESPONSE_NAME, RESPONSE_TEXT), max_size=4),
    st.lists(st.binary(max_size=8), max_size=3),
)
def test_response_framer_accepts_or_refuses_cleanly(
    method: str,
    version: str,
    keep_alive: bool,
    status: str,
    headers: list[tuple[str, str]],
    chunks: list[bytes],
) -> None:
    resp = Response(method, version, keep_alive)
    try:
        head = resp.head(status, headers)
    except LocalProtocolError:
        return
    assert head.endswith(b"\r\n\r\n")
    assert b"\r\n\r\n" not in head[:-4]  # no header injection
    for chunk in chunks:
        resp.body(chunk)
    resp.end()
