"""A Mongrel2 restart must not hand one client's response to another (issue 9, item 2).

Connection ids restart at 1 when Mongrel2 restarts. A slow request in flight
on id N before the restart finishes after it, when a new client already got
id N: that client must get its own answer, never the old one.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from m2gate.testing.mongrel2 import Mongrel2

pytestmark = pytest.mark.integration

Factory = Callable[..., Any]


def send(m2: Mongrel2, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", m2.port), timeout=15)
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    return sock


def response(sock: socket.socket, timeout: float = 15.0) -> bytes:
    """One whole response (Content-Length framed), or what came before EOF/timeout."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        if len(body) >= int(line.split(b":", 1)[1]):
                            return data
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except TimeoutError:
        return data


def restart_and_race(m2: Mongrel2, wait_in_flight: Callable[[], None]) -> None:
    """Fresh ids, a slow request on id 1, a restart, a new client on id 1 (asserted)."""
    m2.restart()  # ids count from 1 again; the first request we send gets id 1
    old = send(m2, "/slow?s=4&tag=old")
    wait_in_flight()
    m2.restart()
    new = send(m2, "/tag?tag=new")  # the first request of this incarnation: id 1 again
    got = response(new)
    old.close()
    new.close()
    assert b"answer for old" not in got, "the new client got the old response: %r" % got
    assert b"answer for new" in got, "the new client was not served: %r" % got
    # And it stays right: the next clients are served their own answers.
    for i in range(3):
        with send(m2, "/tag?tag=next%d" % i) as sock:
            assert b"answer for next%d" % i in response(sock)


@pytest.mark.parametrize("mode", ["single", "master"])
def test_old_response_never_reaches_a_new_client_with_the_same_id(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path, mode: str
) -> None:
    args = ["--threads", "4"]
    if mode == "master":
        args += ["-p", "2", "--pidfile", str(tmp_path / "m.pid")]
    server = m2gate_server("frontend_app:application", *args)

    def wait_in_flight() -> None:
        time.sleep(1.0)  # the slow request reached the app (it sleeps 4 s)

    restart_and_race(mongrel2, wait_in_flight)
    assert server.proc.poll() is None
