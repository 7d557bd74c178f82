"""The master's control socket: one JSON request and one JSON response per connection.

``m2gate status|stop|reload`` (m2gate.cli.control) connect to it; the socket
sits next to the pidfile (:func:`m2gate.ops.pidfile.control_path_for`) and
only the master's user may connect (umask 077). Started as root with
``--user``, :func:`prebind_control` binds it before privileges are dropped,
so the pidfile's directory stays root's.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

from m2gate.ops.listener import Ident, Listener, SocketInUse, adopt, bind_unix, prebind
from m2gate.ops.pidfile import AlreadyRunning

MAX_REQUEST = 64 * 1024

Handler = Callable[[dict[str, Any]], dict[str, Any]]

SETTING = "pidfile"  # the control socket's path is derived from it


def _bind(path: str) -> tuple[socket.socket, Ident]:
    try:
        sock, ident = bind_unix(path, SETTING)
    except SocketInUse:
        raise AlreadyRunning("control socket %s is in use by another m2gate" % path) from None
    sock.listen(16)
    return sock, ident


def prebind_control(path: str) -> None:
    """Bind the control socket now (as root); :class:`ControlServer` adopts it."""
    prebind("unix:" + path, *_bind(path))


class ControlServer(Listener):
    """A unix socket served by threads; ``handle`` runs each request.

    The threads only parse and answer; ``handle`` is expected to pass the
    request to the master's loop (so all state changes happen there).
    """

    def __init__(self, path: str, handle: Handler) -> None:
        self.handle = handle
        sock, ident = adopt("unix:" + path) or _bind(path)
        super().__init__(sock, "control", "control socket", path, ident)

    def _answer(self, conn: socket.socket) -> None:
        data = b""
        while b"\n" not in data and len(data) < MAX_REQUEST:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        try:
            request = json.loads(data)
            if not isinstance(request, dict):
                raise ValueError("not an object")
            response = self.handle(request)
        except ValueError as exc:
            response = {"ok": False, "error": "bad request: %s" % exc}
        conn.sendall(json.dumps(response).encode() + b"\n")
