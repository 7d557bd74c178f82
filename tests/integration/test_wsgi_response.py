"""Responses on the wire: framing, keep-alive, errors, close(), via a real Mongrel2."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from wsgi_http import (
    RawClient,
    raw_get,
    read_events,
    wait_for_event,
)

from m2gate.testing.mongrel2 import Mongrel2

pytestmark = pytest.mark.integration

Start = Any


STREAM_BODY = b"".join(b"chunk %d;" % i for i in range(5))


def test_generator_is_chunked_on_http11(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    with RawClient(mongrel2.port) as client:
        client.request("GET", "/stream?n=5&sleep=0.02&id=s1")
        resp = client.read_response()
    assert resp.status == 200
    assert b"\r\nTransfer-Encoding: chunked\r\n" in resp.head_bytes
    assert resp.header("Content-Length") is None
    assert resp.framing == "chunked" and resp.complete
    assert resp.body == STREAM_BODY
    assert resp.header("Date")
    assert (resp.header("Server") or "").startswith("m2gate/")


def test_generator_with_requests_client(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    resp = requests.get(mongrel2.url + "/stream?n=50", stream=True, timeout=10)
    assert resp.headers["Transfer-Encoding"] == "chunked"
    assert b"".join(resp.iter_content(None)) == b"".join(b"chunk %d;" % i for i in range(50))


def test_generator_on_http10_is_close_delimited(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    with RawClient(mongrel2.port) as client:
        client.request("GET", "/stream?n=5", version="HTTP/1.0")
        resp = client.read_response()
        assert resp.framing == "close"
        assert resp.body == STREAM_BODY
        assert resp.header("Transfer-Encoding") is None
        assert client.eof


def test_write_callable(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    with RawClient(mongrel2.port) as client:
        client.request("GET", "/write")
        resp = client.read_response()
        assert resp.framing == "chunked"
        assert resp.body == b"written-1;written-2;returned-3;"
        # The connection stays usable.
        client.request("GET", "/id?id=after-write")
        assert client.read_response().body.startswith(b"id=after-write ")


def test_exc_info_replaces_unsent_headers(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    resp = requests.get(mongrel2.url + "/exc-info", timeout=10)
    assert resp.status_code == 503
    assert resp.content == b"app error page"


def test_head_has_headers_only(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    get = raw_get(mongrel2.port, "/status?code=200")
    assert get.body == b"status 200"
    with RawClient(mongrel2.port) as client:
        client.request("HEAD", "/status?code=200")
        head = client.read_response("HEAD")
        assert head.status == 200
        assert head.header("Content-Length") == "10"
        client.request("HEAD", "/stream?n=3&id=h1")
        streamed = client.read_response("HEAD")
        assert streamed.status == 200
        assert streamed.header("Content-Length") is None
        # Had any body bytes been sent, they would be read as the next status line.
        client.request("GET", "/id?id=after-head")
        after = client.read_response()
        assert after.status == 200 and after.body.startswith(b"id=after-head ")
        assert not client.closed_by_server(0.2)
        assert client.buf == b""


def test_head_through_requests(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    with requests.Session() as session:
        resp = session.head(mongrel2.url + "/write", timeout=10)
        assert resp.status_code == 200 and resp.content == b""
        assert session.get(mongrel2.url + "/write", timeout=10).content.startswith(b"written")


@pytest.mark.parametrize("code", [204, 304])
def test_bodyless_status(mongrel2: Mongrel2, wsgi: Start, code: int) -> None:
    wsgi()
    with RawClient(mongrel2.port) as client:
        client.request("GET", "/status?code=%d" % code)
        resp = client.read_response()
        assert resp.status == code
        assert resp.header("Transfer-Encoding") is None
        client.request("GET", "/id?id=next")
        assert client.read_response().body.startswith(b"id=next ")


# -- keep-alive and closing ----------------------------------------------------


def test_http10_connection_closed_after_response(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    with RawClient(mongrel2.port) as client:
        client.request("GET", "/id?id=10", version="HTTP/1.0")
        resp = client.read_response()
        assert resp.body.startswith(b"id=10 ")
        assert resp.header("Connection") == "close"
        assert client.closed_by_server()


def test_http10_keep_alive_when_asked(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    with RawClient(mongrel2.port) as client:
        for i in range(3):
            client.request(
                "GET", "/id?id=k%d" % i, headers=[("Connection", "keep-alive")], version="HTTP/1.0"
            )
            resp = client.read_response()
            assert resp.body.startswith(b"id=k%d " % i)
            assert resp.header("Connection") == "keep-alive"
        assert not client.closed_by_server(0.2)


def test_http11_keep_alive_many_requests_one_connection(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    conn_ids = set()
    with RawClient(mongrel2.port) as client:
        for i in range(60):
            target = (
                "/environ?i=%d" % i if i % 3 == 0 else "/stream?n=2" if i % 3 == 1 else "/write"
            )
            client.request("GET", target)
            resp = client.read_response()
            assert resp.status == 200, i
            if i % 3 == 0:
                env = resp.json()
                assert env["QUERY_STRING"] == "i=%d" % i
                conn_ids.add(env["m2gate.conn_id"])
        assert not client.closed_by_server(0.2)
    assert len(conn_ids) == 1


def test_http11_pipelined_requests_answered_in_order(mongrel2: Mongrel2, wsgi: Start) -> None:
    """Back-to-back requests on one socket, the first one slow, with 4 threads."""
    wsgi("--threads", "4")
    targets = ["/slow?t=0.3&id=p0"] + ["/id?id=p%d" % i for i in range(1, 8)]
    targets.insert(4, "/stream?n=3&id=p-stream")
    with RawClient(mongrel2.port) as client:
        client.send(
            b"".join(("GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % t).encode() for t in targets)
        )
        bodies = [client.read_response().body for _ in targets]
    assert bodies[0] == b"slow done p0"
    assert bodies[4] == b"chunk 0;chunk 1;chunk 2;"
    ids = [b.split(b" ")[0] for i, b in enumerate(bodies) if i not in (0, 4)]
    assert ids == [b"id=p%d" % i for i in range(1, 8)]


def test_pipelined_close_stops_after_that_request(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    with RawClient(mongrel2.port) as client:
        client.send(
            b"GET /id?id=a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /id?id=b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            b"GET /id?id=c HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert client.read_response().body.startswith(b"id=a ")
        second = client.read_response()
        assert second.body.startswith(b"id=b ")
        assert second.header("Connection") == "close"
        assert client.closed_by_server()
        assert client.buf == b""  # nothing for c


def test_connection_close_honoured(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    for target in ("/id?id=c1", "/stream?n=4", "/write"):
        with RawClient(mongrel2.port) as client:
            client.request("GET", target, headers=[("Connection", "close")])
            resp = client.read_response()
            assert resp.status == 200 and resp.complete
            assert resp.header("Connection") == "close"
            assert client.closed_by_server(), target


# -- app errors ----------------------------------------------------------------


def test_app_exception_is_500_and_next_request_fine(mongrel2: Mongrel2, wsgi: Start) -> None:
    server = wsgi()
    with requests.Session() as session:
        for _ in range(3):
            resp = session.get(mongrel2.url + "/error", timeout=10)
            assert resp.status_code == 500
            assert b"Traceback" not in resp.content and b"boom" not in resp.content
            ok = session.get(mongrel2.url + "/id?id=fine", timeout=10)
            assert ok.status_code == 200 and ok.text.startswith("id=fine ")
    assert "boom before start_response" in server.output  # logged, with its traceback


def test_exception_in_first_chunk_is_500(mongrel2: Mongrel2, wsgi: Start, events: Path) -> None:
    wsgi()
    with RawClient(mongrel2.port) as client:
        client.request("GET", "/error-iter?id=e1")
        assert client.read_response().status == 500
        client.request("GET", "/id?id=after")
        assert client.read_response().body.startswith(b"id=after ")
    assert wait_for_event(events, "close e1")


def test_exception_after_headers_closes_connection(
    mongrel2: Mongrel2, wsgi: Start, events: Path
) -> None:
    wsgi()
    with RawClient(mongrel2.port) as client:
        client.request("GET", "/error-after?id=e2")
        resp = client.read_response()
        assert resp.status == 200
        assert resp.framing == "chunked"
        assert not resp.complete  # no terminating chunk: the client can tell
        assert resp.body == b"first part;"
        assert client.closed_by_server()
    assert wait_for_event(events, "close e2")
    assert raw_get(mongrel2.port, "/id?id=next").body.startswith(b"id=next ")


def test_exception_after_headers_http10(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    with RawClient(mongrel2.port) as client:
        client.request("GET", "/error-after?id=e3", version="HTTP/1.0")
        resp = client.read_response()
        assert resp.body == b"first part;"
        assert client.eof


def test_exc_info_after_headers_closes_connection(
    mongrel2: Mongrel2, wsgi: Start, events: Path
) -> None:
    wsgi()
    with RawClient(mongrel2.port) as client:
        client.request("GET", "/exc-info-late?id=late")
        resp = client.read_response()
        assert resp.status == 200
        assert resp.body == b"partial;" and not resp.complete
        assert client.closed_by_server()
    assert wait_for_event(events, "close late")


def test_content_length_respected(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    with RawClient(mongrel2.port) as client:
        client.request("GET", "/length?promise=10&actual=10")
        resp = client.read_response()
        assert resp.framing == "length" and resp.body == b"xxxxxyyyyy"
        assert resp.header("Transfer-Encoding") is None
        client.request("GET", "/id?id=same-connection")
        assert client.read_response().body.startswith(b"id=same-connection ")


@pytest.mark.parametrize(("promise", "actual"), [(10, 4), (10, 30)], ids=["short", "long"])
def test_content_length_mismatch_closes_connection(
    mongrel2: Mongrel2, wsgi: Start, promise: int, actual: int
) -> None:
    """Fewer bytes than promised, or more: only closing keeps the client in sync."""
    wsgi()
    with RawClient(mongrel2.port) as client:
        client.request("GET", "/length?promise=%d&actual=%d" % (promise, actual))
        head = client._read_until(b"\r\n\r\n")
        assert head is not None and b"Content-Length: %d\r\n" % promise in head
        while client._fill():
            pass
        assert len(client.buf) == min(promise, actual)  # never more than promised
        assert client.eof


def test_file_wrapper(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    resp = requests.get(mongrel2.url + "/file?blocks=300", timeout=10)
    assert resp.status_code == 200
    assert len(resp.content) == 300_000
    assert hashlib.sha256(resp.content).hexdigest() == resp.headers["X-Sha256"]


def test_non_latin1_response_header_is_500(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    with RawClient(mongrel2.port) as client:
        client.request("GET", "/header?value=%E2%82%AC")  # the euro sign
        resp = client.read_response()
        assert resp.status == 500
        assert resp.header("X-Echo") is None
        client.request("GET", "/header?value=caf%C3%A9")  # latin-1 is fine
        ok = client.read_response()
        assert ok.status == 200
        assert ok.header("X-Echo") == "caf\u00e9"


@pytest.mark.parametrize("value", ["a%0D%0AX-Injected: yes", "a%0AX-Injected: yes", "a%0Db"])
def test_crlf_in_response_header_is_500_no_injection(
    mongrel2: Mongrel2, wsgi: Start, value: str
) -> None:
    # The validator would refuse the header itself, so this runs the bare app.
    wsgi(app="wsgi_probe:raw")
    with RawClient(mongrel2.port) as client:
        client.request("GET", "/header?value=" + value.replace(" ", "%20"))
        resp = client.read_response()
        assert resp.status == 500
        assert b"X-Injected" not in resp.head_bytes + resp.body
        assert resp.header("X-Echo") is None
        client.request("GET", "/id?id=fine")
        assert client.read_response().body.startswith(b"id=fine ")


def test_worker_survives_many_bad_requests(mongrel2: Mongrel2, wsgi: Start) -> None:
    """A run of failing requests of every kind, then normal service."""
    wsgi("--threads", "2")
    for _ in range(5):
        for target in ("/error", "/error-iter", "/error-after", "/header?value=%E2%82%AC"):
            with RawClient(mongrel2.port) as client:
                client.request("GET", target, headers=[("Connection", "close")])
                try:
                    client.read_response()
                except ConnectionError:
                    pass
        # Garbage that Mongrel2 itself rejects must not reach or harm us.
        with RawClient(mongrel2.port) as client:
            client.send(b"\x00\xffNOT HTTP\r\n\r\n")
            client.closed_by_server()
    resp = requests.get(mongrel2.url + "/id?id=alive", timeout=10)
    assert resp.status_code == 200 and resp.text.startswith("id=alive ")


# -- close() of the app iterable ---------------------------------------------


def test_close_called_on_normal_and_head(mongrel2: Mongrel2, wsgi: Start, events: Path) -> None:
    wsgi()
    with RawClient(mongrel2.port) as client:
        client.request("GET", "/stream?n=2&id=c-get")
        client.read_response()
        client.request("HEAD", "/stream?n=2&id=c-head")
        client.read_response("HEAD")
        client.request("GET", "/big?size=100000&chunk=1000&id=c-big")
        assert len(client.read_response().body) == 100000
    assert wait_for_event(events, "close c-get")
    assert wait_for_event(events, "close c-head")
    assert wait_for_event(events, "close c-big")


def test_close_called_when_client_disconnects_mid_stream(
    mongrel2: Mongrel2, wsgi: Start, events: Path
) -> None:
    wsgi("--threads", "2")
    with RawClient(mongrel2.port) as client:
        client.request("GET", "/forever?id=gone&max=60")
        resp_head = client.sock.recv(65536)
        assert resp_head.startswith(b"HTTP/1.1 200 ")
        received = len(resp_head)
        while received < 1_000_000:
            received += len(client.sock.recv(65536))
    # The client is gone: Mongrel2 tells m2gate, which stops the app and closes it.
    assert wait_for_event(events, "close gone", timeout=20), read_events(events)
    # And the worker is free for the next request.
    assert raw_get(mongrel2.port, "/id?id=after").body.startswith(b"id=after ")


def test_close_called_when_pipelined_requests_dropped(
    mongrel2: Mongrel2, wsgi: Start, events: Path
) -> None:
    """A client that leaves with requests queued: the one in flight is still closed."""
    wsgi()
    with RawClient(mongrel2.port) as client:
        client.send(
            b"GET /stream?n=20&sleep=0.05&id=q0 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /stream?n=2&id=q1 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        time.sleep(0.1)
    assert wait_for_event(events, "close q0", timeout=20)
    time.sleep(0.3)
    started = read_events(events)
    # q1 was never started, or if it was, it was closed as well.
    assert ("start q1" in started) == ("close q1" in started)
