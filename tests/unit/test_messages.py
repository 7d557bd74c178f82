from __future__ import annotations

import pytest

from m2gate.protocol.errors import MalformedMessage
from m2gate.protocol.messages import (
    UPLOAD_DONE,
    UPLOAD_START,
    BadRequest,
    Credits,
    Disconnect,
    HTTPRequest,
    UnknownControl,
    UploadDone,
    UploadStart,
    UploadStream,
    WebSocketFrame,
    WebSocketHandshake,
    parse_message,
)

from .helpers import (
    SENDER,
    RawValue,
    control,
    json_headers,
    message,
    netstring,
    request_headers,
    tnet_headers,
)

pytestmark = pytest.mark.usefixtures("both_codecs")


BOTH = pytest.mark.parametrize("json", [False, True], ids=["tnetstring", "json"])


# --- ordinary requests -------------------------------------------------------


@BOTH
def test_simple_get(json: bool) -> None:
    msg = parse_message(message(request_headers(), json=json))
    assert type(msg) is HTTPRequest
    assert msg.sender == SENDER.decode()
    assert msg.conn_id == 7
    assert msg.key == (SENDER.decode(), 7)
    assert msg.path == "/hello"
    assert msg.method == "GET"
    assert msg.headers["host"] == "localhost:6767"
    assert msg.header("VERSION") == "HTTP/1.1"
    assert msg.body == b""


@BOTH
def test_post_body_is_kept_verbatim(json: bool) -> None:
    body = b'{"a": 1}\r\n\x00\xff'
    raw = message(request_headers("POST", **{"content-length": str(len(body))}), body, json=json)
    msg = parse_message(raw)
    assert type(msg) is HTTPRequest
    assert msg.method == "POST"
    assert msg.body == body


def test_tnetstring_message_built_by_hand() -> None:
    raw = b"UUID 42 /p?ignored 52:4:PATH,2:/p,6:METHOD,3:GET,5:QUERY,3:a=1,4:host,1:h,}0:,"
    msg = parse_message(raw)
    assert type(msg) is HTTPRequest
    assert (msg.sender, msg.conn_id, msg.path) == ("UUID", 42, "/p?ignored")
    assert msg.headers == {"PATH": "/p", "METHOD": "GET", "QUERY": "a=1", "host": "h"}


def test_json_message_built_by_hand() -> None:
    head = b'{"PATH":"/p","METHOD":"GET","QUERY":"a=1&b=2","host":"h"}'
    raw = b"UUID 42 /p %d:%s,3:abc," % (len(head), head)
    msg = parse_message(raw)
    assert type(msg) is HTTPRequest
    assert msg.headers == {"PATH": "/p", "METHOD": "GET", "QUERY": "a=1&b=2", "host": "h"}
    assert msg.body == b"abc"


def test_json_and_tnetstring_headers_agree() -> None:
    extra: dict[str, RawValue] = {
        "cookie": ["a=1", "b=2"],
        "x-quote": 'say "hi" \\ bye',
        "x-latin": b"caf\xe9",
        "x-ctl": b"a\tb\x01",
    }
    headers = request_headers(**extra)
    from_tnet = parse_message(message(headers))
    from_json = parse_message(message(headers, json=True))
    assert from_tnet.headers == from_json.headers
    assert from_json.headers["x-quote"] == 'say "hi" \\ bye'


def test_percent_encoded_path_is_kept_raw() -> None:
    raw = message(request_headers("GET", "/a%20b/%C3%A9"), path=b"/a%20b/%C3%A9")
    assert parse_message(raw).path == "/a%20b/%C3%A9"


def test_large_conn_id() -> None:
    assert parse_message(message(request_headers(), conn_id=2**40)).conn_id == 2**40


@BOTH
def test_repeated_headers_arrive_as_lists_in_order(json: bool) -> None:
    headers = request_headers(cookie=["a=1", "b=2", "c=3"])
    msg = parse_message(message(headers, json=json))
    assert msg.headers["cookie"] == ["a=1", "b=2", "c=3"]
    assert msg.header("cookie") == "a=1"


