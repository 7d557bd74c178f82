"""``m2gate.handler`` driven from the test process against a real Mongrel2.

The extended ``ctl`` replies matter most here: a malformed one crashes
Mongrel2 1.12, so they are sent to the real thing and Mongrel2 must live on.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator

import pytest

from m2gate.handler import Connection, Request
from m2gate.testing.mongrel2 import HandlerSpec, Mongrel2

pytestmark = pytest.mark.integration


class RawHandler:
    """A handler loop on a thread: ``/ka`` ctl keep-alive then hello, ``/cancel`` ctl cancel."""

    def __init__(self, m2: Mongrel2) -> None:
        self.m2 = m2
        self.conn = Connection(m2.handler.send_spec, m2.handler.recv_spec)
        self.seen: list[Request] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            req = self.conn.recv(timeout=0.1)
            if not isinstance(req, Request):
                continue
            self.seen.append(req)
            if req.is_disconnect:
                continue
            if req.path == "/ka":
                self.conn.ctl(req, keep_alive=True)
                self.conn.reply_http(req, b"still here\n")
            elif req.path == "/cancel":
                self.conn.ctl(req, cancel=True)
            else:
                body = "%s %s %s" % (req.method, req.path, req.header("QUERY") or "")
                self.conn.reply_http(req, body, headers={"Content-Type": "text/plain"})

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.conn.shutdown(linger=0)


@pytest.fixture
def raw_handler(mongrel2: Mongrel2) -> Iterator[RawHandler]:
    handler = RawHandler(mongrel2)
    try:
        get(mongrel2, "/warmup")  # the reply path is connected once this is answered
        yield handler
    finally:
        handler.stop()


def get(m2: Mongrel2, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", m2.port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_ctl_keep_alive_then_reply(mongrel2: Mongrel2, raw_handler: RawHandler) -> None:
    assert get(mongrel2, "/ka") == (200, b"still here\n")
    assert mongrel2.running
    assert get(mongrel2, "/after?x=1") == (200, b"GET /after x=1")  # Mongrel2 survived


def test_ctl_cancel_closes_the_connection(mongrel2: Mongrel2, raw_handler: RawHandler) -> None:
    with socket.create_connection(("127.0.0.1", mongrel2.port), timeout=10) as sock:
        sock.sendall(b"GET /cancel HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536) == b""  # closed by Mongrel2, nothing sent
    assert get(mongrel2, "/after") == (200, b"GET /after ")


@pytest.mark.mongrel2(handlers=[HandlerSpec(protocol="json")])
def test_json_protocol_handler(mongrel2: Mongrel2, raw_handler: RawHandler) -> None:
    assert get(mongrel2, "/caf%C3%A9?q=%22x%22") == (200, b"GET /caf%C3%A9 q=%22x%22")
