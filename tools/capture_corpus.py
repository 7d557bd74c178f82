#!/usr/bin/env python3
"""Capture the raw ZeroMQ messages a real Mongrel2 pushes, for parser tests.

The protocol documentation is thin and partly wrong, so m2gate's parsers are
tested against bytes Mongrel2 actually produced. This script starts Mongrel2
with a tnetstring handler on ``/`` and a JSON handler on ``/json/``, drives it
with real clients (raw sockets, ``http.client``, ``requests``), plays a naive
handler (PULL + PUB) and writes every message, byte for byte, to
``tests/corpus/<name>.bin`` with a description in ``tests/corpus/index.json``.

Run it with ``.venv/bin/python tools/capture_corpus.py [--out DIR]``. Each
scenario checks the message kinds it expects, so a Mongrel2 that behaves
differently makes this script fail loudly instead of saving a surprise.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import zmq

from m2gate.testing.mongrel2 import HandlerSpec, Mongrel2

log = logging.getLogger("capture_corpus")

ROOT = Path(__file__).resolve().parents[1]
# Fixed idents keep the corpus stable from one capture to the next.
IDENTS = {
    "tnetstring": "3a5c1e0e-7d0b-4c55-9d8a-7f1b2f6a0c01",
    "json": "9e2f7c44-1b7a-4d1e-8c3e-5a6b7c8d9e02",
}
ROUTES = {"tnetstring": "/", "json": "/json/"}
TIMEOUT = 5.0
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


# -- a minimal, independent decoder (only to describe and check the corpus) ---


def _netstring(data: bytes, pos: int) -> tuple[bytes, bytes, int]:
    """Split ``len:payload<type>`` at ``pos``; returns payload, type byte, next pos."""
    colon = data.index(b":", pos)
    size = int(data[pos:colon])
    start = colon + 1
    end = start + size
    return data[start:end], data[end : end + 1], end + 1


def _tnet(payload: bytes, kind: bytes) -> Any:
    """Decode the tnetstring types Mongrel2 emits (dict, list, string, int, bool)."""
    if kind == b",":
        return payload
    if kind == b"#":
        return int(payload)
    if kind == b"!":
        return payload == b"true"
    if kind == b"~":
        return None
    items = []
    pos = 0
    while pos < len(payload):
        value, vkind, pos = _netstring(payload, pos)
        items.append(_tnet(value, vkind))
    if kind == b"]":
        return items
    if kind == b"}":
        return {k.decode("latin-1"): v for k, v in zip(items[::2], items[1::2], strict=True)}
    raise ValueError(f"unknown tnetstring type {kind!r}")


@dataclass
class Message:
    """A Mongrel2 request message, split the simple way."""

    raw: bytes
    sender: str
    conn_id: int
    path: str
    headers: dict[str, Any]
    body: bytes
    headers_format: str

    @classmethod
    def parse(cls, raw: bytes) -> Message:
        sender, conn, path, rest = raw.split(b" ", 3)
        hpayload, hkind, pos = _netstring(rest, 0)
        body, _bkind, _ = _netstring(rest, pos)
        if hkind == b"}":
            headers = _tnet(hpayload, hkind)
            fmt = "tnetstring"
        else:
            headers = json.loads(hpayload.decode("latin-1"), strict=False)
            fmt = "json"
        return cls(raw, sender.decode(), int(conn), path.decode("latin-1"), headers, body, fmt)

    def header(self, name: str) -> Any:
        return self.headers.get(name)

    def header_str(self, name: str) -> str:
        """A header as text whichever format carried it (bytes in tnetstring)."""
        value = self.headers[name]
        return value.decode("latin-1") if isinstance(value, bytes) else str(value)

    @property
    def method(self) -> str:
        value = self.headers.get("METHOD", "")
        return value.decode("latin-1") if isinstance(value, bytes) else str(value)

    @property
    def kind(self) -> str:
        """Classify the way a careful handler must (control needs ``@*`` *and* JSON)."""
        if self.path == "@*" and self.method == "JSON":
            body = json.loads(self.body)
            return str(body["type"])  # disconnect | credits
        if self.method == "WEBSOCKET_HANDSHAKE":
            return "websocket_handshake"
        if self.method == "WEBSOCKET" and "FLAGS" in self.headers:
            return "websocket_frame"
        start = self.header("x-mongrel2-upload-start")
        done = self.header("x-mongrel2-upload-done")
        if start is not None and done is not None and start == done:
            return "upload_done"
        if start is not None and done is None and not self.body:
            # A forged header on a small request looks the same on the wire, but
            # the forged one still carries the client's body (see the corpus).
            return "upload_start"
        return "request"


def _jsonable(value: Any) -> Any:
    """Headers as JSON for the index: bytes as latin-1 text, lists kept."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


