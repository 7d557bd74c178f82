"""Many clients at once, and a big response to a slow client, through a real Mongrel2."""

from __future__ import annotations

import hashlib
import http.client
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from wsgi_http import RawClient, expected_digest, wait_for_event

from m2gate.testing.mongrel2 import Mongrel2

pytestmark = pytest.mark.integration

Start = Any


def _one_request(port: int, request_id: int) -> tuple[int, int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/id?id=r%d&sleep=0.01" % request_id)
        resp = conn.getresponse()
        return request_id, resp.status, resp.read()
    finally:
        conn.close()


def test_200_concurrent_requests_with_8_threads(mongrel2: Mongrel2, wsgi: Start) -> None:
    wsgi("--threads", "8")
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda i: _one_request(mongrel2.port, i), range(200)))
    assert len(results) == 200
    threads = set()
    for request_id, status, body in results:
        assert status == 200, (request_id, body)
        own, thread = body.decode().split(" ")
        assert own == "id=r%d" % request_id  # each client got its own answer
        threads.add(thread)
    assert len(threads) > 1  # the app really ran on several threads


def test_keep_alive_clients_interleaved(mongrel2: Mongrel2, wsgi: Start) -> None:
    """20 keep-alive connections, 10 requests each, all in flight together."""
    wsgi("--threads", "8")

    def client(n: int) -> list[bytes]:
        with RawClient(mongrel2.port) as raw:
            out = []
            for i in range(10):
                raw.request("GET", "/id?id=c%d-%d&sleep=0.005" % (n, i))
                out.append(raw.read_response().body.split(b" ")[0])
            return out

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(client, range(20)))
    for n, got in enumerate(answers):
        assert got == [b"id=c%d-%d" % (n, i) for i in range(10)]


def _slow_read(
    port: int, target: str, version: str, pause: float, deadline_s: float
) -> tuple[bytes, bytes, bool]:
    """Request ``target``, stall, then read in small pieces with sleeps.

    Returns ``(head, raw body bytes, closed_by_server)``; stops at the deadline.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", port))
    deadline = time.monotonic() + deadline_s
    try:
        sock.sendall(b"GET %s %s\r\nHost: localhost\r\n\r\n" % (target.encode(), version.encode()))
        time.sleep(pause)  # the server races far ahead of us meanwhile
        data = bytearray()
        closed = False
        reads = 0
        total: int | None = None  # head + Content-Length, once the head is in
        while time.monotonic() < deadline:
            chunk = sock.recv(8192)
            if not chunk:
                closed = True
                break
            data += chunk
            reads += 1
            if reads % 8 == 0:
                time.sleep(0.002)
            if version == "HTTP/1.1" and data.endswith(b"\r\n0\r\n\r\n"):
                break
            if total is None and b"Content-Length:" in data[:1024]:
                total = _length_total(data)  # parsed once: not a 20 MB copy per read
            if total is not None and len(data) >= total:
                break
    finally:
        sock.close()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return head, body, closed


def _length_total(data: bytearray) -> int | None:
    """Bytes of head and body together, once the head (with a Content-Length) is in."""
    end = data.find(b"\r\n\r\n", 0, 65536)
    if end < 0:
        return None
    for line in bytes(data[:end]).split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return end + 4 + int(line.split(b":", 1)[1])
    return None


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while True:
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += body[end + 2 : end + 2 + size]
        assert body[end + 2 + size : end + 4 + size] == b"\r\n"
        pos = end + 4 + size


@pytest.mark.parametrize(
    ("version", "length"),
    [("HTTP/1.1", False), ("HTTP/1.1", True), ("HTTP/1.0", False)],
    ids=["chunked", "content-length", "http10-close"],
)
def test_20mb_in_4k_chunks_to_a_slow_client(
    mongrel2: Mongrel2, wsgi: Start, events: Path, version: str, length: bool
) -> None:
    size = 20 * 1024 * 1024
    wsgi("--threads", "2")
    target = "/big?size=%d&chunk=4096&id=big%s" % (size, "&length=1" if length else "")
    head, body, closed = _slow_read(mongrel2.port, target, version, pause=2.0, deadline_s=90)
    assert head.startswith(b"HTTP/1.1 200 ")
    if length:
        assert b"\r\nContent-Length: %d\r\n" % size in head
    elif version == "HTTP/1.1":
        assert b"\r\nTransfer-Encoding: chunked\r\n" in head
        body = _dechunk(body)
    else:
        assert closed  # close-delimited: the end of the body is the server's close
    assert len(body) == size
    assert hashlib.sha256(body).hexdigest() == expected_digest(size, 4096)
    assert wait_for_event(events, "close big")


@pytest.mark.mongrel2(settings={"download.flow_control": 1})
@pytest.mark.parametrize(
    "size",
    [
        20 * 1024 * 1024,
        pytest.param(200 * 1024 * 1024, marks=pytest.mark.long),
    ],
    ids=["20mb", "200mb"],
)
def test_big_response_with_flow_control_to_a_stalled_client(
    mongrel2: Mongrel2, wsgi: Start, events: Path, size: int
) -> None:
    """Beyond ~16 x max_message a stalled client needs Mongrel2's flow control.

    Without it Mongrel2 drops a connection with more than 16 queued replies,
    whatever their size; with ``download.flow_control`` m2gate only sends what
    the client has taken, however long it stalls.
    """
    wsgi()
    head, body, _ = _slow_read(
        mongrel2.port, "/big?size=%d&chunk=4096&id=fc" % size, "HTTP/1.1", 3.0, 110
    )
    assert b"\r\nTransfer-Encoding: chunked\r\n" in head
    body = _dechunk(body)
    assert len(body) == size
    assert hashlib.sha256(body).hexdigest() == expected_digest(size, 4096)
    assert wait_for_event(events, "close fc")


def test_many_clients_leave_mid_stream(mongrel2: Mongrel2, wsgi: Start, events: Path) -> None:
    """Every abandoned stream is stopped and closed, and the threads are free again."""
    wsgi("--threads", "4")

    def leave(n: int) -> None:
        with RawClient(mongrel2.port) as client:
            client.request("GET", "/forever?id=leave%d&max=60" % n)
            received = 0
            while received < 300_000:
                received += len(client.sock.recv(65536))

    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(leave, range(10)))
    for n in range(10):
        assert wait_for_event(events, "close leave%d" % n, timeout=20), n
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: _one_request(mongrel2.port, i), range(16)))
    assert all(status == 200 for _, status, _ in results)
