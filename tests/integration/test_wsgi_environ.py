"""The PEP 3333 environ as a validated app sees it, through a real Mongrel2."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from wsgi_http import RawClient, raw_get

from m2gate.testing.mongrel2 import HandlerSpec, Mongrel2

pytestmark = pytest.mark.integration

Start = Any  # the ``wsgi`` fixture's factory


def test_get_query_string_and_percent_encoded_path(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    # %C3%A9 is UTF-8 "é": PEP 3333 wants the bytes as latin-1 characters.
    # Raw bytes: requests would normalise %41 to "A" before sending.
    resp = raw_get(mongrel2.port, "/environ/caf%C3%A9/a%20b%2Fc?x=1&y=%41%20b+c&empty=&x=2")
    assert resp.status == 200
    env = resp.json()
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/environ/caf\u00c3\u00a9/a b/c"
    assert env["QUERY_STRING"] == "x=1&y=%41%20b+c&empty=&x=2"  # raw, not decoded
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.version"] == [1, 0]
    # wsgiref's validator is really in the path (it wraps both streams).
    assert (env["wsgi.input"], env["wsgi.errors"]) == ("<InputWrapper>", "<ErrorWrapper>")
    assert env["wsgi.multithread"] is False
    assert env["wsgi.multiprocess"] is False
    assert env["wsgi.run_once"] is False
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["SERVER_SOFTWARE"].startswith("m2gate/")
    assert "CONTENT_LENGTH" not in env or env["CONTENT_LENGTH"] in ("", "0")
    assert "HTTP_CONTENT_LENGTH" not in env and "HTTP_CONTENT_TYPE" not in env


def test_latin1_path_bytes_and_no_query(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    env = raw_get(mongrel2.port, "/environ/%FF%00x").json()
    assert env["PATH_INFO"] == "/environ/\u00ff\u0000x"
    assert env["QUERY_STRING"] == ""


def test_multithread_flag_follows_threads(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi("--threads", "3")
    env = requests.get(mongrel2.url + "/environ", timeout=10).json()
    assert env["wsgi.multithread"] is True
    assert env["wsgi.multiprocess"] is False


@pytest.mark.mongrel2(handlers=[HandlerSpec(route="/app/")])
def test_route_prefix_is_script_name(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi(ready_path="/app/")
    env = requests.get(mongrel2.url + "/app/environ/some/where?q=1", timeout=10).json()
    assert env["SCRIPT_NAME"] == "/app"
    assert env["PATH_INFO"] == "/environ/some/where"
    assert env["QUERY_STRING"] == "q=1"
    assert env["m2gate.pattern"] == "/app/"
    root = requests.get(mongrel2.url + "/app/", timeout=10).json()
    assert (root["SCRIPT_NAME"], root["PATH_INFO"]) == ("/app", "/")
    encoded = requests.get(mongrel2.url + "/app/environ/x%20y", timeout=10).json()
    assert (encoded["SCRIPT_NAME"], encoded["PATH_INFO"]) == ("/app", "/environ/x y")
    # Mongrel2 also routes the bare prefix here: PEP 3333 allows an empty PATH_INFO.
    bare = raw_get(mongrel2.port, "/app")
    assert bare.status == 404 and bare.body == b"not found: "


@pytest.mark.mongrel2(handlers=[HandlerSpec(route="/rx/(.*)")])
def test_pattern_route_prefix(mongrel2: Mongrel2, wsgi: Start) -> None:
    """A route with a pattern part: SCRIPT_NAME is its literal prefix."""
    wsgi(ready_path="/rx/environ")
    env = raw_get(mongrel2.port, "/rx/environ/deep?x=1").json()
    assert env["m2gate.pattern"] == "/rx/(.*)"
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/rx", "/environ/deep")


@pytest.mark.mongrel2(
    handlers=[HandlerSpec(route="/"), HandlerSpec(route="/api/v1/")],
)
def test_two_routes_two_workers(mongrel2: Mongrel2, wsgi: Start) -> None:
    """Each handler gets its own PATTERN, so its own SCRIPT_NAME."""
    wsgi(handler=mongrel2.handlers[0])
    wsgi(handler=mongrel2.handlers[1], ready_path="/api/v1/")
    root = requests.get(mongrel2.url + "/environ", timeout=10).json()
    api = requests.get(mongrel2.url + "/api/v1/environ", timeout=10).json()
    assert (root["SCRIPT_NAME"], root["PATH_INFO"]) == ("", "/environ")
    assert (api["SCRIPT_NAME"], api["PATH_INFO"]) == ("/api/v1", "/environ")


@pytest.mark.parametrize(
    ("host", "name", "port"),
    [
        ("example.com:8080", "example.com", "8080"),
        ("example.com", "example.com", "80"),
        ("[::1]:9000", "[::1]", "9000"),
    ],
)
def test_host_header_gives_server_name_and_port(
    mongrel2: Mongrel2, wsgi: Start, host: str, name: str, port: str
) -> None:
    wsgi()
    env = raw_get(mongrel2.port, "/environ", host=host).json()
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == (name, port)
    assert env["HTTP_HOST"] == host


def test_requests_host_is_the_listener(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    env = requests.get(mongrel2.url + "/environ", timeout=10).json()
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(mongrel2.port)


def test_no_host_falls_back_to_settings(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi("--server-name", "fallback.example", "--server-port", "8443")
    env = raw_get(mongrel2.port, "/environ", version="HTTP/1.0", host=None).json()
    assert env["SERVER_NAME"] == "fallback.example"
    assert env["SERVER_PORT"] == "8443"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert "HTTP_HOST" not in env


def test_no_host_default_fallback(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    env = raw_get(mongrel2.port, "/environ", version="HTTP/1.0", host=None).json()
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("localhost", "80")


def test_repeated_headers_joined(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    env = raw_get(
        mongrel2.port,
        "/environ",
        headers=[
            ("X-Multi", "one"),
            ("Accept", "text/plain"),
            ("x-multi", "two"),
            ("X-Multi", "three, four"),
            ("X-Dashed-Name", "d"),
        ],
    ).json()
    assert env["HTTP_X_MULTI"] == "one, two, three, four"
    assert env["HTTP_ACCEPT"] == "text/plain"
    assert env["HTTP_X_DASHED_NAME"] == "d"


def test_underscore_header_not_aliased(mongrel2: Mongrel2, wsgi: Start) -> None:
    """``X_Forged`` must not pose as ``X-Forged`` (CGI name collision)."""
    wsgi()
    env = raw_get(mongrel2.port, "/environ", headers=[("X_Forged", "evil")]).json()
    assert "HTTP_X_FORGED" not in env


def test_raw_latin1_header_bytes(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    # build_request encodes latin-1: these are the raw bytes 0xE9 and 0xC3 0xA9.
    env = raw_get(
        mongrel2.port,
        "/environ",
        headers=[("X-Latin", "caf\u00e9"), ("X-Utf8", "caf\u00c3\u00a9")],
    ).json()
    assert env["HTTP_X_LATIN"] == "caf\u00e9"
    assert env["HTTP_X_UTF8"] == "caf\u00c3\u00a9"


def test_remote_addr_ignores_forwarded_for_by_default(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    env = raw_get(mongrel2.port, "/environ", headers=[("X-Forwarded-For", "203.0.113.9")]).json()
    assert env["REMOTE_ADDR"] == "127.0.0.1"


@pytest.mark.mongrel2(settings={"no_clobber_xff": 1})
def test_remote_addr_from_trusted_forwarded_for(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi("--trust-x-forwarded-for")
    env = raw_get(
        mongrel2.port, "/environ", headers=[("X-Forwarded-For", "203.0.113.9, 10.0.0.1")]
    ).json()
    assert env["REMOTE_ADDR"] == "203.0.113.9"
    plain = raw_get(mongrel2.port, "/environ").json()
    assert plain["REMOTE_ADDR"] == "127.0.0.1"


# -- request bodies ------------------------------------------------------------


def test_small_post(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    resp = requests.post(
        mongrel2.url + "/echo",
        data={"a": "1", "b": "x y"},
        timeout=10,
    )
    data = resp.json()
    assert data["text"] == "a=1&b=x+y"
    assert data["content_type"] == "application/x-www-form-urlencoded"
    assert data["content_length"] == "9"
    assert data["after"] == ""  # reading past the end gives b""


def test_empty_post(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    data = requests.post(mongrel2.url + "/echo", data=b"", timeout=10).json()
    assert data["length"] == 0
    assert data["content_length"] in ("0", "")


@pytest.mark.parametrize("size", [20479, 20480])
def test_post_at_the_size_limit(mongrel2: Mongrel2, wsgi: Start, size: int) -> None:
    """20480 is Mongrel2's limits.content_length: the biggest inline body."""
    wsgi()
    body = os.urandom(size)
    resp = requests.post(
        mongrel2.url + "/echo",
        data=body,
        headers={"Content-Type": "application/octet-stream"},
        timeout=10,
    )
    assert resp.status_code == 200
    data = resp.json()
    assert data["length"] == size
    assert data["content_length"] == str(size)
    assert data["sha256"] == hashlib.sha256(body).hexdigest()