# -- the capture harness --------------------------------------------------------


@dataclass
class Entry:
    name: str
    description: str
    protocol: str
    kind: str
    scenario: str
    message: Message
    settings: dict[str, object] = field(default_factory=dict)

    def index_row(self) -> dict[str, Any]:
        msg = self.message
        return {
            "name": self.name,
            "file": f"{self.name}.bin",
            "description": self.description,
            "protocol": self.protocol,
            "kind": self.kind,
            "scenario": self.scenario,
            "settings": self.settings,
            "sender": msg.sender,
            "conn_id": msg.conn_id,
            "path": msg.path,
            "method": msg.method,
            "headers": _jsonable(msg.headers),
            "header_types": {k: type(v).__name__ for k, v in msg.headers.items()},
            "body_length": len(msg.body),
            "size": len(msg.raw),
            "sha256": hashlib.sha256(msg.raw).hexdigest(),
        }


class Harness:
    """A naive handler per protocol plus bookkeeping of what gets saved."""

    def __init__(self, m2: Mongrel2, settings: dict[str, object]) -> None:
        self.m2 = m2
        self.settings = settings
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.pull: dict[str, zmq.Socket[bytes]] = {}
        self.pub: dict[str, zmq.Socket[bytes]] = {}
        for spec in m2.handlers:
            pull = self.ctx.socket(zmq.PULL)
            pull.connect(spec.send_spec)
            pub = self.ctx.socket(zmq.PUB)
            pub.setsockopt(zmq.LINGER, 1000)
            pub.connect(spec.recv_spec)
            self.pull[spec.protocol] = pull
            self.pub[spec.protocol] = pub
        self.entries: list[Entry] = []
        time.sleep(0.5)  # let the PUB sockets finish connecting (slow joiner)

    def close(self) -> None:
        for sock in [*self.pull.values(), *self.pub.values()]:
            sock.close(linger=500)

    def drain(self) -> None:
        """Drop leftovers (late disconnects of earlier scenarios)."""
        time.sleep(0.2)
        for pull in self.pull.values():
            while pull.poll(0):
                stale = Message.parse(pull.recv())
                log.debug("dropping leftover %s conn %s", stale.kind, stale.conn_id)

    def expect(
        self, protocol: str, kinds: list[str], conn_id: int | None = None, timeout: float = TIMEOUT
    ) -> list[Message]:
        """Receive messages of the expected kinds, in order.

        Disconnect notices are only taken when expected and for ``conn_id``; others
        are late notices of earlier connections and get skipped.
        """
        got: list[Message] = []
        deadline = time.monotonic() + timeout
        pull = self.pull[protocol]
        while len(got) < len(kinds):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not pull.poll(int(remaining * 1000)):
                raise RuntimeError(
                    f"{protocol}: expected {kinds}, got {[m.kind for m in got]} "
                    f"(error log tail: {self.m2.error_log.read_text()[-800:]!r})"
                )
            msg = Message.parse(pull.recv())
            want = kinds[len(got)]
            if msg.kind == "disconnect" and (want != "disconnect" or msg.conn_id != conn_id):
                # Late notice for a connection an earlier step already finished.
                log.debug("skipping disconnect for conn %s", msg.conn_id)
                continue
            if msg.kind != want:
                raise RuntimeError(
                    f"{protocol}: expected {kinds[len(got)]!r}, got {msg.kind!r}: {msg.raw[:300]!r}"
                )
            got.append(msg)
        return got

    def reply(self, protocol: str, conn_id: int | str, data: bytes) -> None:
        ident = IDENTS[protocol].encode()
        cid = str(conn_id).encode()
        self.pub[protocol].send(b"%s %d:%s, %s" % (ident, len(cid), cid, data))

    def save(
        self, name: str, msg: Message, description: str, scenario: str, kind: str | None = None
    ) -> None:
        proto = msg.headers_format
        full = f"{proto}_{name}"
        if any(e.name == full for e in self.entries):
            raise RuntimeError(f"duplicate corpus name {full}")
        self.entries.append(
            Entry(full, description, proto, kind or msg.kind, scenario, msg, dict(self.settings))
        )


