from __future__ import annotations

import re

import pytest

from m2gate.protocol.errors import LocalProtocolError
from m2gate.protocol.http import (
    SERVER_HEADER,
    Response,
    error_response,
    http_date,
    request_framing,
    request_keep_alive,
    simple_response,
)
from m2gate.protocol.messages import parse_message

from .helpers import message, request_headers

DATE = b"Date: Sun, 06 Nov 1994 08:49:37 GMT"


def head_lines(head: bytes) -> list[bytes]:
    assert head.endswith(b"\r\n\r\n")
    return head[:-4].split(b"\r\n")


def framed(resp: Response, *chunks: bytes) -> bytes:
    return b"".join(resp.body(c) for c in chunks) + resp.end()


# --- keep-alive decisions from the request -----------------------------------


@pytest.mark.parametrize(
    ("version", "connection", "expected"),
    [
        ("HTTP/1.1", None, True),
        ("HTTP/1.1", "close", False),
        ("HTTP/1.1", "Close", False),
        ("HTTP/1.1", "keep-alive, close", False),
        ("HTTP/1.1", "Upgrade", True),
        ("HTTP/1.0", None, False),
        ("HTTP/1.0", "keep-alive", True),
        ("HTTP/1.0", " Keep-Alive ", True),
        ("HTTP/1.0", "close", False),
    ],
)
def test_request_keep_alive(version: str, connection: str | None, expected: bool) -> None:
    assert request_keep_alive(version, connection) is expected


def test_request_framing_from_message() -> None:
    msg = parse_message(message(request_headers(VERSION="HTTP/1.0", connection="keep-alive")))
    assert request_framing(msg) == ("HTTP/1.0", True)
    msg = parse_message(message(request_headers(connection="close")))
    assert request_framing(msg) == ("HTTP/1.1", False)


def test_request_framing_without_version_assumes_http10() -> None:
    msg = parse_message(message({"METHOD": "GET"}))
    assert request_framing(msg) == ("HTTP/1.0", False)


# --- framing choices ---------------------------------------------------------


def test_http11_without_length_is_chunked() -> None:
    resp = Response("GET", "HTTP/1.1", True)
    head = resp.head("200 OK", [("Content-Type", "text/plain"), ("Date", "x")])
    assert head == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    assert resp.body(b"hello") == b"5\r\nhello\r\n"
    assert resp.body(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert resp.end() == b"0\r\n\r\n"
    assert resp.keep_alive is True


def test_empty_chunk_is_never_sent() -> None:
    # An empty chunk would end the chunked body; an empty reply closes the connection.
    resp = Response("GET", "HTTP/1.1", True)
    resp.head("200 OK", [])
    assert resp.body(b"") == b""


def test_http10_without_length_is_close_delimited() -> None:
    resp = Response("GET", "HTTP/1.0", True)
    head = resp.head("200 OK", [("Date", "x")])
    assert head == b"HTTP/1.1 200 OK\r\nDate: x\r\nConnection: close\r\n\r\n"
    assert resp.keep_alive is False
    assert framed(resp, b"abc", b"def") == b"abcdef"
    assert resp.keep_alive is False


def test_http10_keep_alive_when_asked_and_length_known() -> None:
    resp = Response("GET", "HTTP/1.0", True)
    head = resp.head("200 OK", [("Content-Length", "3"), ("Date", "x")])
    assert head == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nDate: x\r\nConnection: keep-alive\r\n\r\n"
    )
    assert framed(resp, b"abc") == b"abc"
    assert resp.keep_alive is True


def test_http10_not_asking_for_keep_alive_closes() -> None:
    resp = Response("GET", "HTTP/1.0", False)
    head = resp.head("200 OK", [("Content-Length", "3")])
    assert b"Connection: close\r\n" in head
    assert framed(resp, b"abc") == b"abc"
    assert resp.keep_alive is False


def test_http11_close_requested_still_frames_body() -> None:
    resp = Response("GET", "HTTP/1.1", False)
    head = resp.head("200 OK", [])
    assert b"Transfer-Encoding: chunked\r\n" in head
    assert b"Connection: close\r\n" in head
    assert framed(resp, b"ab") == b"2\r\nab\r\n0\r\n\r\n"
    assert resp.keep_alive is False


def test_length_given_by_caller_is_added() -> None:
    resp = Response("GET", "HTTP/1.1", True)
    head = resp.head("200 OK", [], content_length=5)
    assert b"Content-Length: 5\r\n" in head
    assert b"Transfer-Encoding" not in head
    assert framed(resp, b"hello") == b"hello"
    assert resp.keep_alive is True


def test_app_content_length_wins_over_caller_length() -> None:
    resp = Response("GET", "HTTP/1.1", True)
    head = resp.head("200 OK", [("Content-Length", "2")], content_length=5)
    assert head.count(b"Content-Length") == 1
    assert b"Content-Length: 2\r\n" in head


