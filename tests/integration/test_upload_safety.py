"""Uploads through the real Mongrel2: forged announcements and temp files on every way out.

Only a file Mongrel2 announced for this very request may be opened or
removed, and every path out of a request (served, forged headers, worker
killed, harakiri, the master's own 503) leaves the upload directory empty.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from m2gate.cli import control as client
from m2gate.ops.pidfile import control_path_for
from m2gate.testing.mongrel2 import Mongrel2
from support import wait_until

pytestmark = pytest.mark.integration

BIG = 200_000  # over Mongrel2's limits.content_length (20480): spooled to a temp file


def exchange(m2: Mongrel2, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return what came back before ``timeout`` (b"" if nothing)."""
    with socket.create_connection(("127.0.0.1", m2.port), timeout=timeout) as sock:
        sock.sendall(data)
        got = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in got and time.monotonic() < deadline:
            if not select.select([sock], [], [], 0.1)[0]:
                continue
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def empty(m2: Mongrel2) -> bool:
    return not list(m2.upload_dir.iterdir())


def wait_empty(m2: Mongrel2, timeout: float = 10.0) -> None:
    wait_until(lambda: empty(m2), "upload dir empty (%s)" % list(m2.upload_dir.iterdir()), timeout)


SERVERS = {
    "threaded": ("escapes:application",),
    "asgi": ("escapes:asgi_app", "--interface", "asgi"),
    "master": ("escapes:application", "-p", "2"),
}


@pytest.mark.parametrize("kind", sorted(SERVERS))
@pytest.mark.parametrize("content_length", [b"Content-Length: 0\r\n", b""])
def test_forged_upload_start_cannot_delete_a_file(
    mongrel2: Mongrel2, m2gate_server: Any, tmp_path: Path, kind: str, content_length: bytes
) -> None:
    app, *args = SERVERS[kind]
    if "-p" in args:
        args += ["--pidfile", str(tmp_path / "m.pid")]
    m2gate_server(app, *args, "--upload-dir", str(mongrel2.upload_dir))
    victim = mongrel2.upload_dir / "upload.victim"
    victim.write_bytes(b"precious")
    reply = exchange(
        mongrel2,
        b"GET / HTTP/1.1\r\nHost: x\r\n" + content_length
        + b"X-Mongrel2-Upload-Start: " + str(victim).encode() + b"\r\n\r\n",
    )  # fmt: skip
    time.sleep(0.3)
    assert victim.exists(), "deleted by a forged header (reply %r)" % reply[:40]
    assert victim.read_bytes() == b"precious"
    assert reply.startswith(b"HTTP/1.1 400"), reply


def test_forged_upload_done_on_a_real_upload_removes_the_temp_file(
    mongrel2: Mongrel2, m2gate_server: Any
) -> None:
    m2gate_server("escapes:application", "--upload-dir", str(mongrel2.upload_dir))
    reply = exchange(
        mongrel2,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
        b"X-Mongrel2-Upload-Done: /etc/passwd\r\n\r\n" % BIG + b"a" * BIG,
    )
    assert reply.startswith(b"HTTP/1.1 400"), reply
    wait_empty(mongrel2)
    assert requests.get(mongrel2.url + "/", timeout=5).text == "hello"


def test_served_upload_removes_the_temp_file(mongrel2: Mongrel2, m2gate_server: Any) -> None:
    m2gate_server("escapes:application", "--upload-dir", str(mongrel2.upload_dir))
    body = os.urandom(BIG)
    resp = requests.post(mongrel2.url + "/echo", data=body, timeout=10)
    assert resp.status_code == 200 and resp.content == body
    wait_empty(mongrel2)


class PartialUpload:
    """A client that sends the head and part of a large body, then waits."""

    def __init__(self, m2: Mongrel2, path: str = "/echo", total: int = 2_000_000) -> None:
        self.sock = socket.create_connection(("127.0.0.1", m2.port), timeout=30)
        self.sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (
            path.encode(), total))  # fmt: skip
        self.sock.sendall(b"p" * 100_000)

    def response(self, timeout: float = 15.0) -> bytes:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096)
        except OSError as exc:
            return repr(exc).encode()

    def close(self) -> None:
        self.sock.close()


def status(pidfile: Path) -> dict[str, Any]:
    return client.request(control_path_for(str(pidfile)), "status", timeout=10)


def busy_pid(pidfile: Path, request: str = "POST ") -> int:
    """The worker serving ``request`` (a prefix of "METHOD PATH"), by default the upload.

    Any in-flight entry is not enough: a worker whose done report for the
    readiness probe had not reached the master yet was killed instead of the
    upload's, which then ran its 30 s on the other worker (no 502 to see).
    """

    def find() -> int | None:
        for w in status(pidfile)["workers"]:
            if any(e["request"].startswith(request) for e in w["in_flight"]):
                return int(w["pid"])
        return None

    return wait_until(find, "a worker with %s in flight" % request)