def test_header_lookup_defaults() -> None:
    msg = parse_message(message(request_headers(**{"x-none": []})))
    assert msg.header("absent") is None
    assert msg.header("absent", "d") == "d"
    assert msg.headers["x-none"] == []
    assert msg.header("x-none", "d") == "d"


@BOTH
def test_latin1_bytes_survive_as_latin1_str(json: bool) -> None:
    msg = parse_message(message(request_headers(**{"x-name": b"caf\xe9"}), json=json))
    assert msg.headers["x-name"] == "caf\xe9"
    assert msg.headers["x-name"].encode("latin-1") == b"caf\xe9"


@BOTH
def test_raw_utf8_bytes_survive_as_latin1_str(json: bool) -> None:
    utf8 = "żółw €".encode()
    msg = parse_message(message(request_headers(**{"x-name": utf8}), json=json))
    value = msg.headers["x-name"]
    assert isinstance(value, str)
    assert value.encode("latin-1") == utf8  # PEP 3333 native string
    assert value.encode("latin-1").decode("utf-8") == "żółw €"


def test_invalid_utf8_survives_in_json() -> None:
    msg = parse_message(message(request_headers(**{"x-bad": b"\xff\xfe\xc3"}), json=True))
    assert msg.headers["x-bad"] == "\xff\xfe\xc3"


def test_json_with_raw_control_characters() -> None:
    # Mongrel2 does not escape control characters: a strict JSON parser fails here.
    value = b"tab\there\x01\x1f\x7f"
    msg = parse_message(message(request_headers(**{"x-ctl": value}), json=True))
    assert msg.headers["x-ctl"] == value.decode("latin-1")


def test_json_raw_control_character_in_name() -> None:
    head = b'{"METHOD":"GET","x\x02y":"v"}'
    msg = parse_message(b"S 1 / %s0:," % netstring(head))
    assert msg.headers["x\x02y"] == "v"


def test_json_escaped_quote_and_backslash() -> None:
    head = b'{"METHOD":"GET","x":"a\\"b\\\\c"}'
    msg = parse_message(b"S 1 / %s0:," % netstring(head))
    assert msg.headers["x"] == 'a"b\\c'


def test_json_numbers_become_strings() -> None:
    head = b'{"METHOD":"GET","DOWNLOAD_CREDITS":102400}'
    msg = parse_message(b"S 1 / %s0:," % netstring(head))
    assert msg.headers["DOWNLOAD_CREDITS"] == "102400"


def test_tnetstring_integers_become_strings() -> None:
    raw = b"S 1 / " + b"30:6:METHOD,3:GET,7:credits,2:10#}" + b"0:,"
    msg = parse_message(raw)
    assert msg.headers["credits"] == "10"


def test_body_may_contain_spaces_colons_and_commas() -> None:
    body = b"a b:c,d} 5:x,"
    assert parse_message(message(request_headers("POST"), body)).body == body


def test_path_may_contain_colons_and_commas() -> None:
    msg = parse_message(message(request_headers(), path=b"/a:b,c}"))
    assert msg.path == "/a:b,c}"


# --- the JSON method and control messages ------------------------------------


@BOTH
def test_client_method_json_on_normal_path_is_a_request(json: bool) -> None:
    raw = message(request_headers("JSON"), b'{"type":"disconnect"}', json=json)
    msg = parse_message(raw)
    assert type(msg) is HTTPRequest
    assert msg.method == "JSON"


def test_at_star_path_without_method_json_is_not_control() -> None:
    msg = parse_message(message(request_headers("GET"), b'{"type":"disconnect"}', path=b"@*"))
    assert type(msg) is HTTPRequest


@BOTH
def test_disconnect(json: bool) -> None:
    msg = parse_message(control("disconnect", conn_id=12, json=json))
    assert type(msg) is Disconnect
    assert msg.conn_id == 12
    assert msg.path == "@*"


