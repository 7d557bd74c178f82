"""The master's control socket: one JSON request and one JSON response per connection.

``m2gate status|stop|reload`` (m2gate.cli.control) connect to it; the socket
sits next to the pidfile (:func:`m2gate.ops.pidfile.control_path_for`) and
only the master's user may connect.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable
from typing import Any

from m2gate.ops.listener import Listener
from m2gate.ops.pidfile import AlreadyRunning

MAX_REQUEST = 64 * 1024

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlServer(Listener):
    """A unix socket served by a thread; ``handle`` runs each request.

    The thread only parses and answers; ``handle`` is expected to pass the
    request to the master's loop (so all state changes happen there).
    """

    def __init__(self, path: str, handle: Handler) -> None:
        self.path = path
        self.handle = handle
        if os.path.exists(path):
            _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)  # only our user may command the master
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        sock.listen(16)
        sock.settimeout(0.2)
        super().__init__(sock, "control", "control socket")

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

    def close(self) -> None:
        super().close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def _remove_stale_socket(path: str) -> None:
    """A socket file nobody listens on is left over from a killed master."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
    else:
        raise AlreadyRunning("control socket %s is in use by another m2gate" % path)
    finally:
        probe.close()
