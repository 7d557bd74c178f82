"""The master's pidfile: an ``flock`` held for its lifetime, and the paths next to it.

ZeroMQ connects never fail the way a second ``bind`` would, so without this
lock a second ``m2gate serve`` would silently share Mongrel2's requests. The
control socket lives next to the pidfile (``m2gate.pid`` -> ``m2gate.sock``),
so whoever knows the pidfile can find the master; an app folder's pidfile is
``DIR/run/m2gate.pid``.
"""

from __future__ import annotations

import errno
import fcntl
import os

from m2gate.config.declare import ConfigError
from m2gate.config.paths import OPEN_FLAGS, open_own, uid_of, unlink_if_same


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
    """An ``flock``-ed pidfile: held while this process runs, removed at exit.

    Opened with :func:`m2gate.config.paths.open_own` (no symlink, a regular
    file of ours, in a directory only root can change when we are root); it
    is never chowned: the master keeps the fd, and nobody else need write it.
    """

    def __init__(self, path: str, user: str = "") -> None:
        self.path = os.path.abspath(path)
        self.user = user  # --user: a previous run's file may be that user's
        self.fd: int | None = None
        self.ident: tuple[int, int] | None = None

    def acquire(self) -> PidFile:
        owner = uid_of(self.user)
        try:
            fd = open_own(
                self.path,
                os.O_RDWR | os.O_CREAT,
                "pidfile",
                0o644,
                () if owner is None else (owner,),
            )
        except ConfigError as exc:
            raise AlreadyRunning(str(exc)) from None
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
        st = os.fstat(fd)
        self.fd, self.ident = fd, (st.st_dev, st.st_ino)
        return self

    def release(self) -> None:
        """Remove the file if the path is still the inode we lock, and drop the lock."""
        if self.fd is None:
            return
        unlink_if_same(self.path, self.ident)
        os.close(self.fd)
        self.fd = None


def read_pid(path: str) -> int | None:
    """The PID written in ``path``; None if it is missing or not a number."""
    try:
        fd = os.open(path, os.O_RDONLY | OPEN_FLAGS)
    except OSError:
        return None
    try:
        text = os.read(fd, 64).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)
    return int(text) if (text.isascii() and text.isdigit()) else None


def is_locked(path: str) -> bool:
    """True while some process holds the pidfile's lock (a master is running)."""
    try:
        fd = os.open(path, os.O_RDONLY | OPEN_FLAGS)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