# --- bodiless responses ------------------------------------------------------


def test_head_request_sends_no_body_but_keeps_length() -> None:
    resp = Response("HEAD", "HTTP/1.1", True)
    head = resp.head("200 OK", [("Content-Length", "5")])
    assert b"Content-Length: 5\r\n" in head
    assert b"Transfer-Encoding" not in head
    assert framed(resp, b"hello") == b""
    assert resp.keep_alive is True


def test_head_request_without_length_is_not_chunked() -> None:
    resp = Response("HEAD", "HTTP/1.1", True)
    head = resp.head("200 OK", [])
    assert b"Transfer-Encoding" not in head
    assert framed(resp, b"hello") == b""
    assert resp.keep_alive is True


def test_head_request_http10_keep_alive_kept() -> None:
    resp = Response("HEAD", "HTTP/1.0", True)
    head = resp.head("200 OK", [])
    assert b"Connection: keep-alive\r\n" in head
    assert resp.keep_alive is True


def test_head_caller_length_not_added() -> None:
    resp = Response("HEAD", "HTTP/1.1", True)
    assert b"Content-Length" not in resp.head("200 OK", [], content_length=5)


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified", "101 Switching"])
def test_bodiless_status(status: str) -> None:
    resp = Response("GET", "HTTP/1.1", True)
    head = resp.head(status, [])
    assert b"Transfer-Encoding" not in head
    assert b"Content-Length" not in head
    assert framed(resp, b"ignored") == b""
    assert resp.keep_alive is True
    assert resp.status_code == int(status[:3])


# --- Content-Length given by the app -----------------------------------------


def test_excess_body_is_truncated_and_connection_closed() -> None:
    resp = Response("GET", "HTTP/1.1", True)
    resp.head("200 OK", [("Content-Length", "5")])
    assert resp.body(b"hel") == b"hel"
    assert resp.keep_alive is True
    assert resp.body(b"loEXTRA") == b"lo"
    assert resp.keep_alive is False
    assert resp.body(b"more") == b""
    assert resp.end() == b""
    assert resp.keep_alive is False


def test_short_body_closes_the_connection() -> None:
    resp = Response("GET", "HTTP/1.1", True)
    resp.head("200 OK", [("Content-Length", "10")])
    assert resp.body(b"abc") == b"abc"
    assert resp.keep_alive is True
    assert resp.end() == b""
    assert resp.keep_alive is False


def test_exact_body_keeps_the_connection() -> None:
    resp = Response("GET", "HTTP/1.1", True)
    resp.head("200 OK", [("Content-Length", "6")])
    assert framed(resp, b"abc", b"", b"def") == b"abcdef"
    assert resp.keep_alive is True


def test_zero_length_body() -> None:
    resp = Response("GET", "HTTP/1.1", True)
    resp.head("200 OK", [("Content-Length", "0")])
    assert framed(resp) == b""
    assert resp.keep_alive is True


def test_repeated_equal_content_length_is_accepted() -> None:
    resp = Response("GET", "HTTP/1.1", True)
    resp.head("200 OK", [("Content-Length", "3"), ("content-length", "3")])
    assert framed(resp, b"abcd") == b"abc"


@pytest.mark.parametrize(
    "headers",
    [
        [("Content-Length", "")],
        [("Content-Length", "-1")],
        [("Content-Length", "1.5")],
        [("Content-Length", "0x10")],
        [("Content-Length", "1 2")],
        [("Content-Length", "\xb2")],  # '²': isdigit() but not a number int() reads
        [("Content-Length", "\u0663")],  # Arabic-Indic digit three
        [("Content-Length", "3"), ("Content-Length", "4")],
    ],
)
def test_bad_content_length_is_refused(headers: list[tuple[str, str]]) -> None:
    with pytest.raises(LocalProtocolError):
        Response("GET", "HTTP/1.1", True).head("200 OK", headers)


# --- Connection header from the app ------------------------------------------


def test_app_connection_close_is_honoured() -> None:
    resp = Response("GET", "HTTP/1.1", True)
    head = resp.head("200 OK", [("Connection", "close"), ("Content-Length", "1")])
    assert resp.keep_alive is False
    assert head.count(b"Connection") == 1
    assert b"Connection: close\r\n" in head


def test_app_connection_close_token_in_list() -> None:
    resp = Response("GET", "HTTP/1.1", True)
    resp.head("200 OK", [("connection", "Foo, Close")])
    assert resp.keep_alive is False


def test_app_connection_keep_alive_cannot_override_request() -> None:
    resp = Response("GET", "HTTP/1.0", False)
    head = resp.head("200 OK", [("Connection", "keep-alive"), ("Content-Length", "1")])
    assert resp.keep_alive is False
    assert b"Connection: keep-alive" not in head


