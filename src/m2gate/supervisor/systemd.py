"""``sd_notify``: the master's readiness, reloads and stop, told to systemd."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("m2gate.master")


def sd_notify(state: str) -> None:
    """Tell systemd (``Type=notify``) about our state; no-op without NOTIFY_SOCKET."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(addr)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