def raw_client(m2: Mongrel2) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", m2.port), timeout=TIMEOUT)
    return sock


def read_response(sock: socket.socket, until: bytes = b"ok") -> bytes:
    """Read until ``until`` shows up or the peer closes."""
    data = b""
    while until not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def host(m2: Mongrel2) -> bytes:
    return f"127.0.0.1:{m2.port}".encode()


@contextmanager
def in_thread(fn: Callable[[], object]) -> Iterator[dict[str, object]]:
    """Run a blocking client call in a thread; its result lands in the dict."""
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except Exception as exc:  # reported by the caller
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield out
    thread.join(TIMEOUT)
    if "error" in out:
        raise RuntimeError(f"client failed: {out['error']!r}")


# -- scenarios ------------------------------------------------------------------


def simple_exchange(
    h: Harness,
    proto: str,
    request: bytes,
    name: str,
    description: str,
    wire_kind: str = "request",
) -> Message:
    """Send raw request bytes, capture the one request message, answer it.

    ``wire_kind`` is what the message looks like to a naive classifier; the
    index always records these as plain requests.
    """
    with raw_client(h.m2) as sock:
        sock.sendall(request)
        (msg,) = h.expect(proto, [wire_kind])
        h.save(name, msg, description, name, kind="request")
        h.reply(proto, msg.conn_id, OK)
        read_response(sock)
        h.reply(proto, msg.conn_id, b"")
    return msg


