"""Hostile requests through a real Mongrel2: each is refused, and the server lives on.

Issue 9: one request with ``X-Mongrel2-Upload-Start`` and a Content-Length of
``²`` (byte 0xB2, which latin-1 decodes to a character ``str.isdigit()``
accepts and ``int()`` rejects) used to kill the process. Every case here is
sent over a raw socket; it must get a 4xx or a closed connection (never a
hang, never a 5xx from a crash), and afterwards a normal request is answered
by the same process (single) or by the same workers (``-p 2``).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from m2gate.cli import control
from m2gate.ops.pidfile import control_path_for
from m2gate.testing.mongrel2 import Mongrel2

pytestmark = pytest.mark.integration

Factory = Callable[..., Any]

REPLY_TIMEOUT = 8.0  # a hang is a failure, not a slow pass

HEAD = b"Host: localhost\r\n"

# name -> raw request. Each must end in a 4xx or a closed connection.
HTTP_CASES: dict[str, bytes] = {
    "upload_start_superscript_length": (
        b"POST / HTTP/1.1\r\n" + HEAD + b"X-Mongrel2-Upload-Start: /tmp/x\r\n"
        b"Content-Length: \xb2\r\n\r\n"
    ),
    "upload_start_and_done_superscript_length": (
        b"POST / HTTP/1.1\r\n" + HEAD + b"X-Mongrel2-Upload-Start: /tmp/x\r\n"
        b"X-Mongrel2-Upload-Done: /tmp/x\r\nContent-Length: \xb3\r\n\r\n"
    ),
    "superscript_length_without_upload": (
        b"POST / HTTP/1.1\r\n" + HEAD + b"Content-Length: \xb2\r\n\r\n"
    ),
    "digit_then_superscript_length": (
        b"POST / HTTP/1.1\r\n" + HEAD + b"Content-Length: 1\xb9\r\n\r\nx"
    ),
    "huge_length": (b"POST / HTTP/1.1\r\n" + HEAD + b"Content-Length: " + b"9" * 60 + b"\r\n\r\n"),
    "huge_length_with_upload_start": (
        b"POST / HTTP/1.1\r\n" + HEAD + b"X-Mongrel2-Upload-Start: /tmp/x\r\n"
        b"Content-Length: " + b"9" * 60 + b"\r\n\r\n"
    ),
    "repeated_upload_start": (
        b"GET / HTTP/1.1\r\n" + HEAD + b"X-Mongrel2-Upload-Start: /tmp/a\r\n"
        b"X-Mongrel2-Upload-Start: /tmp/b\r\n\r\n"
    ),
    "repeated_upload_done": (
        b"GET / HTTP/1.1\r\n" + HEAD + b"X-Mongrel2-Upload-Start: /tmp/a\r\n"
        b"X-Mongrel2-Upload-Done: /tmp/a\r\nX-Mongrel2-Upload-Done: /tmp/b\r\n\r\n"
    ),
    "upload_path_not_ascii": (
        b"GET / HTTP/1.1\r\n" + HEAD + b"X-Mongrel2-Upload-Start: /tmp/\x7f\xff\r\n\r\n"
    ),
    "two_different_content_lengths": (
        b"POST / HTTP/1.1\r\n" + HEAD + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nxx"
    ),
    "non_ascii_port_in_host": b"GET / HTTP/1.1\r\nHost: localhost:\xb2\xb3\r\n\r\n",
}

# Only the first request on a connection may upgrade (Mongrel2), so each frame
# gets its own connection. Frames from a client must be masked (RFC 6455).
WS_FRAMES: dict[str, bytes] = {
    "reserved_bits": b"\xf1",  # FIN + RSV1-3, text
    "unknown_data_opcode": b"\x83",
    "unknown_control_opcode": b"\x8b",
    "one_byte_close": b"\x88",
    "bad_close_code": b"\x88",
    "continuation_first": b"\x80",
    "invalid_utf8_text": b"\x81",
}
WS_PAYLOADS: dict[str, bytes] = {
    "reserved_bits": b"hi",
    "unknown_data_opcode": b"hi",
    "unknown_control_opcode": b"",
    "one_byte_close": b"\x03",
    "bad_close_code": b"\x00\x01",
    "continuation_first": b"hi",
    "invalid_utf8_text": b"\xff\xfe",
}

WS_HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\n" + HEAD + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def masked_frame(first: bytes, payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return first + bytes([0x80 | len(payload)]) + mask + body


def exchange(port: int, raw: bytes, timeout: float = REPLY_TIMEOUT) -> tuple[str, bytes]:
    """Send ``raw``; return ``(outcome, data)``: a status code, ``closed`` or ``hang``.

    Stops reading once one whole response is in (headers, and the body when it
    has a Content-Length), so a keep-alive answer is not mistaken for a hang.
    """
    data = b""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return ("hang" if not data else _status(data)), data
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return ("hang" if not data else _status(data)), data
            except ConnectionResetError:
                return ("closed" if not data else _status(data)), data
            if not chunk:
                return ("closed" if not data else _status(data)), data
            data += chunk
            if _complete(data):
                return _status(data), data


def _status(data: bytes) -> str:
    line = data.split(b"\r\n", 1)[0]
    parts = line.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return parts[1].decode()
    return "garbage:%r" % line[:40]


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(body) >= int(value.strip())
    return False  # no length: wait for the close


def refused(outcome: str) -> bool:
    return outcome == "closed" or (outcome.isdigit() and 400 <= int(outcome) < 500)


def normal_get(port: int) -> str:
    outcome, _ = exchange(port, b"GET / HTTP/1.1\r\n" + HEAD + b"Connection: close\r\n\r\n")
    return outcome


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def worker_pids(pidfile: Path) -> set[int]:
    doc = control.request(control_path_for(str(pidfile)), "status", timeout=10)
    return {w["pid"] for w in doc["workers"]}


def wait_workers(pidfile: Path, count: int) -> set[int]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        doc = control.request(control_path_for(str(pidfile)), "status", timeout=10)
        workers = doc["workers"]
        if len(workers) == count and all(w["status"] != "starting" for w in workers):
            return {w["pid"] for w in workers}
        time.sleep(0.05)
    raise AssertionError("workers not ready")


def check_cases(
    m2: Mongrel2, server: Any, cases: dict[str, bytes], alive: Callable[[], bool]
) -> None:
    """Every case refused, the next normal request served, nobody died."""
    failures: list[str] = []
    for name, raw in cases.items():
        outcome, data = exchange(m2.port, raw)
        if not refused(outcome):
            failures.append("%s: %s %r" % (name, outcome, data[:80]))
        after = normal_get(m2.port)
        if after != "200":
            failures.append("%s: next request got %s" % (name, after))
        if not alive():
            failures.append("%s: the server died" % name)
            break
    assert not failures, "\n".join(failures) + "\n--- server output ---\n" + server.output[-4000:]
    assert "Traceback" not in server.output, server.output[-4000:]


@pytest.mark.parametrize("mode", ["single", "threads", "p2"])
def test_hostile_http_requests_are_refused_and_the_server_lives(
    mode: str, mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    pidfile = tmp_path / "m2gate.pid"
    args = {
        "single": ("--threads", "1"),
        "threads": ("--threads", "4"),
        "p2": ("-p", "2", "--pidfile", str(pidfile)),
    }[mode]
    server = m2gate_server("basic:application", *args)
    if mode == "p2":
        before = wait_workers(pidfile, 2)

        def alive() -> bool:
            return server.proc.poll() is None and worker_pids(pidfile) == before
    else:

        def alive() -> bool:
            return server.proc.poll() is None and pid_alive(server.pid)

    check_cases(mongrel2, server, HTTP_CASES, alive)


def test_hostile_http_requests_against_asgi(mongrel2: Mongrel2, m2gate_server: Factory) -> None:
    server = m2gate_server("asgi_bare:app", "--interface", "asgi")
    check_cases(mongrel2, server, HTTP_CASES, lambda: server.proc.poll() is None)


@pytest.mark.parametrize("frame", sorted(WS_FRAMES))
def test_bad_websocket_frames_close_the_connection_and_the_server_lives(
    frame: str, mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    server = m2gate_server(
        "starlette_app:app", "--interface", "asgi", env={"M2GATE_TEST_STATE": str(state)}
    )
    with socket.create_connection(("127.0.0.1", mongrel2.port), timeout=REPLY_TIMEOUT) as sock:
        sock.sendall(WS_HANDSHAKE)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, "closed during the handshake: %r" % head
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        sock.sendall(masked_frame(WS_FRAMES[frame], WS_PAYLOADS[frame]))
        # The server must close: a close frame (opcode 8) and/or EOF, within the timeout.
        data = head.split(b"\r\n\r\n", 1)[1]
        deadline = time.monotonic() + REPLY_TIMEOUT
        closed = False
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
        assert closed or data[:1] == b"\x88", "no close after %s: %r" % (frame, data[:40])
    assert normal_get(mongrel2.port) == "200"
    assert server.proc.poll() is None and pid_alive(server.pid)
    assert "Traceback" not in server.output, server.output[-4000:]


def test_exchange_helper_sees_a_hang_as_a_hang(mongrel2: Mongrel2) -> None:
    """Guard for the helper itself: Mongrel2 with no handler never answers."""
    outcome, _ = exchange(mongrel2.port, b"GET / HTTP/1.1\r\n" + HEAD + b"\r\n", timeout=1.0)
    assert outcome == "hang"
