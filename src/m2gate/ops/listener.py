"""A listening socket answered one connection at a time by a daemon thread.

The master's control socket, ``--stats`` and ``--metrics`` all work this way:
the thread only reads and answers; whatever changes state is handed to the
master's loop by the callbacks the subclasses are given.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Self

log = logging.getLogger("m2gate.listener")


class Listener:
    """Accepts on ``sock`` (listening, with a short timeout) until :meth:`close`."""

    def __init__(self, sock: socket.socket, name: str, what: str) -> None:
        self.sock = sock
        self.what = what
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="m2gate-" + name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def fileno(self) -> int:
        return self.sock.fileno()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            with conn:
                conn.settimeout(5.0)
                try:
                    self._answer(conn)
                except OSError as exc:
                    log.debug("%s: %s", self.what, exc)
                except Exception:
                    log.exception("%s: answering failed", self.what)

    def _answer(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(1.0)