# --- header validation -------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["X-Bad\r\nInjected", "X-Bad\n", "X Bad", "X:Bad", "", "X-\u00e9", "X-\x00"]
)
def test_invalid_header_names(name: str) -> None:
    with pytest.raises(LocalProtocolError):
        Response("GET", "HTTP/1.1", True).head("200 OK", [(name, "v")])


@pytest.mark.parametrize("value", ["a\r\nSet-Cookie: x=1", "a\rb", "a\nb", "a\x00b"])
def test_cr_lf_nul_in_values(value: str) -> None:
    with pytest.raises(LocalProtocolError) as exc_info:
        Response("GET", "HTTP/1.1", True).head("200 OK", [("X-Test", value)])
    assert exc_info.value.status_hint == 500


def test_non_latin1_value_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        Response("GET", "HTTP/1.1", True).head("200 OK", [("X-Test", "\u20ac")])


def test_latin1_value_is_encoded_as_latin1() -> None:
    head = Response("GET", "HTTP/1.1", True).head("200 OK", [("X-Test", "caf\xe9")])
    assert b"X-Test: caf\xe9\r\n" in head


@pytest.mark.parametrize(
    "item",
    [("X", 1), (b"X", "v"), ("X", b"v"), ["X", "v"], ("X", "v", "w"), ("X",), "X: v"],
)
def test_header_items_must_be_str_pairs(item: object) -> None:
    with pytest.raises(LocalProtocolError):
        Response("GET", "HTTP/1.1", True).head("200 OK", [item])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "name",
    [
        "Transfer-Encoding",
        "transfer-encoding",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Upgrade",
        "Proxy-Authenticate",
        "Proxy-Authorization",
    ],
)
def test_hop_by_hop_headers_are_refused(name: str) -> None:
    with pytest.raises(LocalProtocolError):
        Response("GET", "HTTP/1.1", True).head("200 OK", [(name, "x")])


@pytest.mark.parametrize(
    "status", ["200", "200OK", "99 Low", "1000 Big", "abc OK", "200 OK\r\nX: y", "", " 200 OK"]
)
def test_invalid_status(status: str) -> None:
    with pytest.raises(LocalProtocolError):
        Response("GET", "HTTP/1.1", True).head(status, [])


def test_status_with_empty_reason_is_fine() -> None:
    assert Response("GET", "HTTP/1.1", True).head("200 ", []).startswith(b"HTTP/1.1 200 \r\n")


def test_non_latin1_reason_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        Response("GET", "HTTP/1.1", True).head("200 \u2713", [])


# --- Date and Server ---------------------------------------------------------


def test_date_and_server_added_when_missing() -> None:
    lines = head_lines(Response("GET", "HTTP/1.1", True, b"m2gate").head("200 OK", []))
    dates = [line for line in lines if line.startswith(b"Date: ")]
    assert len(dates) == 1
    assert re.fullmatch(rb"Date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", dates[0])
    assert b"Server: m2gate" in lines


def test_date_and_server_from_app_are_kept_alone() -> None:
    resp = Response("GET", "HTTP/1.1", True, b"m2gate")
    lines = head_lines(resp.head("200 OK", [("date", DATE[6:].decode()), ("SERVER", "app")]))
    assert [line for line in lines if line.lower().startswith(b"date:")] == [b"date: " + DATE[6:]]
    assert [line for line in lines if line.lower().startswith(b"server:")] == [b"SERVER: app"]


def test_no_server_header_without_server_name() -> None:
    head = Response("GET", "HTTP/1.1", True).head("200 OK", [])
    assert b"Server:" not in head


def test_http_date_format() -> None:
    assert re.fullmatch(rb"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", http_date())


def test_header_order_is_kept_and_head_sent_flag() -> None:
    resp = Response("GET", "HTTP/1.1", True)
    assert resp.head_sent is False
    lines = head_lines(resp.head("200 OK", [("B", "1"), ("A", "2"), ("B", "3")]))
    assert lines[1:4] == [b"B: 1", b"A: 2", b"B: 3"]
    assert resp.head_sent is True


def test_abort_forbids_reuse() -> None:
    resp = Response("GET", "HTTP/1.1", True)
    resp.head("200 OK", [("Content-Length", "1")])
    resp.abort()
    assert resp.keep_alive is False


# --- simple_response ---------------------------------------------------------


def test_simple_response() -> None:
    data, keep_alive = simple_response("404 Not Found", b"nope", "HTTP/1.1", True, b"m2gate")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 404 Not Found"
    assert b"Content-Type: text/plain; charset=utf-8" in lines
    assert b"Content-Length: 4" in lines
    assert b"Server: m2gate" in lines
    assert body == b"nope"
    assert keep_alive is True


