"""The master's glance at a message (protocol/peek.py) must agree with the full parser.

The master counts a request in flight until its worker's done report, and the
worker reports only what its parser accepted as a request: a message
:func:`peek` calls a plain request that the parser refuses would keep a
thread busy forever. So, on the captured Mongrel2 corpus and on generated
messages: peek raises exactly when ``parse_message`` does, gives the same
sender and connection id and the kind of the parsed event, and a plain
request is one the parser makes an ``HTTPRequest`` or ``BadRequest`` of.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m2gate.protocol import messages, tnetstring
from m2gate.protocol.errors import MalformedMessage
from m2gate.protocol.messages import (
    BadRequest,
    Credits,
    Disconnect,
    HTTPRequest,
    UnknownControl,
    UploadDone,
    UploadStart,
    parse_message,
)
from m2gate.protocol.peek import (
    CONTROL,
    CREDITS,
    DISCONNECT,
    REQUEST,
    UPLOAD_DONE,
    UPLOAD_START,
    describe,
    peek,
)

from . import test_fuzz
from .helpers import SENDER, control, message, request_headers

CORPUS = sorted((Path(__file__).resolve().parents[1] / "corpus").glob("*.bin"))
CAPTURED = [p.read_bytes() for p in CORPUS]
KINDS = {
    Disconnect: DISCONNECT,
    Credits: CREDITS,
    UnknownControl: CONTROL,
    UploadDone: UPLOAD_DONE,
    UploadStart: UPLOAD_START,
}


def agrees(data: bytes) -> bool:
    """Assert that peek and the parser agree on ``data``; True if peek took the plain path."""
    try:
        msg = parse_message(data)
    except MalformedMessage:
        with pytest.raises(MalformedMessage):
            peek(data)
        return False
    sender, conn_id, kind, method, path, parsed = peek(data)
    assert (sender, conn_id) == (msg.sender, msg.conn_id)
    assert kind == KINDS.get(type(msg), REQUEST)
    assert path.decode("latin-1") == msg.path
    if parsed is not None:
        assert parsed == msg
        return False
    assert type(msg) in (HTTPRequest, BadRequest), "peek called a %s a request" % type(msg)
    assert method.decode("latin-1") == msg.headers["METHOD"]
    return True


@pytest.fixture
def c_codec() -> Iterator[None]:
    if not messages.use_accelerator(True):
        pytest.skip("tnetstring3 is not installed")
    yield


@pytest.mark.usefixtures("both_codecs")
def test_the_captured_corpus() -> None:
    assert len(CAPTURED) >= 40
    plain = [agrees(data) for data in CAPTURED]
    if messages._c_pop is not None:
        # Every captured tnetstring request without upload or websocket is plain.
        names = {p.name for p, fast in zip(CORPUS, plain, strict=True) if fast}
        assert "tnetstring_get_simple.bin" in names and "tnetstring_post_form.bin" in names
        assert not any(n.startswith("json_") or "upload" in n or "ws_" in n for n in names)
    else:
        assert not any(plain)  # the pure-Python codec: always the parser


def test_kinds_and_descriptions(c_codec: None) -> None:
    p = peek(message(request_headers("GET", "/a%20b"), path=b"/a%20b", conn_id=12))
    assert p[:3] == (SENDER.decode(), 12, REQUEST) and p[5] is None
    assert describe(p[3], p[4]) == "GET /a%20b"
    assert peek(control("disconnect", conn_id=3))[2] == DISCONNECT
    assert peek(control("credits", conn_id=3, DOWNLOAD_CREDITS="10"))[2] == CREDITS
    assert peek(control("pong", conn_id=3))[2] == CONTROL
    start = request_headers("POST", **{"x-mongrel2-upload-start": "/tmp/u", "content-length": "9"})
    up = peek(message(start))
    assert up[2] == UPLOAD_START and isinstance(up[5], UploadStart)
    done = peek(message({**start, "x-mongrel2-upload-done": "/tmp/u"}))
    assert done[2] == UPLOAD_DONE and isinstance(done[5], UploadDone)


def test_unusual_values_still_agree(c_codec: None) -> None:
    # Type-tag bytes inside string values: still plain (checked by type).
    assert agrees(message(request_headers("GET", "/~x!", cookie="a=}]#^!~")))
    # A number, a list, a repeated METHOD: the parser decides (one is a 400).
    for extra in ({"n": 5}, {"cookie": ["a", "b"]}, {"METHOD": ["GET", "GET"]}):
        raw = b"%s 5 /x %s0:," % (SENDER, tnetstring.dumps({b"METHOD": b"GET", **_enc(extra)}))
        assert not agrees(raw)
    assert agrees(message(request_headers("POST"), b"x=1&y=}2"))  # a body
    assert not agrees(message(request_headers("POST"), b"xy")[:-1] + b";")  # a broken one
    assert not agrees(message(request_headers("WEBSOCKET", FLAGS="zz"), b"x"))  # malformed
    assert not agrees(message(request_headers("GET"), json=True))
    assert not agrees(message(request_headers("GET"), sender=b"bad sender!"))


def _enc(values: dict[str, object]) -> dict[bytes, object]:
    out: dict[bytes, object] = {}
    for k, v in values.items():
        if isinstance(v, str):
            out[k.encode()] = v.encode()
        elif isinstance(v, list):
            out[k.encode()] = [x.encode() for x in v]
        else:
            out[k.encode()] = v
    return out


# Well-framed requests with arbitrary header dicts: every tnetstring type.
VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.binary(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.binary(), children),
    max_leaves=6,
)
SPECIAL = st.sampled_from(
    [b"METHOD", b"FLAGS", b"UPLOAD_STREAM", b"x-mongrel2-upload-start", b"host", b"VERSION"]
)
ARBITRARY = st.dictionaries(SPECIAL | st.binary(max_size=8) | st.integers(0, 9), VALUE, max_size=6)
REAL = {k.encode(): v.encode() for k, v in request_headers().items() if isinstance(v, str)}


@st.composite
def header_dicts(draw: st.DrawFn) -> dict[object, object]:
    """A real request's headers with a few entries of any type, or any dict at all."""
    if draw(st.booleans()):
        return draw(ARBITRARY)
    return {**REAL, **draw(st.dictionaries(SPECIAL | st.binary(max_size=8), VALUE, max_size=2))}


