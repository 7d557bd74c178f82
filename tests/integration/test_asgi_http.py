"""ASGI http and lifespan through a real Mongrel2, with a real Starlette app."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from wsgi_http import RawClient, read_events

from m2gate.testing.mongrel2 import HandlerSpec, Mongrel2
from support import wait_until

pytestmark = pytest.mark.integration

APP = "starlette_app:app"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """Directory the app writes its side effects to."""
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def asgi(m2gate_server: Any, state: Path) -> Callable[..., Any]:
    """``asgi(*args)`` serves the Starlette test app; ``auto=True``: no --interface."""

    def start(*args: str, auto: bool = False, **kwargs: Any) -> Any:
        env = {"M2GATE_TEST_STATE": str(state), **kwargs.pop("env", {})}
        if not auto and "--interface" not in args:
            args = ("--interface", "asgi", *args)
        return m2gate_server(kwargs.pop("app", APP), *args, env=env, **kwargs)

    return start


def test_routes_and_scope(mongrel2: Mongrel2, asgi: Any) -> None:
    asgi()
    with httpx.Client(base_url=mongrel2.url, timeout=10) as client:
        assert client.get("/").text == "hello, world\n"
        assert client.get("/missing").status_code == 404
        resp = client.get("/scope?a=1&b=%20x", headers={"X-Twice": "1"})
    scope = resp.json()
    assert scope["method"] == "GET"
    assert scope["path"] == "/scope"
    assert scope["raw_path"] == "/scope"
    assert scope["root_path"] == ""
    assert scope["query_string"] == "a=1&b=%20x"
    assert ["x-twice", "1"] in scope["headers"]
    assert all(name == name.lower() for name, _ in scope["headers"])
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == ["127.0.0.1", mongrel2.port]
    assert scope["scheme"] == "http"
    assert scope["http_version"] == "1.1"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["state"] == "yes"  # from the lifespan's state
    assert resp.headers["server"].startswith("m2gate/")


def test_percent_encoded_path_is_decoded_raw_path_kept(mongrel2: Mongrel2, asgi: Any) -> None:
    asgi()
    scope = httpx.get(mongrel2.url + "/sc%6Fpe", timeout=10).json()
    assert scope["path"] == "/scope"
    assert scope["raw_path"] == "/sc%6Fpe"
    assert httpx.get(mongrel2.url + "/sub/hel%6Co", timeout=10).json() == {
        "root_path": "/sub",  # Starlette's Mount extends it
        "path": "/sub/hello",
    }


def test_root_path_from_the_mongrel2_route(mongrel2_factory: Any, asgi: Any) -> None:
    m2 = mongrel2_factory(handlers=[HandlerSpec(route="/api/")])
    asgi(m2=m2, ready_path="/api/")
    resp = httpx.get(m2.url + "/api/scope", timeout=10).json()
    assert resp["root_path"] == "/api"
    assert resp["path"] == "/api/scope"
    assert resp["url"].endswith("/api/scope")


def test_request_body_and_head(mongrel2: Mongrel2, asgi: Any) -> None:
    asgi()
    body = bytes(range(256)) * 40  # 10 KB, inline in the Mongrel2 message
    with httpx.Client(base_url=mongrel2.url, timeout=10) as client:
        resp = client.post("/echo", content=body)
        assert resp.status_code == 200
        assert resp.content == body
        head = client.head("/")
        assert head.status_code == 200
        assert head.headers["content-length"] == "13"
        assert head.content == b""
        assert client.get("/").text == "hello, world\n"  # same connection still in sync


def test_app_error_is_a_500_and_logged(mongrel2: Mongrel2, asgi: Any) -> None:
    server = asgi()
    with httpx.Client(base_url=mongrel2.url, timeout=10) as client:
        assert client.get("/boom").status_code == 500
        assert client.get("/").status_code == 200
    assert "RuntimeError: boom" in server.output


def test_streaming_response_is_chunked(mongrel2: Mongrel2, asgi: Any) -> None:
    asgi()
    with RawClient(mongrel2.port) as client:
        client.request("GET", "/stream?n=5")
        resp = client.read_response()
        assert resp.framing == "chunked" and resp.complete
        assert resp.body == b"".join(b"%d:xxxxxxxxxx\n" % i for i in range(5))
        # keep-alive: the next request on the same connection is answered too
        client.request("GET", "/")
        assert client.read_response().body == b"hello, world\n"


def test_big_stream_is_coalesced(mongrel2: Mongrel2, asgi: Any, state: Path) -> None:
    """20,000 small chunks become so few messages that Mongrel2 never holds 16 of them.

    Mongrel2 drops a connection with more than 16 replies queued. The client
    reads nothing until the app has yielded its last chunk, so every message
    queues at Mongrel2 (or in the socket buffers): only messages that grow
    with the body, as the writer makes them, fit. The flush timer is set far
    out of the way: with the default 5 ms, how many messages a stream makes
    depends on how fast the app runs (which a loaded machine decides), and a
    client that stalls while they queue is dropped; the timer's own flushes
    are tested by the streaming tests above.
    """
    asgi("--flush-interval", "60")
    expected = sum(len(b"%d:" % i) + 1001 for i in range(20000))
    total = 0
    url = mongrel2.url + "/stream?n=20000&size=1000&record=big"
    with httpx.stream("GET", url, timeout=60) as resp:
        ended = wait_until(lambda: read_events(state / "big"), "the stream's end", timeout=60)
        assert ended == ["done"]  # "stopped": Mongrel2 dropped the connection
        for chunk in resp.iter_bytes():
            total += len(chunk)
    assert total == expected


def test_http10_stream_is_close_delimited(mongrel2: Mongrel2, asgi: Any) -> None:
    asgi()
    with RawClient(mongrel2.port) as client:
        client.request("GET", "/stream?n=3", version="HTTP/1.0")
        resp = client.read_response()
        assert resp.framing == "close"
        assert resp.body.startswith(b"0:") and client.eof


def test_pipelined_requests_answered_in_order(mongrel2: Mongrel2, asgi: Any) -> None:
    asgi()
    with RawClient(mongrel2.port) as client:
        client.send(
            b"GET /slow?s=0.3&i=first HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /slow?s=0&i=second HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert client.read_response().body == b"slow first\n"
        assert client.read_response().body == b"slow second\n"


def test_connection_close_is_honoured(mongrel2: Mongrel2, asgi: Any) -> None:
    asgi()
    with RawClient(mongrel2.port) as client:
        client.request("GET", "/", headers=[("Connection", "close")])
        resp = client.read_response()
        assert resp.header("Connection") == "close"
        assert client.closed_by_server()


def test_sse_stops_when_client_goes_away(mongrel2: Mongrel2, asgi: Any, state: Path) -> None:
    server = asgi()
    log = state / "sse1"
    with httpx.stream("GET", mongrel2.url + "/events?name=sse1", timeout=10) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        seen = []
        for line in resp.iter_lines():
            if line.startswith("data:"):
                seen.append(line)
            if len(seen) == 3:
                break
    # The client is gone: the generator must end, not run forever.
    wait_until(lambda: "stopped" in read_events(log), "the generator to stop", timeout=10)
    sent = [e for e in read_events(log) if e.startswith("sent")]
    time.sleep(0.3)
    assert [e for e in read_events(log) if e.startswith("sent")] == sent
    assert seen == ["data: event 1", "data: event 2", "data: event 3"]
    assert server.stop() == 0
    assert "1 client(s) gone mid-request" in server.output  # counted


def test_200_concurrent_requests_one_process(mongrel2: Mongrel2, asgi: Any) -> None:
    asgi()

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=mongrel2.url, timeout=60, limits=limits) as client:
            return await asyncio.gather(
                *(client.get("/slow", params={"s": "0.5", "i": str(i)}) for i in range(200))
            )

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 200
    assert [r.text for r in responses] == ["slow %d\n" % i for i in range(200)]
    # The app saw many of them at once: they overlapped in one process.
    peak = httpx.get(mongrel2.url + "/inflight", timeout=10).json()["max"]
    assert peak >= 50


def test_interface_autodetected(mongrel2: Mongrel2, asgi: Any) -> None:
    """No --interface: a Starlette app (async __call__) is served as ASGI."""
    server = asgi(auto=True)
    assert httpx.get(mongrel2.url + "/", timeout=10).text == "hello, world\n"
    assert "(ASGI)" in server.output


def test_lifespan_startup_and_shutdown(mongrel2: Mongrel2, asgi: Any, state: Path) -> None:
    server = asgi()
    assert read_events(state / "lifespan") == ["startup"]
    assert server.stop() == 0
    assert read_events(state / "lifespan") == ["startup", "shutdown"]


def test_lifespan_startup_failure_exits_with_one_line(mongrel2: Mongrel2, asgi: Any) -> None:
    server = asgi(env={"M2GATE_TEST_FAIL_STARTUP": "1"}, wait=False)
    assert server.proc.wait(timeout=20) == 3  # like an app that fails to load
    errors = [line for line in server.output.splitlines() if "error" in line.lower()]
    assert errors == ["m2gate: error: lifespan startup failed: RuntimeError: database unreachable"]


def test_app_without_lifespan_support(mongrel2: Mongrel2, asgi: Any) -> None:
    server = asgi(app="asgi_bare:app")
    assert httpx.get(mongrel2.url + "/x?y=1", timeout=10).text == "bare /x y=1"
    assert server.stop() == 0


def test_interface_wsgi_is_honoured(mongrel2: Mongrel2, asgi: Any) -> None:
    """--interface wsgi really selects WSGI: called as one, the ASGI app fails (500)."""
    asgi("--interface", "wsgi")
    assert httpx.get(mongrel2.url + "/", timeout=10).status_code == 500


def test_upload_streams_from_the_temp_store(mongrel2: Mongrel2, asgi: Any) -> None:
    """A body over Mongrel2's content_length limit arrives as a temp file: hashed as it streams."""
    asgi("--upload-dir", str(mongrel2.upload_dir))
    body = hashlib.sha256(b"seed").digest() * (5 * 1024 * 1024 // 32)
    resp = httpx.post(mongrel2.url + "/sha256", content=body, timeout=60)
    assert resp.status_code == 200
    assert resp.json()["sha256"] == hashlib.sha256(body).hexdigest()
    assert resp.json()["size"] == len(body)
    wait_until(lambda: not list(mongrel2.upload_dir.iterdir()), "temp file removed", timeout=10)


def test_chunked_upload(mongrel2: Mongrel2, asgi: Any) -> None:
    asgi("--upload-dir", str(mongrel2.upload_dir))
    parts = [b"%d" % i * 1000 for i in range(100)]
    resp = httpx.post(mongrel2.url + "/sha256", content=iter(parts), timeout=60)
    assert resp.json()["sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


def test_forged_upload_header_is_refused(mongrel2: Mongrel2, asgi: Any) -> None:
    asgi("--upload-dir", str(mongrel2.upload_dir))
    resp = httpx.post(
        mongrel2.url + "/sha256",
        content=b"small",
        headers={"X-Mongrel2-Upload-Start": "/etc/passwd"},
        timeout=10,
    )
    assert resp.status_code == 400


@pytest.mark.mongrel2(settings={"download.flow_control": 1})
def test_stream_under_flow_control(mongrel2: Mongrel2, asgi: Any) -> None:
    """With credits, 5 MB goes out in windows Mongrel2 grants; none of it is lost."""
    asgi()
    expected = sum(len(b"%d:" % i) + 1001 for i in range(5000))
    total = 0
    with httpx.stream("GET", mongrel2.url + "/stream?n=5000&size=1000", timeout=60) as resp:
        for chunk in resp.iter_bytes():
            total += len(chunk)
    assert total == expected


def test_graceful_stop_finishes_requests_in_flight(mongrel2: Mongrel2, asgi: Any) -> None:
    server = asgi()

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(timeout=20) as client:
            pending = asyncio.ensure_future(client.get(mongrel2.url + "/slow?s=1&i=last"))
            await asyncio.sleep(0.3)
            server.signal(15)
            return await pending

    assert asyncio.run(go()).text == "slow last\n"
    assert server.proc.wait(timeout=20) == 0


def test_access_log(mongrel2: Mongrel2, asgi: Any, tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    server = asgi("--access-log", str(access))
    with httpx.Client(base_url=mongrel2.url, timeout=10) as client:
        client.get("/?q=1")
        client.get("/boom")
        client.get("/stream?n=2")
    server.stop()
    lines = access.read_text().splitlines()
    assert any('"GET /?q=1 HTTP/1.1" 200 13' in line for line in lines), lines
    assert any('"GET /boom HTTP/1.1" 500' in line for line in lines), lines
    assert any('"GET /stream?n=2 HTTP/1.1" 200 26' in line for line in lines), lines


@pytest.mark.mongrel2(settings={"limits.min_ping": 2, "limits.tick_timer": 1})
def test_long_poll_outlives_min_ping(mongrel2: Mongrel2, asgi: Any) -> None:
    """An answer that takes 3x Mongrel2's min_ping still arrives: ctl keep-alives meanwhile."""
    asgi("--idle-keepalive", "0.5")
    resp = httpx.get(mongrel2.url + "/slow?s=6&i=poll", timeout=30)
    assert resp.text == "slow poll\n"
