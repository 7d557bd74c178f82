"""``--stats`` (JSON, uWSGI stats-server style) and ``--metrics`` (Prometheus text).

The master already knows every number (it sees every request start and end,
workers send RSS and exception counts in their heartbeats), so both are
rendered from one snapshot taken in the master's loop; no per-process
metric files as prometheus-client's multiprocess mode would need.
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


class DocumentServer(Listener):
    """Serves ``render()`` to each connection from a thread.

    ``http=False`` writes the document and closes (uWSGI's stats server: ``nc
    host port`` works); ``http=True`` reads the request head first and answers
    HTTP/1.0 (what Prometheus scrapes).
    """

    def __init__(
        self, addr: str, render: Callable[[], tuple[bytes, str]], http: bool, name: str
    ) -> None:
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
            body, ctype = self.render()
            method = head.split(b" ", 1)[0]
            conn.sendall(
                b"HTTP/1.0 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n"
                % (ctype.encode(), len(body))
                + (b"" if method == b"HEAD" else body)
            )
        else:
            body, _ = self.render()
            conn.sendall(body)


# -- Prometheus text format (version 0.0.4) -------------------------------------

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: Any) -> str:
    text = str(value)
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: dict[str, Any]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join('%s="%s"' % (k, _label(v)) for k, v in pairs.items()) + "}"


def _num(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def render_metrics(doc: dict[str, Any]) -> str:
    """The stats snapshot as Prometheus metrics."""
    out: list[str] = []

    def family(
        name: str, kind: str, help_text: str, samples: list[tuple[dict[str, Any], float]]
    ) -> None:
        out.append("# HELP %s %s" % (name, help_text))
        out.append("# TYPE %s %s" % (name, kind))
        for labels, value in samples:
            out.append("%s%s %s" % (name, _labels(labels), _num(value)))

    family(
        "m2gate_requests_total",
        "counter",
        "Requests served by all workers since start.",
        [({}, doc["requests"])],
    )
    family(
        "m2gate_queued_requests",
        "gauge",
        "Requests waiting in the master for a free worker.",
        [({}, doc["queued"])],
    )
    family(
        "m2gate_rejected_requests_total",
        "counter",
        "Requests answered 503 because no worker could take them.",
        [({}, doc["rejected"])],
    )
    family(
        "m2gate_harakiri_total",
        "counter",
        "Workers killed for a request over --harakiri.",
        [({}, doc["harakiri"])],
    )
    family(
        "m2gate_worker_restarts_total",
        "counter",
        "Workers started to replace another.",
        [({}, doc["restarts"])],
    )
    family("m2gate_reloads_total", "counter", "Completed graceful reloads.", [({}, doc["reloads"])])
    family(
        "m2gate_generation",
        "gauge",
        "Generation of the workers serving now.",
        [({}, doc["generation"])],
    )
    states: dict[str, int] = {}
    for w in doc["workers"]:
        states[w["status"]] = states.get(w["status"], 0) + 1
    family(
        "m2gate_workers",
        "gauge",
        "Worker processes by status.",
        [({"status": s}, n) for s, n in sorted(states.items())],
    )
    per_worker = [
        ("m2gate_worker_requests_total", "counter", "Requests served by the worker.", "requests"),
        (
            "m2gate_worker_exceptions_total",
            "counter",
            "App exceptions in the worker.",
            "exceptions",
        ),
        (
            "m2gate_worker_disconnects_total",
            "counter",
            "Clients that went away while the worker served them.",
            "disconnects",
        ),
        ("m2gate_worker_rss_bytes", "gauge", "Resident memory of the worker.", "rss"),
        (
            "m2gate_worker_busy_connections",
            "gauge",
            "Connections the worker is serving now.",
            "busy",
        ),
        (
            "m2gate_worker_avg_request_seconds",
            "gauge",
            "Mean request duration in the worker.",
            "avg_request_time",
        ),
        (
            "m2gate_worker_last_request_seconds",
            "gauge",
            "Duration of the worker's last request.",
            "last_request_time",
        ),
    ]
    for name, kind, help_text, field in per_worker:
        family(
            name,
            kind,
            help_text,
            [
                ({"worker": w["id"], "pid": w["pid"], "generation": w["generation"]}, w[field])
                for w in doc["workers"]
            ],
        )
    return "\n".join(out) + "\n"
