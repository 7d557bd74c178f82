"""``m2gate.handler`` against a pair of in-process sockets standing in for Mongrel2.

The double binds what Mongrel2 binds (PUSH on send_spec, SUB on recv_spec)
on ipc:// paths; the exact bytes the API publishes are asserted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from m2gate.handler import (
    OP_BINARY,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Connection,
    Credits,
    Request,
    WebSocketError,
)
from m2gate.protocol import tnetstring
from m2gate.protocol.websocket import Close, Ping, TextMessage, encode_frame

from .helpers import SENDER, control, message, request_headers

UUID = SENDER


class FakeMongrel2:
    """PUSHes requests to the handler and collects what it PUBlishes."""

    def __init__(self, tmp: Path) -> None:
        self.ctx = zmq.Context()
        self.send_spec = "ipc://%s" % (tmp / "send")
        self.recv_spec = "ipc://%s" % (tmp / "recv")
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.bind(self.send_spec)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.bind(self.recv_spec)

    def prove_reply_path(self, conn: Connection) -> None:
        """Publish until one arrives: ZeroMQ drops what a PUB sends before it is connected."""
        for _ in range(200):
            conn.send([b"warmup 1:0, x"])
            if self.sub.poll(20):
                break
        else:
            raise AssertionError("the handler's PUB never connected")
        time.sleep(0.05)
        while self.sub.poll(0):
            self.sub.recv()

    def replies(self, count: int) -> list[bytes]:
        out = []
        for _ in range(count):
            assert self.sub.poll(2000), "expected %d replies, got %d" % (count, len(out))
            out.append(self.sub.recv())
        assert not self.sub.poll(50), "more replies than expected"
        return out

    def close(self) -> None:
        self.push.close(linger=0)
        self.sub.close(linger=0)
        self.ctx.term()


@pytest.fixture
def m2(tmp_path: Path) -> Iterator[FakeMongrel2]:
    fake = FakeMongrel2(tmp_path)
    yield fake
    fake.close()


@pytest.fixture
def conn(m2: FakeMongrel2) -> Iterator[Connection]:
    c = Connection(m2.send_spec, m2.recv_spec, "test-handler")
    m2.prove_reply_path(c)
    yield c
    c.shutdown(linger=0)


def receive(m2: FakeMongrel2, conn: Connection, raw: bytes) -> Request:
    m2.push.send(raw)
    req = conn.recv(timeout=2)
    assert isinstance(req, Request)
    return req


def http(method: str = "GET", path: str = "/hello", conn_id: int = 7, **headers: str) -> bytes:
    return message(request_headers(method, path, **headers), conn_id=conn_id)


def test_recv_gives_a_request(m2: FakeMongrel2, conn: Connection) -> None:
    raw = message(request_headers("POST", "/a%20b", QUERY="x=1"), b"payload", path=b"/a%20b")
    req = receive(m2, conn, raw)
    assert (req.sender, req.conn_id, req.path) == (UUID.decode(), 7, "/a%20b")
    assert req.method == "POST"
    assert req.headers["QUERY"] == "x=1"
    assert req.header("host") == "localhost:6767"
    assert req.body == b"payload"
    assert not req.is_disconnect and not req.is_websocket and not req.should_close()


def test_should_close_follows_version_and_connection_header(
    m2: FakeMongrel2, conn: Connection
) -> None:
    assert receive(m2, conn, http(connection="close")).should_close()
    assert receive(m2, conn, http(VERSION="HTTP/1.0")).should_close()
    assert not receive(m2, conn, http(VERSION="HTTP/1.0", connection="keep-alive")).should_close()


def test_recv_timeout_returns_none(conn: Connection) -> None:
    started = time.monotonic()
    assert conn.recv(timeout=0.05) is None
    assert time.monotonic() - started < 2


def test_malformed_message_is_dropped(
    m2: FakeMongrel2, conn: Connection, caplog: pytest.LogCaptureFixture
) -> None:
    m2.push.send(b"not a mongrel2 message")
    req = receive(m2, conn, http(conn_id=9))
    assert req.conn_id == 9
    assert "dropped malformed message" in caplog.text


def test_control_events(m2: FakeMongrel2, conn: Connection) -> None:
    gone = receive(m2, conn, control("disconnect", conn_id=3))
    assert gone.is_disconnect and gone.conn_id == 3 and gone.should_close()
    assert gone.json() == {"type": "disconnect"}
    m2.push.send(control("credits", conn_id=4, DOWNLOAD_CREDITS="1024"))
    credits = conn.recv(timeout=2)
    assert isinstance(credits, Credits) and credits.amount == 1024


def test_reply_exact_bytes(m2: FakeMongrel2, conn: Connection) -> None:
    req = receive(m2, conn, http(conn_id=12))
    conn.reply(req, b"raw bytes")
    conn.reply(req, "text é")
    assert m2.replies(2) == [UUID + b" 2:12, raw bytes", UUID + " 2:12, text é".encode()]
    with pytest.raises(ValueError, match="close"):
        conn.reply(req, b"")


def test_reply_http_keep_alive(m2: FakeMongrel2, conn: Connection) -> None:
    req = receive(m2, conn, http())
    assert conn.reply_http(req, b"Hello\n", headers={"Content-Type": "text/plain"}) is True
    (msg,) = m2.replies(1)
    head, body = msg.split(b"\r\n\r\n", 1)
    assert head.startswith(UUID + b" 1:7, HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain\r\n" in head
    assert b"Content-Length: 6\r\n" in head
    assert b"Connection: close" not in head
    assert body == b"Hello\n"


def test_reply_http_closes_when_the_request_asks(m2: FakeMongrel2, conn: Connection) -> None:
    req = receive(m2, conn, http(VERSION="HTTP/1.0"))
    assert conn.reply_http(req, "nope", 404, "Not Found") is False
    msg, close = m2.replies(2)
    assert msg.startswith(UUID + b" 1:7, HTTP/1.1 404 Not Found\r\n")
    assert b"Connection: close\r\n" in msg and msg.endswith(b"\r\n\r\nnope")
    assert close == UUID + b" 1:7, "


def test_reply_http_app_asks_to_close_and_head_has_no_body(
    m2: FakeMongrel2, conn: Connection
) -> None:
    req = receive(m2, conn, http())
    assert conn.reply_http(req, b"x", headers=[("Connection", "close")]) is False
    assert m2.replies(2)[1] == UUID + b" 1:7, "
    head = receive(m2, conn, http("HEAD"))
    conn.reply_http(head, b"12345")
    (msg,) = m2.replies(1)
    assert b"Content-Length: 5\r\n" in msg and msg.endswith(b"\r\n\r\n")


def test_reply_http_refuses_header_injection(m2: FakeMongrel2, conn: Connection) -> None:
    req = receive(m2, conn, http())
    with pytest.raises(Exception, match="invalid value"):
        conn.reply_http(req, b"x", headers={"X-A": "1\r\nSet-Cookie: evil"})


def test_deliver_splits_at_128_ids(m2: FakeMongrel2, conn: Connection) -> None:
    conn.deliver(UUID.decode(), range(1, 301), b"news")
    msgs = m2.replies(3)
    ids = []
    for msg in msgs:
        uuid, rest = msg.split(b" ", 1)
        assert uuid == UUID
        length, rest = rest.split(b":", 1)
        targets, body = rest[: int(length)], rest[int(length) :]
        assert body == b", news"
        ids.append([int(i) for i in targets.split()])
    assert [len(g) for g in ids] == [128, 128, 44]
    assert [i for group in ids for i in group] == list(range(1, 301))
    conn.deliver(UUID, [], b"nobody")  # no ids: nothing sent
    m2.replies(0)


def test_websocket_handshake_frames_and_broadcast(m2: FakeMongrel2, conn: Connection) -> None:
    hs = receive(
        m2,
        conn,
        message(request_headers("WEBSOCKET_HANDSHAKE", "/chat"), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    )
    assert hs.is_websocket_handshake
    conn.accept_websocket(hs)
    (msg,) = m2.replies(1)
    assert msg == UUID + (
        b" 1:7, HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )
    frame = receive(
        m2, conn, message(request_headers("WEBSOCKET", "/chat", FLAGS="0x81"), b"hello")
    )
    assert frame.is_websocket and frame.opcode == OP_TEXT
    assert conn.websocket_event(frame) == TextMessage("hello")
    conn.reply_websocket(frame, "hi")
    conn.reply_websocket(frame, b"\x00\x01")
    conn.deliver_websocket(UUID, [7, 8, 9], "all")
    conn.reply_websocket(frame, b"p", OP_PONG)
    assert m2.replies(4) == [
        UUID + b" 1:7, " + encode_frame(OP_TEXT, b"hi"),
        UUID + b" 1:7, " + encode_frame(OP_BINARY, b"\x00\x01"),
        UUID + b" 5:7 8 9, " + encode_frame(OP_TEXT, b"all"),
        UUID + b" 1:7, " + encode_frame(OP_PONG, b"p"),
    ]


def test_websocket_events_and_close(m2: FakeMongrel2, conn: Connection) -> None:
    def frame(flags: str, body: bytes) -> Request:
        return receive(m2, conn, message(request_headers("WEBSOCKET", "/", FLAGS=flags), body))

    assert conn.websocket_event(frame("0x89", b"hb")) == Ping(b"hb")
    assert conn.websocket_event(frame("0x01", b"frag")) is None  # first fragment, no FIN
    assert conn.websocket_event(frame("0x80", b"ment")) == TextMessage("fragment")
    assert conn.websocket_event(frame("0x88", b"\x03\xe8bye")) == Close(1000, "bye")
    with pytest.raises(WebSocketError):
        conn.websocket_event(frame("0x81", b"\xff"))  # not UTF-8
    last = frame("0x88", b"")
    conn.close_websocket(last, 1001, "going")
    close_frame, close = m2.replies(2)
    assert close_frame == UUID + b" 1:7, " + encode_frame(0x8, b"\x03\xe9going")
    assert close == UUID + b" 1:7, "
    assert OP_PING == 0x9


def test_close_close_many_and_ctl(m2: FakeMongrel2, conn: Connection) -> None:
    req = receive(m2, conn, http(conn_id=5))
    conn.close(req)
    conn.close_many(UUID, [1, 2, 3])
    conn.ctl(req, keep_alive=True)
    conn.ctl_many(UUID.decode(), [5, 6], credits=4096)
    closed, many, keep, credits = m2.replies(4)
    assert closed == UUID + b" 1:5, "
    assert many == UUID + b" 5:1 2 3, "
    assert keep == UUID + b" 3:X 5, " + tnetstring.dumps(["ctl", {"keep-alive": True}])
    assert credits == UUID + b" 5:X 5 6, " + tnetstring.dumps(["ctl", {"credits": 4096}])
    with pytest.raises(ValueError):
        conn.ctl(req)


def test_recv_ident_addresses_replies(m2: FakeMongrel2) -> None:
    c = Connection(m2.send_spec, m2.recv_spec, recv_ident="replies-here")
    try:
        m2.prove_reply_path(c)
        req = receive(m2, c, http())
        c.reply(req, b"x")
        assert m2.replies(1) == [b"replies-here 1:7, x"]
    finally:
        c.shutdown(linger=0)
    with pytest.raises(ValueError, match="A-Za-z0-9"):
        Connection(m2.send_spec, m2.recv_spec, recv_ident="bad ident")


def test_sends_from_many_threads_never_interleave(m2: FakeMongrel2, conn: Connection) -> None:
    req = receive(m2, conn, http())

    def spam(n: int) -> None:
        for _ in range(50):
            conn.reply(req, b"%d" % n * 1000)

    threads = [threading.Thread(target=spam, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for msg in m2.replies(200):
        body = msg.split(b", ", 1)[1]
        assert len(set(body)) == 1 and len(body) == 1000