def test_disconnect_exact_wire_bytes() -> None:
    raw = b'%s 3 @* 16:6:METHOD,4:JSON,}21:{"type":"disconnect"},' % SENDER
    msg = parse_message(raw)
    assert type(msg) is Disconnect
    assert msg.key == (SENDER.decode(), 3)
    raw = b'%s 3 @* 17:{"METHOD":"JSON"},21:{"type":"disconnect"},' % SENDER
    assert type(parse_message(raw)) is Disconnect


@BOTH
def test_credits(json: bool) -> None:
    msg = parse_message(control("credits", json=json, DOWNLOAD_CREDITS="4096"))
    assert type(msg) is Credits
    assert msg.amount == 4096


def test_credits_without_amount_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        parse_message(control("credits"))


@pytest.mark.parametrize("amount", ["", "-1", "1.5", "0x10", "\xb2", "\u0663"])
def test_credits_with_bad_amount_is_malformed(amount: str) -> None:
    raw = control("credits", DOWNLOAD_CREDITS=amount.encode("utf-8"))
    with pytest.raises(MalformedMessage):
        parse_message(raw)


def test_credits_with_latin1_superscript_digit_is_malformed() -> None:
    # '\xb2' is '²': str.isdigit() says yes, int() says no.
    with pytest.raises(MalformedMessage):
        parse_message(control("credits", DOWNLOAD_CREDITS=b"\xb2"))


def test_unknown_control_type() -> None:
    msg = parse_message(control("shutdown"))
    assert type(msg) is UnknownControl
    assert msg.type == "shutdown"


@pytest.mark.parametrize("body", [b"[]", b'"disconnect"', b"{}", b'{"kind":"x"}'])
def test_control_without_type(body: bytes) -> None:
    raw = message({"METHOD": "JSON"}, body, path=b"@*")
    assert type(parse_message(raw)) is UnknownControl


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b"[" * 100_000])
def test_control_with_bad_json_body_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedMessage):
        parse_message(message({"METHOD": "JSON"}, body, path=b"@*"))


# --- websockets --------------------------------------------------------------


