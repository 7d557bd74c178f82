"""A worker that dies mid-stream: the client's connection closes, nothing is spliced in.

Once a response's headers and part of its chunked body are out, a 502/504
from the master would land inside that body; the only honest answer is to
close the connection (issue 9, item 2 of the splice class).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from m2gate.testing.mongrel2 import Mongrel2
from support import wait_until

pytestmark = pytest.mark.integration

Factory = Callable[..., Any]


def read_until(sock: socket.socket, marker: bytes, data: bytes = b"") -> bytes:
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_to_eof(sock: socket.socket, data: bytes, timeout: float) -> tuple[bytes, bool]:
    """Everything until the server closes; False if it was still open at ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            return data, True
        data += chunk
    return data, False


@pytest.mark.parametrize("how", ["sigkill", "harakiri"])
def test_worker_dying_mid_stream_closes_the_connection(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path, how: str
) -> None:
    args = ["-p", "2", "--threads", "2"]
    if how == "harakiri":
        args += ["--harakiri", "2"]
    server = m2gate_server("frontend_app:application", *args, "--pidfile", str(tmp_path / "m.pid"))
    with socket.create_connection(("127.0.0.1", mongrel2.port), timeout=10) as sock:
        sock.sendall(b"GET /stream?n=200&s=0.1 HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_until(sock, b"chunk 2\n")
        assert data.startswith(b"HTTP/1.1 200 "), data
        assert b"transfer-encoding: chunked" in data.lower()
        victim = int(data.split(b"pid ", 1)[1].split(b"\n", 1)[0])
        if how == "sigkill":
            os.kill(victim, signal.SIGKILL)
        data, closed = read_to_eof(sock, data, timeout=15.0)
    assert closed, "connection still open after the worker died: %r" % data[-200:]
    assert data.count(b"HTTP/1.1 ") == 1, "a second status line inside the body: %r" % data
    assert not data.endswith(b"0\r\n\r\n")  # not a clean end: the body was cut short
    # The master is fine and serves the next request (a replacement worker).
    wait_until(lambda: b"answer for" in _get(mongrel2), what="served after the death")
    assert "in flight" in server.output


def _get(m2: Mongrel2) -> bytes:
    with socket.create_connection(("127.0.0.1", m2.port), timeout=10) as sock:
        sock.sendall(b"GET /tag?tag=after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return read_to_eof(sock, b"", 10.0)[0]