def test_simple_response_http10_without_keep_alive() -> None:
    data, keep_alive = simple_response("500 Internal Server Error", b"", "HTTP/1.0", False)
    assert b"Content-Length: 0\r\n" in data
    assert b"Connection: close\r\n" in data
    assert data.endswith(b"\r\n\r\n")
    assert keep_alive is False


# --- validated status lines and headers are cached: the second use is the same


def test_cached_head_is_byte_identical_and_keeps_framing() -> None:
    headers = [("Content-Type", "text/plain"), ("Content-Length", "5"), ("X-A", "1")]
    first = Response("GET", "HTTP/1.1", True, b"m2gate")
    second = Response("GET", "HTTP/1.1", True, b"m2gate")
    assert first.head("201 Made", headers) == second.head("201 Made", list(headers))
    assert (second.status_code, framed(second, b"hello"), second.keep_alive) == (
        201,
        b"hello",
        True,
    )


def test_cached_content_length_still_checked_against_a_second_one() -> None:
    Response("GET", "HTTP/1.1", True).head("200 OK", [("Content-Length", "5")])
    with pytest.raises(LocalProtocolError):
        Response("GET", "HTTP/1.1", True).head(
            "200 OK", [("Content-Length", "5"), ("Content-Length", "6")]
        )


def test_cached_connection_close_still_ends_the_connection() -> None:
    for _ in range(2):
        resp = Response("GET", "HTTP/1.1", True)
        lines = head_lines(resp.head("200 OK", [("Connection", "close"), ("Content-Length", "0")]))
        assert b"Connection: close" in lines and not resp.keep_alive


def test_cached_date_and_server_still_suppress_ours() -> None:
    headers = [("Date", "Sun, 06 Nov 1994 08:49:37 GMT"), ("Server", "app/1")]
    for _ in range(2):
        lines = head_lines(Response("GET", "HTTP/1.1", True, b"m2gate").head("200 OK", headers))
        assert [line for line in lines if line.startswith((b"Date", b"Server"))] == [
            DATE,
            b"Server: app/1",
        ]


def test_refused_headers_are_never_cached() -> None:
    bad = ("X-Bad", "a\r\nInjected: yes")
    for _ in range(2):
        with pytest.raises(LocalProtocolError):
            Response("GET", "HTTP/1.1", True).head("200 OK", [bad])


def test_unhashable_header_item_is_refused_not_crashing() -> None:
    with pytest.raises(LocalProtocolError):
        Response("GET", "HTTP/1.1", True).head("200 OK", [("X", ["v"])])  # type: ignore[list-item]


def test_str_subclass_status_and_headers_frame_like_str() -> None:
    class S(str):
        pass

    plain = Response("GET", "HTTP/1.1", True).head("200 OK", [("X-S", "v")])
    sub = Response("GET", "HTTP/1.1", True).head(S("200 OK"), [(S("X-S"), S("v"))])
    assert sub == plain


def test_header_cache_stays_bounded_under_unique_values() -> None:
    from m2gate.protocol import http

    for i in range(http._CACHE_MAX + 10):
        Response("GET", "HTTP/1.1", True).head("200 OK", [("ETag", '"%d"' % i)])
    assert len(http._HEADER_LINES) <= http._CACHE_MAX
    lines = head_lines(Response("GET", "HTTP/1.1", True).head("200 OK", [("ETag", '"0"')]))
    assert lines[:2] == [b"HTTP/1.1 200 OK", b'ETag: "0"']


# --- error_response / Response.error -----------------------------------------------


def test_error_response_matches_simple_response_with_the_reason_as_body() -> None:
    data, keep = error_response("503 Service Unavailable", "HTTP/1.1")
    expected, _ = simple_response(
        "503 Service Unavailable", b"Service Unavailable\n", "HTTP/1.1", False, SERVER_HEADER
    )
    assert (data, keep) == (expected, False)


def test_error_response_to_head_is_the_head_only() -> None:
    data, keep = error_response("500 Internal Server Error", "HTTP/1.1", True, "HEAD")
    assert data.endswith(b"\r\n\r\n") and b"Content-Length: 22\r\n" in data
    assert data.count(b"\r\n\r\n") == 1 and keep


def test_response_error_before_the_head_replaces_the_response() -> None:
    resp = Response("GET", "HTTP/1.1", True, b"srv")
    payload = resp.error("400 Bad Request")
    assert payload is not None and payload.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert payload.endswith(b"\r\n\r\nBad Request\n")
    assert resp.status_code == 400 and resp.keep_alive


def test_response_error_after_the_head_means_cut() -> None:
    resp = Response("GET", "HTTP/1.1", True, b"srv")
    resp.head("200 OK", [])
    assert resp.error("500 Internal Server Error") is None
    assert resp.status_code == 200 and not resp.keep_alive