def test_websocket_handshake() -> None:
    headers = request_headers("WEBSOCKET_HANDSHAKE", upgrade="websocket")
    msg = parse_message(message(headers, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="))
    assert type(msg) is WebSocketHandshake
    assert msg.accept == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@BOTH
def test_websocket_frame(json: bool) -> None:
    msg = parse_message(message(request_headers("WEBSOCKET", FLAGS="0x81"), b"hi", json=json))
    assert type(msg) is WebSocketFrame
    assert msg.flags == 0x81
    assert msg.fin is True
    assert msg.opcode == 1
    assert msg.body == b"hi"


def test_websocket_frame_flags_without_prefix_and_continuation() -> None:
    msg = parse_message(message(request_headers("WEBSOCKET", FLAGS="2"), b"\x00"))
    assert isinstance(msg, WebSocketFrame)
    assert (msg.fin, msg.opcode) == (False, 2)


def test_websocket_method_without_flags_is_a_request() -> None:
    msg = parse_message(message(request_headers("WEBSOCKET"), b"hi"))
    assert type(msg) is HTTPRequest


def test_flags_without_websocket_method_is_a_request() -> None:
    msg = parse_message(message(request_headers("GET", FLAGS="0x81"), b"hi"))
    assert type(msg) is HTTPRequest


def test_websocket_frame_with_bad_flags_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        parse_message(message(request_headers("WEBSOCKET", FLAGS="zz"), b"hi"))


# --- uploads -----------------------------------------------------------------

TMP = "/srv/m2/tmp/upload.AbC123"


@BOTH
def test_upload_start(json: bool) -> None:
    headers = request_headers("POST", **{"x-mongrel2-upload-start": TMP})
    msg = parse_message(message(headers, json=json))
    assert type(msg) is UploadStart
    assert msg.upload_path == TMP


@BOTH
def test_upload_done(json: bool) -> None:
    headers = request_headers(
        "POST", **{"x-mongrel2-upload-start": TMP, "x-mongrel2-upload-done": TMP}
    )
    msg = parse_message(message(headers, json=json))
    assert type(msg) is UploadDone
    assert msg.start_path == msg.upload_path == TMP


def test_forged_upload_start_is_classified_with_its_claimed_path() -> None:
    # A client can send this header on a small request; the message layer reports
    # it as-is and the handler must check the path against its temp store.
    headers = request_headers("POST", **{"x-mongrel2-upload-start": "/etc/passwd"})
    msg = parse_message(message(headers, b"small body"))
    assert type(msg) is UploadStart
    assert msg.upload_path == "/etc/passwd"
    assert msg.body == b"small body"


def test_forged_upload_done_with_different_paths_is_visible() -> None:
    headers = request_headers(
        "POST",
        **{"x-mongrel2-upload-start": TMP, "x-mongrel2-upload-done": "/etc/shadow"},
    )
    msg = parse_message(message(headers))
    assert type(msg) is UploadDone
    assert msg.start_path != msg.upload_path


def test_forged_upload_done_alone_is_a_plain_request() -> None:
    headers = request_headers("POST", **{"x-mongrel2-upload-done": "/etc/passwd"})
    assert type(parse_message(message(headers))) is HTTPRequest


@pytest.mark.parametrize(
    "extra",
    [
        {"x-mongrel2-upload-start": [TMP, "/etc/passwd"]},
        {"x-mongrel2-upload-start": TMP, "x-mongrel2-upload-done": [TMP, TMP]},
    ],
)
def test_repeated_upload_headers_are_a_bad_request(extra: dict[str, str | list[str]]) -> None:
    # Not dropped (the client would hang): the runtime answers BadRequest with 400.
    msg = parse_message(message(request_headers("POST", **extra), conn_id=9))
    assert type(msg) is BadRequest
    assert msg.key == (SENDER.decode(), 9) and msg.status == 400
    assert "repeated x-mongrel2-upload" in msg.reason
    assert UPLOAD_START not in msg.headers and UPLOAD_DONE not in msg.headers


def test_upload_stream_first_chunk() -> None:
    msg = parse_message(message(request_headers("POST", UPLOAD_STREAM="0"), b"chunk"))
    assert type(msg) is UploadStream
    assert (msg.offset, msg.done, msg.body) == (0, False, b"chunk")


def test_upload_stream_later_chunks_have_reduced_headers() -> None:
    msg = parse_message(message({"UPLOAD_STREAM": "65536", "UPLOAD_STREAM_DONE": "1"}, b"x"))
    assert type(msg) is UploadStream
    assert (msg.offset, msg.done) == (65536, True)


@pytest.mark.parametrize("offset", [b"", b"-1", b"\xb2", b"abc"])
def test_upload_stream_with_bad_offset_and_no_method_is_malformed(offset: bytes) -> None:
    with pytest.raises(MalformedMessage):
        parse_message(message({"UPLOAD_STREAM": offset}, b"x"))


# --- malformed messages ------------------------------------------------------

GOOD_HEAD = tnet_headers({"METHOD": "GET"})


def _json(head: bytes) -> bytes:
    return b"S 1 / %s0:," % netstring(head)


def _tnet(inner: bytes) -> bytes:
    return b"S 1 / %d:%s}0:," % (len(inner), inner)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b" ",
        b"   ",
        b"S",
        b"S 1",
        b"S 1 /",
        b"S 1 / ",
        b" 1 / " + GOOD_HEAD + b"0:,",  # empty sender
        b"S  / " + GOOD_HEAD + b"0:,",  # empty conn id
        b"S 1  " + GOOD_HEAD + b"0:,",  # empty path
        b"S x / " + GOOD_HEAD + b"0:,",  # conn id not a number
        b"S -1 / " + GOOD_HEAD + b"0:,",  # negative conn id
        b"S \xb2 / " + GOOD_HEAD + b"0:,",  # non-ASCII digit
        b"S 1 / " + GOOD_HEAD,  # no body netstring
        b"S 1 / " + GOOD_HEAD + b"0:",  # body without terminator
        b"S 1 / " + GOOD_HEAD + b"0:;",  # body with wrong terminator
        b"S 1 / " + GOOD_HEAD + b"0:}",  # body as a tnetstring dict
        b"S 1 / " + GOOD_HEAD + b"5:abc,",  # body shorter than its length
        b"S 1 / " + GOOD_HEAD + b"1:abc,",  # body longer than its length
        b"S 1 / " + GOOD_HEAD + b"0:,0:,",  # trailing netstring
        b"S 1 / " + GOOD_HEAD + b"0:, ",  # trailing space
        b"S 1 / " + GOOD_HEAD + b"x:,",  # body length not a number
        b"S 1 / :0:,",  # no header length
        b"S 1 / 0:0:,",  # header netstring with no terminator
        b"S 1 / 0:]0:,",  # headers are a list
        b"S 1 / 0:#0:,",  # headers are a number
        b"S 1 / 2:{};0:,",  # unknown header terminator
        b"S 1 / 99:{}0:,",  # header length past the end
        b"S 1 / 1:{}0:,",  # header length too short
        _json(b"[]"),  # JSON headers that are a list
        _json(b'"abc"'),  # JSON headers that are a string
        _json(b"{x}"),  # bad JSON
        _json(b"{"),  # truncated JSON
        _json(b""),  # empty JSON
        _json(b"{}"),  # no METHOD
        _json(b'{"METHOD":""}'),  # empty METHOD
        _json(b'{"METHOD":null}'),  # null METHOD
        _json(b'{"METHOD":true}'),  # boolean header value
        _json(b'{"METHOD":{}}'),  # object header value
        _json(b'{"METHOD":[[""]]}'),  # nested list header value
        _json(b'{"METHOD":["GET",null]}'),  # null inside a list
        _json(b'{"METHOD":"GET"} x'),  # trailing garbage after the object
        _tnet(b"6:METHOD,4:true!"),  # boolean tnetstring header value
        _tnet(b"6:METHOD,0:}"),  # dict tnetstring header value
        _tnet(b"6:METHOD,7:4:1:x,]]"),  # nested list tnetstring header value
        _tnet(b"6:METHOD,0:~"),  # null tnetstring header value
        _tnet(b"6:METHOD,"),  # key without value
        _tnet(b"6:METHOD,3:GET,1:x"),  # dangling bytes inside the dict
        _tnet(b"1:1#1:x,"),  # non-string key
        _tnet(b"6:METHOD,1:x#"),  # bad integer value
        b"S 1 / 12:6:METHOD,3:GET,}0:,",  # tnetstring dict shorter than said
        b"S 1 / " + GOOD_HEAD[:-1] + b",0:,",  # tnetstring dict read as bad JSON
        b"S 1 / 12345678901:{}0:,",  # too many length digits
    ],
)
def test_malformed_messages_raise_malformed_message(raw: bytes) -> None:
    with pytest.raises(MalformedMessage):
        parse_message(raw)