def scenarios_requests(h: Harness, proto: str) -> None:
    m2 = h.m2
    base = ROUTES[proto]
    hb = host(m2)

    # GET through http.client, the stdlib client.
    def get_simple() -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", m2.port, timeout=TIMEOUT)
        conn.request("GET", f"{base}hello")
        body = conn.getresponse().read()
        conn.close()
        return body

    with in_thread(get_simple):
        (msg,) = h.expect(proto, ["request"])
        h.save("get_simple", msg, "GET via http.client, HTTP/1.1 keep-alive", "get_simple")
        h.reply(proto, msg.conn_id, OK)
    h.drain()

    path = f"{base}caf%C3%A9/a%20b/%2Fslash".encode()
    simple_exchange(
        h,
        proto,
        b"GET " + path + b"?q=1&name=J%C3%BCrgen&flag&sp=a+b HTTP/1.1\r\nHost: " + hb + b"\r\n\r\n",
        "get_query",
        "GET with percent-encoded path (UTF-8, space, encoded slash) and a query string",
    )
    if proto == "tnetstring":
        # The mangled PATH starts with "//host", so only the "/" route can match it.
        simple_exchange(
            h,
            proto,
            b"GET http://" + hb + base.encode() + b"abs?x=1 HTTP/1.1\r\nHost: " + hb + b"\r\n\r\n",
            "get_absolute_uri",
            "absolute-form request target (proxy style): Mongrel2 keeps '//host/...' as PATH",
        )
    simple_exchange(
        h,
        proto,
        b"GET " + base.encode() + b"page?x=1#section-2 HTTP/1.1\r\nHost: " + hb + b"\r\n\r\n",
        "get_fragment",
        "GET whose request line carries a #fragment (browsers never send one)",
    )

    # POST through requests.
    def post_small() -> bytes:
        resp = requests.post(
            f"{m2.url}{base}form",
            data={"name": "Zoë", "msg": "a&b=c"},
            timeout=TIMEOUT,
            headers={"Connection": "close"},
        )
        return resp.content

    with in_thread(post_small):
        (msg,) = h.expect(proto, ["request"])
        h.save("post_form", msg, "urlencoded form POST via requests", "post_form")
        h.reply(proto, msg.conn_id, OK)
        h.reply(proto, msg.conn_id, b"")
    h.drain()

    body = bytes(range(256)) * 80  # exactly 20480 bytes, every byte value
    assert len(body) == 20480
    simple_exchange(
        h,
        proto,
        b"POST " + base.encode() + b"exact HTTP/1.1\r\nHost: " + hb + b"\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: 20480\r\n\r\n" + body,
        "post_20480",
        "binary POST of exactly limits.content_length (20480) bytes: still inline",
    )

    simple_exchange(
        h,
        proto,
        b"GET " + base.encode() + b"dup HTTP/1.1\r\nHost: " + hb + b"\r\n"
        b"X-Dup: one\r\nX-Dup: two\r\nX-Dup: three\r\nAccept: text/html\r\n"
        b"Cookie: a=1\r\nCookie: b=2\r\n\r\n",
        "headers_repeated",
        "three X-Dup headers and two Cookie headers (repeats kept in order)",
    )
    simple_exchange(
        h,
        proto,
        b"GET " + base.encode() + b"bytes HTTP/1.1\r\nHost: " + hb + b"\r\n"
        b"X-Latin1: caf\xe9 cr\xe8me\r\nX-Utf8: caf\xc3\xa9\r\n"
        b'X-Quote: say "hi" \\ back\\slash\r\nX-Tab: a\tb\r\nX-Empty:\r\n'
        b"X-Mixed-CASE: Value\r\n\r\n",
        "headers_bytes",
        "latin-1 and UTF-8 header bytes, quotes, backslash, tab, empty value, mixed-case name",
    )
    simple_exchange(
        h,
        proto,
        b"GET " + base.encode() + b"old HTTP/1.0\r\nHost: " + hb + b"\r\n\r\n",
        "http10",
        "HTTP/1.0 request (Mongrel2 leaves closing to the handler)",
    )
    simple_exchange(
        h,
        proto,
        b"GET " + base.encode() + b"nohost HTTP/1.0\r\n\r\n",
        "http10_no_host",
        "HTTP/1.0 request without a Host header",
    )
    simple_exchange(
        h,
        proto,
        b"JSON " + base.encode() + b"@* HTTP/1.1\r\nHost: " + hb + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 21\r\n\r\n"
        b'{"type":"disconnect"}',
        "method_json",
        "client request with method JSON and a disconnect-like body: NOT a control message",
    )
    simple_exchange(
        h,
        proto,
        b"POST " + base.encode() + b"forged HTTP/1.1\r\nHost: " + hb + b"\r\n"
        b"X-Mongrel2-Upload-Start: /etc/passwd\r\nContent-Length: 5\r\n\r\nhello",
        "upload_forged",
        "small POST with a client-forged X-Mongrel2-Upload-Start: /etc/passwd (must be ignored)",
    )
    simple_exchange(
        h,
        proto,
        b"POST " + base.encode() + b"forged2 HTTP/1.1\r\nHost: " + hb + b"\r\n"
        b"X-Mongrel2-Upload-Start: /etc/passwd\r\nX-Mongrel2-Upload-Done: /etc/passwd\r\n"
        b"Content-Length: 0\r\n\r\n",
        "upload_forged_done",
        "empty POST forging both upload headers equal (/etc/passwd, outside the temp store)",
        wire_kind="upload_done",
    )

    # Pipelining: two requests in one write, both forwarded before any reply.
    with raw_client(m2) as sock:
        one = b"GET " + base.encode() + b"first HTTP/1.1\r\nHost: " + hb + b"\r\n\r\n"
        two = b"GET " + base.encode() + b"second HTTP/1.1\r\nHost: " + hb + b"\r\n\r\n"
        sock.sendall(one + two)
        first, second = h.expect(proto, ["request", "request"])
        h.save("pipelined_1", first, "first of two pipelined requests", "pipelined")
        h.save("pipelined_2", second, "second pipelined request, same conn id", "pipelined")
        h.reply(proto, first.conn_id, OK + OK)
        read_response(sock, b"okHTTP")
        h.reply(proto, first.conn_id, b"")
    h.drain()

    # Keep-alive: a second request on the same connection after the reply.
    with raw_client(m2) as sock:
        for i in (1, 2):
            sock.sendall(b"GET " + base.encode() + b"ka%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, hb))
            (msg,) = h.expect(proto, ["request"])
            h.save(f"keepalive_{i}", msg, f"request {i} on one keep-alive connection", "keepalive")
            h.reply(proto, msg.conn_id, OK)
            read_response(sock)
        h.reply(proto, msg.conn_id, b"")
    h.drain()

    # Expect: 100-continue is answered by Mongrel2; the handler sees the request.
    with raw_client(m2) as sock:
        sock.sendall(
            b"PUT " + base.encode() + b"cont HTTP/1.1\r\nHost: " + hb + b"\r\n"
            b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\n"
        )
        interim = sock.recv(1024)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        sock.sendall(b"data")
        (msg,) = h.expect(proto, ["request"])
        h.save("expect_continue", msg, "PUT with Expect: 100-continue", "expect_continue")
        h.reply(proto, msg.conn_id, OK)
        read_response(sock)
        h.reply(proto, msg.conn_id, b"")
    h.drain()


def scenarios_disconnect(h: Harness, proto: str) -> None:
    m2 = h.m2
    base = ROUTES[proto]
    with raw_client(m2) as sock:
        sock.sendall(b"GET " + base.encode() + b"gone HTTP/1.1\r\nHost: " + host(m2) + b"\r\n\r\n")
        (req,) = h.expect(proto, ["request"])
    (disc,) = h.expect(proto, ["disconnect"], conn_id=req.conn_id)
    h.save(
        "disconnect_client_request",
        req,
        "request whose client closes before any reply",
        "disconnect_client",
    )
    h.save("disconnect_client", disc, "client closed before the reply", "disconnect_client")
    h.drain()

    h.reply(proto, 987654, OK)
    (disc,) = h.expect(proto, ["disconnect"], conn_id=987654)
    h.save(
        "disconnect_unknown_conn",
        disc,
        "answer to a reply addressed to an unknown connection id (987654)",
        "disconnect_unknown",
    )
    h.drain()


def scenarios_uploads(h: Harness, proto: str) -> None:
    m2 = h.m2
    base = ROUTES[proto]
    hb = host(m2)
    body = (b"0123456789abcdef" * 2000)[:30000]
    with raw_client(m2) as sock:
        sock.sendall(
            b"POST " + base.encode() + b"upload HTTP/1.1\r\nHost: " + hb + b"\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 30000\r\n\r\n" + body
        )
        start, done = h.expect(proto, ["upload_start", "upload_done"])
        path = Path(done.header_str("x-mongrel2-upload-done"))
        assert path.read_bytes() == body, "upload temp file differs from the body"
        path.unlink()
        h.save("upload_start", start, "POST of 30000 bytes (> 20480): upload started", "upload")
        h.save("upload_done", done, "the same upload, file complete", "upload")
        h.reply(proto, done.conn_id, OK)
        read_response(sock)
        h.reply(proto, done.conn_id, b"")
    h.drain()

    with raw_client(m2) as sock:
        sock.sendall(
            b"POST " + base.encode() + b"chunked HTTP/1.1\r\nHost: " + hb + b"\r\n"
            b"Transfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
            b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
        )
        start, done = h.expect(proto, ["upload_start", "upload_done"])
        path = Path(done.header_str("x-mongrel2-upload-done"))
        content = path.read_bytes()
        assert content == b"hello, world", content
        path.unlink()
        h.save("chunked_start", start, "small chunked POST: always an upload", "chunked")
        h.save("chunked_done", done, "chunked upload complete (no content-length)", "chunked")
        h.reply(proto, done.conn_id, OK)
        read_response(sock)
        h.reply(proto, done.conn_id, b"")
    h.drain()

    with raw_client(m2) as sock:
        sock.sendall(
            b"POST " + base.encode() + b"abort HTTP/1.1\r\nHost: " + hb + b"\r\n"
            b"Content-Length: 100000\r\n\r\n" + body
        )
        (start,) = h.expect(proto, ["upload_start"])
        h.save("upload_abort_start", start, "upload the client abandons", "upload_abort")
    (disc,) = h.expect(proto, ["disconnect"], conn_id=start.conn_id)
    h.save("upload_abort_disconnect", disc, "disconnect after an aborted upload", "upload_abort")
    leftover = Path(start.header_str("x-mongrel2-upload-start"))
    time.sleep(0.2)
    if leftover.exists():
        log.warning("aborted upload file %s was not deleted by Mongrel2", leftover)
        leftover.unlink()
    h.drain()


def ws_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame, as RFC 6455 requires from clients."""
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    size = len(payload)
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 65536:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def scenarios_websocket(h: Harness, proto: str) -> None:
    m2 = h.m2
    base = ROUTES[proto]
    key = base64.b64encode(b"m2gate-corpus-ky").decode()
    with raw_client(m2) as sock:
        sock.sendall(
            (
                f"GET {base}ws?room=1 HTTP/1.1\r\nHost: 127.0.0.1:{m2.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Protocol: chat\r\nOrigin: http://127.0.0.1\r\n\r\n"
            ).encode()
        )
        (hs,) = h.expect(proto, ["websocket_handshake"])
        expected = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        )
        assert hs.body == expected, (hs.body, expected)
        h.save("ws_handshake", hs, "websocket upgrade; body is Sec-WebSocket-Accept", "websocket")
        h.reply(
            proto,
            hs.conn_id,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + hs.body + b"\r\n\r\n",
        )
        assert read_response(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 101")

        frames = [
            ("ws_text", ws_frame(0x1, "héllo wörld".encode()), "masked text frame (0x81)"),
            ("ws_binary", ws_frame(0x2, bytes(range(200))), "binary frame, 200 bytes (0x82)"),
            (
                "ws_fragmented",
                ws_frame(0x1, b"frag", fin=False) + ws_frame(0x0, b"ment", fin=True),
                "text message in two fragments: arrives reassembled",
            ),
            ("ws_ping", ws_frame(0x9, b"are you there"), "ping frame with payload (0x89)"),
            ("ws_big", ws_frame(0x2, b"x" * 65600), "binary frame with 64-bit length"),
            (
                "ws_close",
                ws_frame(0x8, (1000).to_bytes(2, "big") + b"bye"),
                "close frame, code 1000 + reason",
            ),
        ]
        for name, data, desc in frames:
            sock.sendall(data)
            (frame,) = h.expect(proto, ["websocket_frame"])
            h.save(name, frame, desc, "websocket")
        h.reply(proto, hs.conn_id, bytes([0x88, 2]) + (1000).to_bytes(2, "big"))
        h.reply(proto, hs.conn_id, b"")
    h.drain()


def scenarios_credits(h: Harness, proto: str) -> None:
    m2 = h.m2
    base = ROUTES[proto]
    with raw_client(m2) as sock:
        sock.sendall(b"GET " + base.encode() + b"big HTTP/1.1\r\nHost: " + host(m2) + b"\r\n\r\n")
        (req,) = h.expect(proto, ["request"])
        h.save(
            "credits_request",
            req,
            "first request with download.flow_control=1 (DOWNLOAD_CREDITS)",
            "credits",
        )
        size = 3 * 10000
        h.reply(
            proto,
            req.conn_id,
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"a" * 10000,
        )
        (c1,) = h.expect(proto, ["credits"])
        h.reply(proto, req.conn_id, b"b" * 10000)
        h.reply(proto, req.conn_id, b"c" * 10000)
        c2, c3 = h.expect(proto, ["credits", "credits"])
        h.save("credits_1", c1, "credits after the first write (head + 10000 bytes)", "credits")
        h.save("credits_2", c2, "credits after a 10000 byte write", "credits")
        h.save("credits_3", c3, "credits after another 10000 byte write", "credits")
        got = b""
        while len(got) < size:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        h.reply(proto, req.conn_id, b"")
        # A second request on the same connection: is DOWNLOAD_CREDITS repeated?
    h.drain()
    with raw_client(m2) as sock:
        for i in (1, 2):
            sock.sendall(
                b"GET " + base.encode() + b"again%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, host(m2))
            )
            (req,) = h.expect(proto, ["request"])
            h.save(
                f"credits_keepalive_{i}",
                req,
                f"request {i} on one connection with flow control",
                "credits",
            )
            h.reply(proto, req.conn_id, OK)
            h.expect(proto, ["credits"])
            read_response(sock)
        h.reply(proto, req.conn_id, b"")
    h.drain()


# -- main -----------------------------------------------------------------------


def run(
    workdir: Path, settings: dict[str, object], scenarios: list[Callable[[Harness, str], None]]
) -> list[Entry]:
    handlers = [
        HandlerSpec(route=ROUTES[p], send_ident=IDENTS[p], protocol=p)
        for p in ("tnetstring", "json")
    ]
    with Mongrel2(workdir, handlers=handlers, settings=settings) as m2:
        h = Harness(m2, dict(m2.settings))
        try:
            for proto in ("tnetstring", "json"):
                for scenario in scenarios:
                    log.info("%s: %s", proto, scenario.__name__)
                    scenario(h, proto)
                    h.drain()
        finally:
            h.close()
        return h.entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "corpus")
    parser.add_argument("--keep", action="store_true", help="keep the Mongrel2 workdirs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    base = Path(tempfile.mkdtemp(prefix="m2corpus-"))
    try:
        entries = run(
            base / "plain",
            {},
            [scenarios_requests, scenarios_disconnect, scenarios_uploads, scenarios_websocket],
        )
        entries += run(base / "flow", {"download.flow_control": 1}, [scenarios_credits])
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.bin"):
        old.unlink()
    for entry in entries:
        (out / f"{entry.name}.bin").write_bytes(entry.message.raw)
    index = {
        "about": (
            "Raw ZeroMQ messages pushed by a real Mongrel2 "
            f"({mongrel2_version()}), captured by tools/capture_corpus.py. "
            "Each .bin file is one message exactly as received. 'headers' and "
            "'header_types' come from the capture script's own simple decoder "
            "(bytes shown as latin-1)."
        ),
        "content_length_limit": 20480,
        "send_idents": IDENTS,
        "routes": ROUTES,
        "messages": [e.index_row() for e in entries],
    }
    (out / "index.json").write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n")
    log.info("wrote %d messages to %s", len(entries), out)
    return 0


def mongrel2_version() -> str:
    """The Debian package version, for the record."""
    try:
        import subprocess

        res = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "mongrel2-core"],
            capture_output=True,
            text=True,
            check=False,
        )
        return f"mongrel2-core {res.stdout.strip()}" if res.returncode == 0 else "mongrel2"
    except OSError:
        return "mongrel2"


if __name__ == "__main__":
    sys.exit(main())
