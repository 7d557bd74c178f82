"""Every value a client (or a broken peer) controls is checked where it enters.

Issue 9: a Content-Length of ``\\xb2`` (latin-1 for ``²``, which ``str.isdigit()``
accepts and ``int()`` rejects) with ``X-Mongrel2-Upload-Start`` killed the
receiving thread. The parser now guarantees a contract on every event it
returns (checked here on crafted and generated messages), and turns a
well-framed request with unusable values into :class:`BadRequest`, which the
runtimes answer with 400 before serving the next request.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m2gate.adapters.common import EnvironDefaults
from m2gate.protocol import tnetstring, websocket
from m2gate.protocol.errors import MalformedMessage
from m2gate.protocol.http import request_framing, simple_response
from m2gate.protocol.messages import (
    UPLOAD_DONE,
    UPLOAD_START,
    BadRequest,
    Credits,
    HTTPRequest,
    Message,
    UploadDone,
    UploadStart,
    UploadStream,
    WebSocketFrame,
    _parse_common,
    parse_message,
)
from m2gate.runtime.asyncio import AsyncioRuntime
from m2gate.runtime.threaded import ThreadedRuntime

from .helpers import SENDER, RawValue, control, message, request_headers
from .test_asgi_worker import FakeTransport

pytestmark = pytest.mark.usefixtures("both_codecs")

TMP = "/srv/m2/tmp/upload.AbC123"


def req(json: bool = False, conn_id: int = 7, **extra: RawValue) -> Message:
    return parse_message(message(request_headers("POST", **extra), conn_id=conn_id, json=json))


def bad(json: bool = False, **extra: RawValue) -> BadRequest:
    msg = req(json=json, **extra)
    assert type(msg) is BadRequest, msg
    assert msg.status == 400 and msg.reason and msg.body == b""
    assert msg.key == (SENDER.decode(), 7)  # so the runtime can answer it
    return msg


# -- Content-Length ----------------------------------------------------------------


@pytest.mark.parametrize("json", [False, True])
@pytest.mark.parametrize("value", ["0", "12", "000123", "9" * 18])
def test_plain_ascii_content_length_is_kept(value: str, json: bool) -> None:
    msg = req(json=json, **{"content-length": value})
    assert type(msg) is HTTPRequest
    assert int(msg.header("content-length") or "x") == int(value)


@pytest.mark.parametrize("json", [False, True])
@pytest.mark.parametrize(
    "value",
    [
        b"\xb2",
        b"1\xb9",
        b"\xb2\xb3",
        b"",
        b" 12",
        b"12 ",
        b"-1",
        b"+1",
        b"1_000",
        b"0x10",
        b"9" * 19,
    ],
)
def test_content_length_that_is_not_ascii_digits_is_a_bad_request(value: bytes, json: bool) -> None:
    msg = bad(json=json, **{"content-length": value})
    assert "Content-Length" in msg.reason
    assert "content-length" not in msg.headers


def test_the_issue_9_request_is_a_bad_request_not_an_upload() -> None:
    msg = bad(**{UPLOAD_START: TMP, "content-length": b"\xb2"})
    assert UPLOAD_START not in msg.headers


def test_unicode_digits_through_json_escapes_are_refused() -> None:
    # JSON headers can carry \\u escapes: ARABIC-INDIC DIGIT THREE is a str digit too.
    head = b'{"METHOD":"POST","VERSION":"HTTP/1.1","content-length":"\\u0663"}'
    raw = b"%s 7 / %d:%s,0:," % (SENDER, len(head), head)
    msg = parse_message(raw)
    assert type(msg) is BadRequest and "Content-Length" in msg.reason
    assert "\u0663".isdigit()  # what made str.isdigit() the wrong check


def test_repeated_content_length_is_a_bad_request() -> None:
    assert "Content-Length" in bad(**{"content-length": ["1", "2"]}).reason


# -- upload headers ----------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {UPLOAD_START: [TMP, TMP]},
        {UPLOAD_START: TMP, UPLOAD_DONE: [TMP, "/etc/passwd"]},
        {UPLOAD_START: ""},
        {UPLOAD_START: "/tmp/a\x00b"},
        {UPLOAD_START: TMP, UPLOAD_DONE: "/x" * 3000},
    ],
)
def test_unusable_upload_headers_are_a_bad_request(extra: dict[str, RawValue]) -> None:
    msg = bad(**extra)
    assert "upload" in msg.reason
    assert UPLOAD_START not in msg.headers and UPLOAD_DONE not in msg.headers


def test_good_upload_headers_still_classify() -> None:
    start = req(**{UPLOAD_START: TMP, "content-length": "30000"})
    assert type(start) is UploadStart and start.upload_path == TMP
    done = req(**{UPLOAD_START: TMP, UPLOAD_DONE: TMP})
    assert type(done) is UploadDone and (done.start_path, done.upload_path) == (TMP, TMP)


# -- method, version, host, credits ------------------------------------------------------


@pytest.mark.parametrize("method", ["G ET", "GET\r\n", "G\xe9T", "(GET)", "X" * 65])
def test_method_that_is_not_a_token_is_a_bad_request(method: str) -> None:
    raw = message(request_headers(method), conn_id=7)
    msg = parse_message(raw)
    assert type(msg) is BadRequest and "method" in msg.reason


@pytest.mark.parametrize("method", ["", ["GET", "POST"]])
def test_empty_or_repeated_method_is_malformed(method: RawValue) -> None:
    with pytest.raises(MalformedMessage):
        parse_message(message(request_headers("GET", METHOD=method)))


def test_unusual_token_methods_pass() -> None:
    for method in ("PROPFIND", "M-SEARCH", "BREW"):
        msg = parse_message(message(request_headers(method)))
        assert type(msg) is HTTPRequest and msg.method == method


@pytest.mark.parametrize("version", ["HTTP/1.1\r\nX: y", "HTTP/11", "", ["HTTP/1.1"] * 2])
def test_bad_version_is_a_bad_request_answered_as_http_1_0(version: RawValue) -> None:
    msg = bad(VERSION=version)
    assert "VERSION" not in msg.headers
    assert request_framing(msg) == ("HTTP/1.0", False)


@pytest.mark.parametrize("host", ["localhost:\xb2\xb3", "h:123456", "a:b:c", ["a", "b"], "h:8\xb9"])
def test_bad_host_is_a_bad_request(host: RawValue) -> None:
    assert "Host" in bad(host=host).reason


@pytest.mark.parametrize("host", ["localhost", "localhost:6767", "[::1]:8080", "h:", "ex\xe4mple"])
def test_good_host_passes(host: str) -> None:
    assert type(req(host=host)) is HTTPRequest


@pytest.mark.parametrize("credits", ["0", "\xb2", "-1", "9" * 19, ["1", "2"]])
def test_request_with_an_unusable_flow_control_window_is_a_bad_request(credits: RawValue) -> None:
    msg = bad(DOWNLOAD_CREDITS=credits)
    # Dropped, so the 400 goes out without waiting for credits that never come.
    assert "DOWNLOAD_CREDITS" not in msg.headers


def test_bad_request_keeps_a_valid_window_so_the_400_can_be_sent() -> None:
    msg = bad(DOWNLOAD_CREDITS="102400", **{"content-length": "\xb2"})
    assert msg.headers["DOWNLOAD_CREDITS"] == "102400"
    assert msg.headers["METHOD"] == "POST" and msg.headers["VERSION"] == "HTTP/1.1"


@pytest.mark.parametrize("amount", [b"\xb2", b"9" * 19, b"", b"-5"])
def test_credits_notice_with_a_bad_amount_is_malformed(amount: bytes) -> None:
    with pytest.raises(MalformedMessage):
        parse_message(control("credits", DOWNLOAD_CREDITS=amount))


def test_credits_notice_amount() -> None:
    msg = parse_message(control("credits", DOWNLOAD_CREDITS="0"))
    assert type(msg) is Credits and msg.amount == 0


@pytest.mark.parametrize("offset", ["\xb2", "9" * 19, "1 "])
def test_upload_stream_offset_must_be_plain_digits(offset: str) -> None:
    with pytest.raises(MalformedMessage):  # no METHOD: only a good offset makes it a chunk
        parse_message(message({"UPLOAD_STREAM": offset}, b"chunk"))
    msg = parse_message(message({"UPLOAD_STREAM": "9" * 18}, b"chunk"))
    assert type(msg) is UploadStream and msg.offset == int("9" * 18)


# -- websocket flags and frames --------------------------------------------------------


@pytest.mark.parametrize("flags", ["0x181", "f" * 1000, " 0x81", "0x8_1", "0x\xb2", "", "0x"])
def test_websocket_flags_must_be_one_hex_byte(flags: str) -> None:
    with pytest.raises(MalformedMessage):
        parse_message(message(request_headers("WEBSOCKET", FLAGS=flags), b"x"))


@pytest.mark.parametrize(("flags", "value"), [("0x81", 0x81), ("0X8a", 0x8A), ("88", 0x88)])
def test_websocket_flags_accepted(flags: str, value: int) -> None:
    msg = parse_message(message(request_headers("WEBSOCKET", FLAGS=flags), b"x"))
    assert type(msg) is WebSocketFrame and msg.flags == value


@pytest.mark.parametrize("flags", [-1, 0x100, 0x181, 2**70])
def test_assembler_refuses_flags_that_are_not_a_byte(flags: int) -> None:
    with pytest.raises(websocket.WebSocketError):
        websocket.MessageAssembler().feed(flags, b"x")


# -- framing: conn ids, sender, tnetstring bounds -----------------------------------------


@pytest.mark.parametrize("conn_id", [b"9" * 21, b"9" * 5000, b"\xb2", b"-1", b"1.0"])
def test_connection_id_is_a_bounded_ascii_number(conn_id: bytes) -> None:
    raw = b"%s %s /hello %s" % (SENDER, conn_id, message(request_headers()).split(b" ", 3)[3])
    assert _parse_common(raw) is None  # the fast path leaves it to the full parser
    with pytest.raises(MalformedMessage):
        parse_message(raw)


def test_largest_connection_id_parses() -> None:
    raw = b"%s %s /hello %s" % (SENDER, b"9" * 20, message(request_headers()).split(b" ", 3)[3])
    assert parse_message(raw).conn_id == int("9" * 20)


@pytest.mark.parametrize("sender", [b"bad!", b"\xff", b"a" * 129, b"a_b"])
def test_sender_must_be_a_reply_uuid(sender: bytes) -> None:
    with pytest.raises(MalformedMessage):
        parse_message(message(request_headers(), sender=sender))


def test_sender_check_is_cached_per_value() -> None:
    a = parse_message(message(request_headers(), sender=b"a-1"))
    b = parse_message(message(request_headers(), sender=b"a-1"))
    assert a.sender == b.sender == "a-1"
    with pytest.raises(MalformedMessage):  # the cache never lets a different one through
        parse_message(message(request_headers(), sender=b"a-1!"))


def _nested(depth: int) -> bytes:
    value = b"0:]"
    for _ in range(depth):
        value = b"%d:%s]" % (len(value), value)
    return value


@pytest.mark.parametrize("depth", [40, 2000])
def test_deep_nesting_is_malformed_not_a_recursion_error(depth: int) -> None:
    with pytest.raises(MalformedMessage):
        tnetstring.loads(_nested(depth))
    head = b"6:METHOD,3:GET,1:x," + _nested(depth)
    raw = b"%s 1 / %d:%s}0:," % (SENDER, len(head), head)
    with pytest.raises(MalformedMessage):
        parse_message(raw)


@pytest.mark.parametrize(
    "data",
    [
        b"99999999999:x,",  # eleven length digits
        b"9999999999:x,",  # a length far past the end
        b"5000:" + b"9" * 5000 + b"#",  # an int() past CPython's digit limit
        b"\xb2:x,",
        b"1\xb2:x,",
    ],
)
def test_tnetstring_lengths_and_numbers_are_bounded(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        tnetstring.loads(data)


# -- the contract, on generated messages ---------------------------------------------------

_ASCII_DIGITS = re.compile(r"[0-9]{1,18}", re.ASCII)
_SENDER = re.compile(r"[A-Za-z0-9-]+")
TRICKY = st.sampled_from(
    [
        b"",
        b"0",
        b"12",
        b"\xb2",
        b"1\xb9",
        b"9" * 19,
        b"9" * 5000,
        b"/tmp/x",
        b"a\x00",
        b"h:\xb2",
        b"0x81",
    ]
) | st.binary(max_size=6)
NAMES = st.sampled_from(
    [
        "content-length",
        "host",
        "DOWNLOAD_CREDITS",
        "VERSION",
        "METHOD",
        "FLAGS",
        "UPLOAD_STREAM",
        UPLOAD_START,
        UPLOAD_DONE,
    ]
)


def check_contract(msg: Message) -> None:
    """What the runtimes and adapters rely on, for any event the parser returns."""
    assert _SENDER.fullmatch(msg.sender) and 0 <= msg.conn_id < 10**20
    if isinstance(msg, (Credits,)) or msg.path == "@*":
        return
    for name in ("content-length",):
        value = msg.headers.get(name)
        assert value is None or (isinstance(value, str) and _ASCII_DIGITS.fullmatch(value))
    credits = msg.headers.get("DOWNLOAD_CREDITS")
    assert credits is None or (isinstance(credits, str) and int(credits) > 0)
    host = msg.headers.get("host")
    if host is not None:
        assert isinstance(host, str)
        port = host.rpartition("]")[2].rpartition(":")[2] if ":" in host else ""
        assert port == "" or (port.isascii() and port.isdigit())
    if isinstance(msg, UploadStart | UploadDone):
        assert isinstance(msg.headers[UPLOAD_START], str) and "\x00" not in msg.upload_path
    if isinstance(msg, WebSocketFrame):
        assert 0 <= msg.flags <= 0xFF
    request_framing(msg)  # what every answer (a 400 too) starts from


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(NAMES, TRICKY | st.lists(TRICKY, max_size=3), max_size=4),
    st.sampled_from(["GET", "POST", "WEBSOCKET", "JSON", None]),
    st.booleans(),
)
def test_every_event_meets_the_contract(
    extra: dict[str, RawValue], method: str | None, json: bool
) -> None:
    headers = request_headers(method or "GET", **extra)
    if method is None:  # an upload.stream chunk has no METHOD
        headers = {"UPLOAD_STREAM": "0", **extra}
    try:
        msg = parse_message(message(headers, json=json))
    except MalformedMessage:
        return
    check_contract(msg)
    if isinstance(msg, BadRequest):
        payload, _ = simple_response(
            "400 Bad Request", b"Bad Request\n", *request_framing(msg)[:1], False, b"m2gate"
        )
        assert payload.startswith(b"HTTP/1.")


# -- the runtimes answer BadRequest with 400 and go on ------------------------------------


class Source:
    """A RequestSource over a fixed list of messages."""

    def __init__(self, incoming: Iterable[bytes]) -> None:
        self.incoming = list(incoming)
        self.lock = threading.Lock()

    def recv(self, timeout_ms: int) -> bytes | None:
        with self.lock:
            if self.incoming:
                return self.incoming.pop(0)
        time.sleep(timeout_ms / 1000 / 10)
        return None

    def stop_receiving(self) -> None:
        pass


class Sink:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.lock = threading.Lock()

    def send(self, messages: Sequence[bytes]) -> None:
        with self.lock:
            self.sent.extend(messages)

    def replies_to(self, conn_id: int) -> bytes:
        prefix = b" %d:%d, " % (len(str(conn_id)), conn_id)
        with self.lock:
            return b"".join(m.split(prefix, 1)[1] for m in self.sent if prefix in m)


HOSTILE = [
    {UPLOAD_START: TMP, "content-length": "\xb2"},  # issue 9
    {"content-length": "\xb2"},
    {UPLOAD_START: [TMP, TMP]},  # issue 5: was dropped silently
    {"host": "h:\xb2"},
    {"DOWNLOAD_CREDITS": "0"},
]


def hostile_then_good() -> list[bytes]:
    out = [
        message(request_headers("POST", **extra), conn_id=i + 1) for i, extra in enumerate(HOSTILE)
    ]
    out.append(message(request_headers("GET"), conn_id=99))
    return out


def test_threaded_runtime_answers_400_and_serves_the_next_request() -> None:
    def handler(msg: Message, out: Any, body: Any = None, length: Any = None) -> None:
        payload, _ = simple_response("200 OK", b"ok\n", "HTTP/1.1", False, b"t")
        out.finish(payload, close=True)

    sink = Sink()
    runtime = ThreadedRuntime(
        Source(hostile_then_good()), sink, handler, threads=2, flush_interval=0
    )
    thread = threading.Thread(target=runtime.run, args=(5.0,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not sink.replies_to(99):
        time.sleep(0.01)
    runtime.stop()
    thread.join(10)
    assert not thread.is_alive()
    for conn_id in range(1, len(HOSTILE) + 1):
        assert sink.replies_to(conn_id).startswith(b"HTTP/1.1 400 "), conn_id
    assert sink.replies_to(99).startswith(b"HTTP/1.1 200 OK")


def test_asyncio_runtime_answers_400_and_serves_the_next_request() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"ok"})

    async def go() -> Sink:
        transport = FakeTransport(hostile_then_good())
        sink = Sink()
        sink.sent = transport.sent  # the replies, read as they arrive
        runtime = AsyncioRuntime(transport, app, EnvironDefaults(), flush_interval=0)
        task = asyncio.create_task(runtime.run(5.0))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if sink.replies_to(99):
                break
        runtime.stop()
        assert await task
        return sink

    sink = asyncio.run(go())
    for conn_id in range(1, len(HOSTILE) + 1):
        assert sink.replies_to(conn_id).startswith(b"HTTP/1.1 400 "), conn_id
    assert sink.replies_to(99).startswith(b"HTTP/1.1 200 OK")


@pytest.mark.parametrize("value", [b"3:\xfdbc#", b"3:\xfdbc#\xf1", b"2:\xff1#"])
def test_what_the_c_decoder_raises_on_bad_numbers_is_malformed(value: bytes) -> None:
    # tnetstring3 raised OverflowError here, which nothing caught: the master died.
    head = b"6:METHOD,3:GET,1:x," + value
    raw = b"%s 1 / %d:%s}0:," % (SENDER, len(head), head)
    assert _parse_common(raw) is None
    with pytest.raises(MalformedMessage):
        parse_message(raw)
    with pytest.raises(MalformedMessage):
        tnetstring.loads(value)


@pytest.mark.parametrize("extra", [{"DOWNLOAD_CREDITS": "\xb2"}, {"content-length": "1\xb9"}])
def test_upload_stream_chunk_meets_the_contract_too(extra: dict[str, str]) -> None:
    # No METHOD, but admitted like a request: its DOWNLOAD_CREDITS was int()ed.
    msg = parse_message(message({"UPLOAD_STREAM": "0", **extra}, b"chunk"))
    assert type(msg) is BadRequest
    check_contract(msg)