def test_repeated_method_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        parse_message(message({"METHOD": ["GET", "POST"]}))


def test_deeply_nested_json_headers_are_malformed() -> None:
    head = b'{"METHOD":' + b"[" * 100_000 + b"}"
    with pytest.raises(MalformedMessage):
        parse_message(b"S 1 / %s0:," % netstring(head))


def test_deeply_nested_tnetstring_headers_are_malformed() -> None:
    value = b"0:]"
    for _ in range(3000):
        value = b"%d:%s]" % (len(value), value)
    inner = b"6:METHOD," + value
    with pytest.raises(MalformedMessage):
        parse_message(b"S 1 / %d:%s}0:," % (len(inner), inner))


def test_json_headers_helper_matches_mongrel2_shape() -> None:
    # Guard the helper itself: a plain netstring holding a JSON object.
    assert json_headers({"METHOD": "GET"}) == b'16:{"METHOD":"GET"},'


def test_header_name_cache_stays_bounded_under_unique_names() -> None:
    from m2gate.protocol import messages

    for i in range(1100):
        msg = parse_message(message(request_headers(**{"x-n%d" % i: "v"})))
        assert msg.header("x-n%d" % i) == "v"
    assert len(messages._NAMES) <= 1024
    assert parse_message(message(request_headers())).header("host") is not None