def test_post_just_over_the_limit_goes_through_upload(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi("--upload-dir", str(mongrel2.upload_dir))
    body = os.urandom(20481)
    resp = requests.post(mongrel2.url + "/echo", data=body, timeout=20)
    assert resp.status_code == 200
    data = resp.json()
    assert data["length"] == 20481
    assert data["sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_request_body(mongrel2: Mongrel2, wsgi: Start) -> None:
    """Mongrel2 spools any chunked body; the app still gets CONTENT_LENGTH and the bytes."""
    wsgi("--upload-dir", str(mongrel2.upload_dir))

    def gen() -> Iterator[bytes]:
        yield b"hello "
        yield b"chunked world"

    data = requests.post(mongrel2.url + "/echo", data=gen(), timeout=20).json()
    assert data["text"] == "hello chunked world"
    assert data["content_length"] == "19"


def test_input_readline_and_readlines(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi()
    resp = requests.post(mongrel2.url + "/lines", data=b"first\nsecond\nthird\nlast", timeout=10)
    assert resp.json() == ["first\n", "sec", "ond\n", "third\n", "last"]


def test_keep_alive_post_then_get(mongrel2: Mongrel2, wsgi: Start) -> None:
    """A body must not leak into the next request on the same connection."""
    wsgi()
    with RawClient(mongrel2.port) as client:
        client.request("POST", "/echo", body=b"0123456789")
        assert client.read_response().json()["length"] == 10
        client.request("GET", "/environ?after=post")
        env = client.read_response().json()
        assert env["QUERY_STRING"] == "after=post"
        assert env["REQUEST_METHOD"] == "GET"


# -- JSON and tnetstring handlers --------------------------------------------

VARYING = {"m2gate.sender", "m2gate.conn_id", "m2gate.pattern", "SCRIPT_NAME", "PATH_INFO"}


@pytest.mark.mongrel2(
    handlers=[
        HandlerSpec(route="/t/", protocol="tnetstring"),
        HandlerSpec(route="/j/", protocol="json"),
    ]
)
def test_json_and_tnetstring_protocols_same_environ(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi(handler=mongrel2.handlers[0], ready_path="/t/")
    wsgi(handler=mongrel2.handlers[1], ready_path="/j/")
    headers = [
        ("X-Multi", "a"),
        ("X-Multi", "b"),
        ("X-Latin", "caf\u00e9 \u00ff"),
        ("X-Quote", 'say "hi" \\ back'),
        ("Content-Type", "text/plain; charset=utf-8"),
    ]
    envs = {}
    for prefix in ("/t", "/j"):
        with RawClient(mongrel2.port) as client:
            client.request(
                "POST", prefix + "/environ/%C3%A9?q=%20&r", headers=headers, body=b"data"
            )
            envs[prefix] = client.read_response().json()
    tnet, json_env = envs["/t"], envs["/j"]
    assert tnet["SCRIPT_NAME"] == "/t" and json_env["SCRIPT_NAME"] == "/j"
    assert tnet["PATH_INFO"] == json_env["PATH_INFO"] == "/environ/\u00c3\u00a9"
    assert tnet["HTTP_X_LATIN"] == "caf\u00e9 \u00ff"
    assert tnet["HTTP_X_QUOTE"] == 'say "hi" \\ back'
    assert tnet["HTTP_X_MULTI"] == "a, b"
    assert tnet["CONTENT_TYPE"] == "text/plain; charset=utf-8"
    assert tnet["CONTENT_LENGTH"] == "4"
    assert {k: v for k, v in tnet.items() if k not in VARYING} == {
        k: v for k, v in json_env.items() if k not in VARYING
    }


@pytest.mark.mongrel2(handlers=[HandlerSpec(protocol="json")])
def test_json_protocol_bodies_pipelining_and_streaming(mongrel2: Mongrel2, wsgi: Start) -> None:
    """The JSON handler protocol through the paths that matter most."""
    wsgi("--threads", "4")
    body = os.urandom(20480)
    with RawClient(mongrel2.port) as client:
        client.send(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 20480\r\n\r\n"
            + body
            + b"GET /slow?t=0.2&id=j1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /stream?n=3 HTTP/1.1\r\nHost: x\r\n\r\n"
            b'GET /environ?j=%22q%22 HTTP/1.1\r\nHost: x\r\nX-Q: "\\\r\n\r\n'
        )
        echoed = client.read_response().json()
        assert echoed["sha256"] == hashlib.sha256(body).hexdigest()
        assert client.read_response().body == b"slow done j1"
        streamed = client.read_response()
        assert streamed.framing == "chunked" and streamed.body == b"chunk 0;chunk 1;chunk 2;"
        env = client.read_response().json()
        assert env["QUERY_STRING"] == "j=%22q%22"
        assert env["HTTP_X_Q"] == '"\\'