@pytest.mark.parametrize("phase", ["uploading", "in-the-app"])
def test_worker_killed_with_an_upload_leaves_no_temp_file(
    mongrel2: Mongrel2, m2gate_server: Any, tmp_path: Path, phase: str
) -> None:
    """SIGKILL of the worker while the body still arrives, or once the app has it."""
    pidfile = tmp_path / "m.pid"
    m2gate_server(
        "escapes:application", "-p", "2", "--pidfile", str(pidfile),
        "--upload-dir", str(mongrel2.upload_dir),
    )  # fmt: skip
    if phase == "uploading":
        up = PartialUpload(mongrel2)
    else:
        up = PartialUpload(mongrel2, "/echo-sleep?s=30", total=100_000)
    try:
        wait_until(lambda: not empty(mongrel2), "the upload started")
        os.kill(busy_pid(pidfile), signal.SIGKILL)
        assert up.response().startswith(b"HTTP/1.1 502")
    finally:
        up.close()
    wait_empty(mongrel2)


def test_harakiri_after_an_upload_leaves_no_temp_file(
    mongrel2: Mongrel2, m2gate_server: Any, tmp_path: Path
) -> None:
    m2gate_server(
        "escapes:application", "-p", "2", "--pidfile", str(tmp_path / "m.pid"),
        "--harakiri", "1", "--upload-dir", str(mongrel2.upload_dir),
    )  # fmt: skip
    resp = requests.post(mongrel2.url + "/echo-sleep?s=30", data=b"h" * BIG, timeout=20)
    assert resp.status_code == 504
    wait_empty(mongrel2)


def test_harakiri_mid_streamed_upload_leaves_no_temp_file(
    mongrel2: Mongrel2, m2gate_server: Any, tmp_path: Path
) -> None:
    """With --stream-uploads the app runs while the body arrives: harakiri counts it."""
    m2gate_server(
        "escapes:application", "-p", "2", "--pidfile", str(tmp_path / "m.pid"),
        "--harakiri", "1", "--stream-uploads", "--upload-dir", str(mongrel2.upload_dir),
    )  # fmt: skip
    up = PartialUpload(mongrel2)
    try:
        assert up.response().startswith(b"HTTP/1.1 504")
    finally:
        up.close()
    wait_empty(mongrel2)


def test_a_slow_upload_is_not_harakiri(
    mongrel2: Mongrel2, m2gate_server: Any, tmp_path: Path
) -> None:
    """By default no app runs until the upload is complete: harakiri starts counting then."""
    m2gate_server(
        "escapes:application", "-p", "2", "--pidfile", str(tmp_path / "m.pid"),
        "--harakiri", "1", "--upload-dir", str(mongrel2.upload_dir),
    )  # fmt: skip
    with socket.create_connection(("127.0.0.1", mongrel2.port), timeout=20) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % BIG)
        for _ in range(4):  # 2.4 s, over the harakiri limit
            sock.sendall(b"s" * (BIG // 5))
            time.sleep(0.6)
        sock.sendall(b"s" * (BIG - 4 * (BIG // 5)))
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head[:100]
    wait_empty(mongrel2)


def _occupy(m2: Mongrel2, seconds: float) -> threading.Thread:
    t = threading.Thread(
        target=lambda: requests.get(m2.url + "/sleep?s=%s" % seconds, timeout=30), daemon=True
    )
    t.start()
    return t


@pytest.mark.parametrize("how", ["queue-full", "queue-timeout", "stopping"])
def test_master_503_with_an_upload_leaves_no_temp_file(
    mongrel2: Mongrel2, m2gate_server: Any, tmp_path: Path, how: str
) -> None:
    pidfile = tmp_path / "m.pid"
    server = m2gate_server(
        "escapes:application", "-p", "1", "--threads", "1", "--prefetch", "0",
        "--queue-size", "1", "--queue-timeout", "1", "--graceful-timeout", "5",
        "--pidfile", str(pidfile), "--upload-dir", str(mongrel2.upload_dir),
    )  # fmt: skip
    busy = _occupy(mongrel2, 4)
    busy_pid(pidfile, "GET /sleep")
    if how == "queue-full":
        filler = _occupy(mongrel2, 0)  # waits in the master's queue of one
        wait_until(lambda: status(pidfile)["queued"], "a request queued", timeout=5)
    elif how == "stopping":
        server.signal(signal.SIGTERM)
        time.sleep(0.3)
    reply = exchange(
        mongrel2, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % BIG
        + b"q" * BIG, timeout=10,
    )  # fmt: skip
    assert reply.startswith(b"HTTP/1.1 503"), reply
    wait_empty(mongrel2)
    busy.join(10)
    if how == "queue-full":
        filler.join(10)
