"""Listening sockets answered by short-lived threads, and binding them safely.

The master's control socket, ``--stats`` and ``--metrics`` all work this way:
an accept thread hands each connection to a thread of its own (at most
:data:`MAX_CONNECTIONS` at once, each with a short timeout), so one idle or
slow client cannot make a concurrent scrape or ``m2gate status`` time out.
The threads only read and answer; whatever changes state is handed to the
master's loop by the callbacks the subclasses are given.

Every accepted connection is registered while a fork cannot happen, and a
forked worker closes its copies at once (:func:`os.register_at_fork`). A
worker's copy would otherwise keep the connection open after the master
answered and closed its own: a ``--stats`` client, which reads until EOF,
hung until it gave up (4 runs in 8 when it connected while the master forked
its first workers).

Unix socket paths are bound by :func:`bind_unix`: a stale path is removed
only if it is a socket nobody listens on, and only the inode we bound is
removed at exit. :func:`prebind` binds a listener while still root (before
``--user`` drops privileges, so the directory can stay root's); the server
later made for the same address adopts it.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import stat
import threading
from typing import Self

from m2gate.config.declare import ConfigError
from m2gate.config.paths import check_directory, unlink_if_same

log = logging.getLogger("m2gate.listener")

MAX_CONNECTIONS = 32  # served at once; more are closed at once (a scrape retries)
CONNECTION_TIMEOUT = 2.0  # seconds a client may take per read or write
ACCEPT_POLL = 0.2  # seconds between checks of the stop flag

Ident = tuple[int, int]  # (st_dev, st_ino) of a unix socket we bound

_prebound: dict[str, tuple[socket.socket, Ident | None]] = {}

# The connections open now, in every listener. The lock is held across each
# fork, so a connection is either in the set (closed in the child) or not yet
# accepted.
_open_lock = threading.Lock()
_open: set[socket.socket] = set()


def _close_in_child() -> None:
    """In a forked child: close its copies of the open connections (the parent answers them)."""
    for conn in _open:
        conn.close()
    _open.clear()
    _open_lock.release()  # taken by the parent's thread that forked: this very thread


os.register_at_fork(
    before=_open_lock.acquire, after_in_parent=_open_lock.release, after_in_child=_close_in_child
)


def open_connections() -> int:
    """How many connections the listeners of this process have open (for tests)."""
    with _open_lock:
        return len(_open)


class SocketInUse(Exception):
    """A live server already listens on the unix socket path."""


def bind_unix(path: str, setting: str) -> tuple[socket.socket, Ident]:
    """A unix socket bound at ``path``; also its (st_dev, st_ino) for removing it later.

    A leftover is removed only if ``lstat`` shows a socket, nobody answers
    on it, and it is still the same inode right before the unlink; anything
    else there (a regular file, a symlink) is refused, never deleted.
    """
    check_directory(path, setting)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(
                "%s: %s exists and is not a socket; refusing to remove it" % (setting, path)
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(path)
        except OSError:
            pass  # a socket file nobody listens on: left over from a killed process
        else:
            raise SocketInUse("%s %s is in use by another m2gate" % (setting, path))
        finally:
            probe.close()
        unlink_if_same(path, (st.st_dev, st.st_ino))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)  # only our user may connect
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            "%s: cannot listen on %s: %s" % (setting, path, exc.strerror or exc)
        ) from None
    finally:
        os.umask(old)
    made = os.lstat(path)
    return sock, (made.st_dev, made.st_ino)


def prebind(key: str, sock: socket.socket, ident: Ident | None = None) -> None:
    """Keep listening ``sock`` for the server that will be made for ``key`` (its address)."""
    old = _prebound.pop(key, None)
    if old is not None:
        old[0].close()
    _prebound[key] = (sock, ident)


def adopt(key: str) -> tuple[socket.socket, Ident | None] | None:
    """The socket :func:`prebind` kept for ``key``, if any (handed over once)."""
    return _prebound.pop(key, None)


def _forget(conn: socket.socket) -> None:
    """Close ``conn`` and drop it from the set a fork closes (both, or neither, at a fork)."""
    with _open_lock:
        _open.discard(conn)
        conn.close()


class Listener:
    """Accepts on ``sock`` (listening) until :meth:`close`; each connection in a thread.

    ``path``/``ident``: a unix socket we bound, removed at close if it is
    still that inode.
    """

    def __init__(
        self,
        sock: socket.socket,
        name: str,
        what: str,
        path: str = "",
        ident: Ident | None = None,
    ) -> None:
        sock.setblocking(False)  # accepted under _open_lock once poll says one waits
        self.sock = sock
        self.what = what
        self.path = path
        self.ident = ident
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="m2gate-" + name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def fileno(self) -> int:
        return self.sock.fileno()

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(ACCEPT_POLL * 1000):
                continue
            with _open_lock:
                try:
                    conn, _ = self.sock.accept()
                except OSError:  # the client gave up meanwhile, or close() closed the socket
                    continue
                _open.add(conn)
            if not self._slots.acquire(blocking=False):
                log.warning("%s: %d connections open, refusing one", self.what, MAX_CONNECTIONS)
                _forget(conn)
                continue
            threading.Thread(
                target=self._one, args=(conn,), name=self._thread.name + "-conn", daemon=True
            ).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(CONNECTION_TIMEOUT)
            self._answer(conn)
        except OSError as exc:
            log.debug("%s: %s", self.what, exc)
        except Exception:
            log.exception("%s: answering failed", self.what)
        finally:
            _forget(conn)
            self._slots.release()

    def _answer(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(1.0)
        if self.path:
            unlink_if_same(self.path, self.ident)
