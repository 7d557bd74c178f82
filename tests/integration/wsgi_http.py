"""Helpers for the WSGI integration tests: a raw HTTP/1.x client and log checks.

The raw client exists because the tests must see exact bytes on the wire:
chunked framing, who closes the connection, pipelined answers, header bytes
that a real client library would refuse to send.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TIMEOUT = 15.0

# What wsgiref's validator leaves in the server log when m2gate breaks PEP 3333
# (its assertions raise AssertionError; warnings are errors in wsgi_probe).
VALIDATOR_MARKS = ("AssertionError", "WSGIWarning", "garbage collected without being closed")


@dataclass
class RawResponse:
    """One parsed response, plus how it was framed on the wire."""

    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    framing: str  # "length", "chunked", "close" or "none"
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = True  # False: the connection ended inside the body
    head_bytes: bytes = b""

    def header(self, name: str) -> str | None:
        values = self.header_all(name)
        return ", ".join(values) if values else None

    def header_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for n, v in self.headers if n.lower() == lname]

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """A plain TCP connection speaking HTTP/1.x by hand."""

    def __init__(self, port: int, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = bytearray()
        self.eof = False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        version: str = "HTTP/1.1",
        host: str | None = "localhost",
    ) -> None:
        self.send(build_request(method, target, headers, body, version, host))

    def _fill(self) -> bool:
        if self.eof:
            return False
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _read_until(self, marker: bytes) -> bytes | None:
        while True:
            pos = self.buf.find(marker)
            if pos >= 0:
                out = bytes(self.buf[: pos + len(marker)])
                del self.buf[: pos + len(marker)]
                return out
            if not self._fill():
                return None

    def _read_exact(self, size: int) -> bytes | None:
        while len(self.buf) < size:
            if not self._fill():
                return None
        out = bytes(self.buf[:size])
        del self.buf[:size]
        return out

    def read_response(self, method: str = "GET") -> RawResponse:
        """Read one response; raises ConnectionError if none arrives."""
        head = self._read_until(b"\r\n\r\n")
        if head is None:
            raise ConnectionError("connection closed before a response (got %r)" % self.buf)
        lines = head[:-4].split(b"\r\n")
        version, code, reason = [*lines[0].decode("latin-1").split(" ", 2), ""][:3]
        headers = []
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        resp = RawResponse(int(code), reason, version, headers, b"", "none", head_bytes=head)
        status = resp.status
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return resp
        te = (resp.header("Transfer-Encoding") or "").lower()
        length = resp.header("Content-Length")
        if "chunked" in te:
            resp.framing = "chunked"
            self._read_chunks(resp)
        elif length is not None:
            resp.framing = "length"
            data = self._read_exact(int(length))
            resp.complete = data is not None
            resp.body = data if data is not None else bytes(self.buf)
        else:
            resp.framing = "close"
            while self._fill():
                pass
            resp.body = bytes(self.buf)
            self.buf.clear()
        return resp

    def _read_chunks(self, resp: RawResponse) -> None:
        parts = []
        while True:
            line = self._read_until(b"\r\n")
            if line is None:
                resp.complete = False
                break
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                trailer = self._read_until(b"\r\n")
                resp.complete = trailer == b"\r\n"
                break
            data = self._read_exact(size + 2)
            if data is None or data[-2:] != b"\r\n":
                resp.complete = False
                break
            parts.append(data[:-2])
        resp.chunks = parts
        resp.body = b"".join(parts)

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        """True if the server closes the connection (EOF) within ``timeout``.

        Any bytes that arrive instead mean it is not closed (and are kept).
        """
        if self.eof:
            return True
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(TIMEOUT)
        if not data:
            self.eof = True
            return True
        self.buf += data
        return False


def build_request(
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    version: str = "HTTP/1.1",
    host: str | None = "localhost",
) -> bytes:
    """Bytes of one request; header values are latin-1 so any byte can be sent."""
    lines = ["%s %s %s" % (method, target, version)]
    if host is not None:
        lines.append("Host: " + host)
    for name, value in headers or []:
        lines.append("%s: %s" % (name, value))
    if body or method in ("POST", "PUT"):
        if not any(n.lower() == "content-length" for n, _ in headers or []):
            lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def raw_get(port: int, target: str, **kwargs: Any) -> RawResponse:
    """One request on a fresh connection."""
    method = kwargs.pop("method", "GET")
    with RawClient(port) as client:
        client.request(method, target, **kwargs)
        return client.read_response(method)


def read_events(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


def wait_for_event(path: Path, event: str, timeout: float = 10.0, prefix: bool = False) -> bool:
    """Poll the app's event file until ``event`` shows up (close() runs async).

    With ``prefix``, any event starting with ``event`` counts.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = read_events(path)
        if event in seen or (prefix and any(e.startswith(event) for e in seen)):
            return True
        time.sleep(0.02)
    return False


def validator_complaints(log_text: str) -> list[str]:
    """Lines of a server log that show wsgiref's validator objecting."""
    return [line for line in log_text.splitlines() if any(m in line for m in VALIDATOR_MARKS)]


def expected_digest(total: int, chunk: int) -> str:
    """sha256 of what the probe app's ``/big?size=total&chunk=chunk`` streams.

    Recomputed here from the same recipe (block i = sha256(i) repeated), not
    imported from the app, so the test does not trust the server side.
    """
    digest = hashlib.sha256()
    sent = index = 0
    while sent < total:
        size = min(chunk, total - sent)
        seed = hashlib.sha256(index.to_bytes(8, "big")).digest()
        digest.update((seed * (size // len(seed) + 1))[:size])
        sent += size
        index += 1
    return digest.hexdigest()
