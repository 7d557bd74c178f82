"""``--worker-class gevent`` through a real Mongrel2: many slow requests on one process.

The app (tests/apps/green.py) only calls ``time.sleep``; the worker's monkey
patching is what makes those sleeps overlap. Wall times are printed (run with
``-s``), never asserted: speed belongs to benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from m2gate.testing.mongrel2 import Mongrel2

pytestmark = pytest.mark.integration

GEVENT = ("--worker-class", "gevent")


async def _many_slow(url: str, count: int, seconds: float) -> list[tuple[int, str]]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    timeout = httpx.Timeout(60.0, pool=60.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def one(n: int) -> tuple[int, str]:
            resp = await client.get(url + "/sleep", params={"s": str(seconds), "n": str(n)})
            return resp.status_code, resp.text

        return await asyncio.gather(*(one(n) for n in range(count)))


def concurrent_slow_requests(
    mongrel2: Mongrel2, m2gate_server: Callable[..., Any], count: int, seconds: float
) -> float:
    m2gate_server("green:application", *GEVENT)
    started = time.monotonic()
    results = asyncio.run(_many_slow(mongrel2.url, count, seconds))
    wall = time.monotonic() - started
    assert results == [(200, "slept %d\n" % n) for n in range(count)]
    print(
        "\ngevent worker, one process: %d concurrent requests sleeping %.1fs each "
        "answered in %.2fs wall (sum of sleeps %.0fs)" % (count, seconds, wall, count * seconds)
    )
    return wall


def test_500_concurrent_slow_requests(
    mongrel2: Mongrel2, m2gate_server: Callable[..., Any]
) -> None:
    concurrent_slow_requests(mongrel2, m2gate_server, 500, 1.0)


def test_app_sees_a_patched_process(mongrel2: Mongrel2, m2gate_server: Callable[..., Any]) -> None:
    m2gate_server("green:application", *GEVENT)
    info = httpx.get(mongrel2.url + "/info", timeout=10).text
    assert "patched=True" in info
    assert "multithread=True" in info


def test_streaming_response(mongrel2: Mongrel2, m2gate_server: Callable[..., Any]) -> None:
    """Each chunk is produced only after the client acknowledged the previous one.

    A buffered response would deadlock (and time out): this proves every
    small chunk left through the flusher, which runs as a greenlet here.
    """
    m2gate_server("green:application", *GEVENT)
    lines = []
    with (
        httpx.Client(base_url=mongrel2.url, timeout=10) as acks,
        httpx.stream(
            "GET", mongrel2.url + "/stream", params={"n": "4", "t": "s1"}, timeout=10
        ) as resp,
    ):
        assert resp.headers["transfer-encoding"] == "chunked"
        for line in resp.iter_lines():
            lines.append(line)
            acks.get("/ack", params={"t": "s1-%d" % (len(lines) - 1)})
    assert lines == ["chunk %d" % i for i in range(4)]


def test_keep_alive_and_pipelined_order(
    mongrel2: Mongrel2, m2gate_server: Callable[..., Any]
) -> None:
    m2gate_server("green:application", *GEVENT)
    conn = http.client.HTTPConnection("127.0.0.1", mongrel2.port, timeout=10)
    try:
        for n in range(3):
            conn.request("GET", "/sleep?s=0.05&n=%d" % n)
            assert conn.getresponse().read() == b"slept %d\n" % n
    finally:
        conn.close()
    # Two pipelined requests on one connection: the slow first one answers first.
    with socket.create_connection(("127.0.0.1", mongrel2.port), timeout=10) as sock:
        sock.sendall(
            b"GET /sleep?s=0.3&n=first HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /sleep?s=0&n=second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.index(b"slept first") < data.index(b"slept second")


def test_graceful_sigterm_finishes_in_flight(
    mongrel2: Mongrel2, m2gate_server: Callable[..., Any]
) -> None:
    server = m2gate_server("green:application", *GEVENT, "--graceful-timeout", "10")
    results: list[tuple[int, str]] = []
    # One client for all: twenty made in twenty threads (an SSL context each)
    # took longer than the app's sleep on a loaded machine, so the first
    # requests were done before the last arrived and 20 were never inside.
    shared = httpx.Client(
        base_url=mongrel2.url, timeout=20, limits=httpx.Limits(max_connections=40)
    )

    def slow(n: int) -> None:
        resp = shared.get("/sleep", params={"s": "3", "n": str(n)})
        results.append((resp.status_code, resp.text))

    clients = [threading.Thread(target=slow, args=(n,)) for n in range(20)]
    try:
        for t in clients:
            t.start()
        # Stop only once all 20 are inside the app (not still queued in Mongrel2).
        deadline = time.monotonic() + 10
        while httpx.get(mongrel2.url + "/sleeping", timeout=5).text != "20\n":
            assert time.monotonic() < deadline, "the requests never reached the app"
            time.sleep(0.02)
        server.signal(signal.SIGTERM)
        for t in clients:
            t.join(20)
    finally:
        shared.close()
    assert sorted(results) == sorted((200, "slept %d\n" % n) for n in range(20))
    assert server.proc.wait(timeout=15) == 0
    assert "stopped after" in server.output


def test_connection_bound_queues_the_rest(
    mongrel2: Mongrel2, m2gate_server: Callable[..., Any]
) -> None:
    m2gate_server("green:application", *GEVENT, "--gevent-connections", "3")
    results = asyncio.run(_many_slow(mongrel2.url, 12, 0.2))
    assert results == [(200, "slept %d\n" % n) for n in range(12)]
    assert httpx.get(mongrel2.url + "/stats", timeout=5).text.startswith("peak=3 ")


def test_client_gone_mid_stream_frees_the_greenlet(
    mongrel2: Mongrel2, m2gate_server: Callable[..., Any]
) -> None:
    m2gate_server("green:application", *GEVENT)
    with socket.create_connection(("127.0.0.1", mongrel2.port), timeout=10) as sock:
        sock.sendall(b"GET /stream?n=100000&delay=0.01 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"chunk 0" in sock.recv(65536)
    # Mongrel2's disconnect notice reaches the greenlet: the app's iterator is closed.
    deadline = time.monotonic() + 15
    while "aborted=1" not in httpx.get(mongrel2.url + "/stats", timeout=5).text:
        assert time.monotonic() < deadline, "the stream kept running after the client left"
        time.sleep(0.05)


def test_graceful_timeout_stops_anyway(
    mongrel2: Mongrel2, m2gate_server: Callable[..., Any]
) -> None:
    server = m2gate_server("green:application", *GEVENT, "--graceful-timeout", "0.5")

    def abandoned() -> None:
        with contextlib.suppress(httpx.HTTPError):  # cut off when the servers stop
            httpx.get(mongrel2.url + "/sleep?s=60", timeout=30)

    client = threading.Thread(target=abandoned, daemon=True)
    client.start()
    deadline = time.monotonic() + 10
    while httpx.get(mongrel2.url + "/sleeping", timeout=5).text != "1\n":
        assert time.monotonic() < deadline, "the request never reached the app"
        time.sleep(0.02)
    server.signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0
    assert "graceful timeout" in server.output and "(forced)" in server.output


def test_asgi_app_is_refused_at_start(
    mongrel2: Mongrel2, m2gate_server: Callable[..., Any]
) -> None:
    server = m2gate_server("asgi_bare:app", *GEVENT, wait=False)
    assert server.proc.wait(timeout=20) == 2
    assert "worker_class: gevent serves WSGI apps" in server.output


@pytest.mark.parametrize("worker", [GEVENT, ("--threads", "4")], ids=["gevent", "threads"])
def test_concurrent_uploads_stream_from_the_temp_store(
    mongrel2: Mongrel2, m2gate_server: Callable[..., Any], worker: tuple[str, ...]
) -> None:
    """Bodies over Mongrel2's limit arrive as temp files, read as they grow.

    A small chunked upload's upload-done can arrive before any greenlet or
    thread started on its upload-start: it must still complete that upload.
    """
    m2gate_server("wsgi_probe:application", *worker, "--upload-dir", str(mongrel2.upload_dir))
    bodies = [os.urandom((2 * 1024 * 1024 if n % 2 == 0 else 300_000) + n) for n in range(4)]

    async def upload_all() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=mongrel2.url, timeout=30) as client:

            async def one(i: int, body: bytes) -> dict[str, Any]:
                if i % 2:  # chunked: Mongrel2 also spools it, length known only at the end
                    # (in small chunks: Mongrel2 refuses ones over its buffer, "Chunk too large")
                    async def gen() -> Any:
                        for pos in range(0, len(body), 2000):
                            yield body[pos : pos + 2000]

                    resp = await client.post("/echo", content=gen())
                else:
                    resp = await client.post("/echo", content=body)
                assert resp.status_code == 200, resp.text
                data: dict[str, Any] = resp.json()
                return data

            return await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))

    results = asyncio.run(upload_all())
    for body, data in zip(bodies, results, strict=True):
        assert data["length"] == len(body)
        assert data["sha256"] == hashlib.sha256(body).hexdigest()
    assert not list(mongrel2.upload_dir.iterdir())  # temp files removed after each request
