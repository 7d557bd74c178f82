"""An app that escapes the error handling (SystemExit, KeyboardInterrupt), and slow uploads.

A ``BaseException`` from the app must not kill the app thread: the request
gets a 500 and the next one is served, in one process and under a master
(which must then still stop promptly). A client trickling its upload must
not pin the only app thread.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from m2gate.testing.mongrel2 import Mongrel2
from support import wait_until

pytestmark = pytest.mark.integration


def get(m2: Mongrel2, path: str, timeout: float = 5.0) -> requests.Response:
    return requests.get(m2.url + path, timeout=timeout)


@pytest.mark.parametrize("path", ["/exit", "/interrupt"])
def test_wsgi_app_raising_base_exception_gets_500_and_the_thread_goes_on(
    mongrel2: Mongrel2, m2gate_server: Any, path: str
) -> None:
    server = m2gate_server("escapes:application", "--threads", "1")
    assert get(mongrel2, path).status_code == 500
    for _ in range(3):
        assert get(mongrel2, "/").text == "hello"
    assert "SystemExit" in server.output or "KeyboardInterrupt" in server.output


def test_gevent_app_raising_system_exit_gets_500(mongrel2: Mongrel2, m2gate_server: Any) -> None:
    m2gate_server("escapes:application", "--worker-class", "gevent")
    assert get(mongrel2, "/exit").status_code == 500
    assert get(mongrel2, "/").text == "hello"


def test_asgi_app_raising_system_exit_gets_500(mongrel2: Mongrel2, m2gate_server: Any) -> None:
    server = m2gate_server("escapes:asgi_app", "--interface", "asgi")
    assert get(mongrel2, "/exit").status_code == 500
    assert get(mongrel2, "/").text == "hello"
    assert server.proc.poll() is None


def test_system_exit_under_a_master_then_sigterm_stops_promptly(
    mongrel2: Mongrel2, m2gate_server: Any, tmp_path: Path
) -> None:
    server = m2gate_server(
        "escapes:application", "-p", "2", "--threads", "1", "--graceful-timeout", "30",
        "--pidfile", str(tmp_path / "m.pid"),
    )  # fmt: skip
    for _ in range(2):
        assert get(mongrel2, "/exit").status_code == 500
    for _ in range(4):
        assert get(mongrel2, "/").text == "hello"
    started = time.monotonic()
    code = server.stop(timeout=40)
    took = time.monotonic() - started
    assert code == 0 and took < 10, "SIGTERM took %.1fs (exit %s)" % (took, code)


def _trickle(m2: Mongrel2, stop: threading.Event, out: list[bytes], seconds: float) -> None:
    """A chunked POST whose body comes at ~512 bytes/s, then the response (or an early one)."""
    with socket.create_connection(("127.0.0.1", m2.port), timeout=30) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline and not stop.is_set():
                if select.select([sock], [], [], 0.25)[0]:
                    out.append(sock.recv(4096))  # answered before the body was complete
                    return
                sock.sendall(b"80\r\n" + b"t" * 128 + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
            sock.settimeout(10)
            out.append(sock.recv(4096))
        except OSError as exc:
            out.append(repr(exc).encode())


def test_trickling_upload_does_not_block_a_single_thread(
    mongrel2: Mongrel2, m2gate_server: Any
) -> None:
    m2gate_server("escapes:application", "--threads", "1", "--upload-dir", str(mongrel2.upload_dir))
    stop = threading.Event()
    out: list[bytes] = []
    t = threading.Thread(target=_trickle, args=(mongrel2, stop, out, 6.0), daemon=True)
    t.start()
    try:
        wait_until(lambda: list(mongrel2.upload_dir.iterdir()), "the upload started", timeout=5)
        started = time.monotonic()
        resp = get(mongrel2, "/", timeout=4)
        assert resp.text == "hello" and time.monotonic() - started < 2
    finally:
        stop.set()
        t.join(20)
    assert out and out[0].startswith(b"HTTP/1.1 200"), out
    wait_until(lambda: not list(mongrel2.upload_dir.iterdir()), "temp file removed", timeout=10)


def test_upload_slower_than_upload_timeout_gets_408(mongrel2: Mongrel2, m2gate_server: Any) -> None:
    m2gate_server(
        "escapes:application", "--threads", "1", "--upload-dir", str(mongrel2.upload_dir),
        "--upload-timeout", "1",
    )  # fmt: skip
    stop = threading.Event()
    out: list[bytes] = []
    t = threading.Thread(target=_trickle, args=(mongrel2, stop, out, 4.0), daemon=True)
    t.start()
    t.join(20)
    assert out and out[0].startswith(b"HTTP/1.1 408"), out
    wait_until(lambda: not list(mongrel2.upload_dir.iterdir()), "temp file removed", timeout=10)
    assert get(mongrel2, "/").text == "hello"