@st.composite
def framed(draw: st.DrawFn) -> bytes:
    headers = draw(header_dicts())
    body = draw(st.sampled_from([b"", b"x", b"}]~!#"]) | st.binary(max_size=8))
    path = draw(st.sampled_from([b"/", b"@*", b"/x~!"]))
    sender = draw(st.sampled_from([SENDER, SENDER, b"S", b"", b"bad!"]))
    conn_id = draw(st.sampled_from([b"1", b"0", b"9" * 20, b"9" * 21, b"-1", b"1\xb2"]))
    return b"%s %s %s %s%d:%s," % (
        sender,
        conn_id,
        path,
        tnetstring.dumps(headers),
        len(body),
        body,
    )


GENERATED = (
    test_fuzz.mutated(CAPTURED)
    | test_fuzz.mutated(test_fuzz.SEEDS)
    | framed()
    | st.binary(max_size=120).map(lambda b: b"S 1 / " + b)
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(GENERATED)
def test_generated_messages_agree(data: bytes) -> None:
    messages.use_accelerator(True)
    agrees(data)


@pytest.mark.usefixtures("c_codec")
def test_generated_messages_reach_the_plain_path() -> None:
    """The property above would pass vacuously if nothing generated were plain."""
    plain = 0

    @settings(max_examples=300, deadline=None, database=None)
    @given(framed())
    def count(data: bytes) -> None:
        nonlocal plain
        plain += agrees(data)

    count()
    assert plain > 0
