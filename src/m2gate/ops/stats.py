"""The servers of ``--stats`` (JSON, uWSGI stats-server style) and ``--metrics``.

The master already knows every number (it sees every request start and end,
workers send RSS and exception counts in their heartbeats), so both are
rendered from one snapshot taken in the master's loop; no per-process
metric files as prometheus-client's multiprocess mode would need. The
Prometheus exposition itself is :mod:`m2gate.ops.metrics` (prometheus-client,
an optional extra: :func:`require_metrics`).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

from m2gate.config.declare import ConfigError
from m2gate.ops.listener import Ident, Listener, SocketInUse, adopt, bind_unix, prebind

log = logging.getLogger("m2gate.stats")

Snapshot = Callable[[], dict[str, Any]]
Render = Callable[[str], tuple[bytes, str]]  # the request's Accept header -> body, type

METRICS_EXTRA = "pip install 'm2gate[metrics]'"


class Unavailable(Exception):
    """The document cannot be made now (the master did not answer): HTTP 503."""


def require_metrics() -> None:
    """Fail at start-up, in one line, when ``--metrics`` is set without prometheus-client."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError(
            "metrics: serving Prometheus metrics needs the prometheus-client package: %s"
            % METRICS_EXTRA
        ) from None


DEFAULT_HOST = "127.0.0.1"  # the documents list request paths and pids: not for the world


def tcp_address(addr: str) -> tuple[str, int]:
    """``(host, port)`` for ``HOST:PORT``; ``:PORT`` means loopback, ``[::]:PORT`` all IPv6."""
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or DEFAULT_HOST, int(port)


def listen(addr: str, setting: str = "stats") -> tuple[socket.socket, Ident | None]:
    """A listening socket on ``HOST:PORT`` or a unix path (one with a ``/``).

    A unix path goes through :func:`m2gate.ops.listener.bind_unix` (a stale
    socket is removed, anything else there is refused); the second value is
    its inode, for removing it at exit.
    """
    ident = None
    if "/" in addr:
        try:
            sock, ident = bind_unix(addr, setting)
        except SocketInUse as exc:
            raise ConfigError(str(exc)) from None
    else:
        host, port = tcp_address(addr)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
    sock.listen(16)
    return sock, ident


def prebind_document(addr: str, setting: str) -> None:
    """Bind ``--stats``/``--metrics`` now (as root); the DocumentServer adopts it."""
    try:
        prebind(setting + ":" + addr, *listen(addr, setting))
    except OSError as exc:
        raise ConfigError(
            "%s: cannot listen on %s: %s" % (setting, addr, exc.strerror or exc)
        ) from None


def _accept_header(head: bytes) -> str:
    for line in head.split(b"\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"accept":
            return value.strip().decode("latin-1")
    return ""


class DocumentServer(Listener):
    """Serves ``render(accept)`` to each connection from a thread.

    ``http=False`` writes the document and closes (uWSGI's stats server: ``nc
    host port`` works); ``http=True`` reads the request head first and answers
    HTTP/1.0 (what Prometheus scrapes), passing its ``Accept`` header on (the
    metrics choose their format by it); :class:`Unavailable` becomes a 503.
    """

    def __init__(self, addr: str, render: Render, http: bool, name: str) -> None:
        sock, ident = adopt(name + ":" + addr) or listen(addr, name)
        super().__init__(sock, name, addr, addr if "/" in addr else "", ident)
        self.addr = addr
        self.render = render
        self.http = http

    def _answer(self, conn: socket.socket) -> None:
        if self.http:
            head = b""
            while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < 16384:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                head += chunk
            status = b"200 OK"
            try:
                body, ctype = self.render(_accept_header(head))
            except Unavailable as exc:
                status, body, ctype = (
                    b"503 Service Unavailable",
                    b"%s\n" % str(exc).encode(),
                    "text/plain",
                )
            method = head.split(b" ", 1)[0]
            conn.sendall(
                b"HTTP/1.0 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n"
                % (status, ctype.encode(), len(body))
                + (b"" if method == b"HEAD" else body)
            )
        else:
            body, _ = self.render("")
            conn.sendall(body)
