"""The master's pidfile: an ``flock`` held for its lifetime, and the paths next to it.

ZeroMQ connects never fail the way a second ``bind`` would, so without this
lock a second ``m2gate serve`` would silently share Mongrel2's requests. The
control socket lives next to the pidfile (``m2gate.pid`` -> ``m2gate.sock``),
so whoever knows the pidfile can find the master; an app folder's pidfile is
``DIR/run/m2gate.pid``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os


class AlreadyRunning(Exception):
    """Another master holds the pidfile; the message is the one line shown."""


def control_path_for(pidfile: str) -> str:
    """Where the control socket of the master owning ``pidfile`` listens."""
    root, ext = os.path.splitext(pidfile)
    return (root if ext == ".pid" else pidfile) + ".sock"


def pidfile_for_app_dir(app_dir: str) -> str:
    """The pidfile of an app folder made by ``m2gate init``."""
    return os.path.join(os.path.abspath(app_dir), "run", "m2gate.pid")


class PidFile:
    """An ``flock``-ed pidfile: held while this process runs, removed at exit."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.fd: int | None = None

    def acquire(self) -> PidFile:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise AlreadyRunning(
                "pidfile: cannot open %s: %s" % (self.path, exc.strerror or exc)
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            pid = read_pid(self.path)
            raise AlreadyRunning(
                "pidfile: %s is locked by a running m2gate%s; stop it first or use another"
                " --pidfile" % (self.path, " (pid %d)" % pid if pid else "")
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, b"%d\n" % os.getpid())
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        """Remove the file (still ours: we hold the lock) and drop the lock."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None


def read_pid(path: str) -> int | None:
    """The PID written in ``path``; None if it is missing or not a number."""
    try:
        with open(path, encoding="ascii") as fh:
            text = fh.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def is_locked(path: str) -> bool:
    """True while some process holds the pidfile's lock (a master is running)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
