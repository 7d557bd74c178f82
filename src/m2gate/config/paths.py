"""Proving that a file a setting names is m2gate's own before opening, writing or deleting it.

Started as root with ``--user``, m2gate creates its pidfile, log files and
sockets before dropping privileges. A path in a directory someone else can
write may be swapped for a symlink or a hard link to a file that is not ours
(``/etc/shadow``), so: every such directory must be root's (or ours) and not
writable by others; the last component is opened with ``O_NOFOLLOW``; and the
opened file itself (``fstat`` on the fd, not the path) must be a regular file
with one link, owned by us or by the user we become.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from collections.abc import Iterable

from m2gate.config.declare import ConfigError

OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO cannot hang us


def uid_of(user: str) -> int | None:
    """The uid ``--user`` names (None: none given or unknown; validated elsewhere)."""
    if not user:
        return None
    if user.isascii() and user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def check_directory(path: str, setting: str) -> None:
    """As root, refuse when a directory leading to ``path`` could be changed by others.

    Each directory from ``/`` to the parent must be owned by root (or us) and
    not group/other-writable, unless sticky (``/tmp``: others cannot rename
    or delete what is ours there, and what they plant is caught by the owner
    check of :func:`open_own`). Not root: nothing can be stolen from us that
    we do not already own, so nothing is checked.
    """
    if os.geteuid() != 0:
        return
    parent = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    current = "/"
    for part in ["", *[p for p in parent.split("/") if p]]:
        current = os.path.join(current, part)
        try:
            st = os.stat(current)
        except FileNotFoundError:
            return  # the open (or bind) reports it
        except OSError as exc:
            raise ConfigError(
                "%s: cannot check %s: %s" % (setting, current, exc.strerror or exc)
            ) from None
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if st.st_uid not in (0, os.geteuid()) or (writable and not st.st_mode & stat.S_ISVTX):
            raise ConfigError(
                "%s: directory %s is writable by a user other than root (uid %d, mode %o);"
                " it must be root's and not writable by others when m2gate runs as root"
                % (setting, current, st.st_uid, stat.S_IMODE(st.st_mode))
            )


def check_own(fd: int, path: str, setting: str, owners: Iterable[int] = ()) -> os.stat_result:
    """``fd`` (just opened from ``path``) is a regular file with one link owned by us."""
    st = os.fstat(fd)
    why = ""
    if not stat.S_ISREG(st.st_mode):
        why = "is not a regular file"
    elif st.st_nlink != 1:
        why = "has %d hard links" % st.st_nlink
    elif st.st_uid not in (os.geteuid(), *owners):
        why = "is owned by uid %d, not by m2gate's user" % st.st_uid
    if why:
        os.close(fd)
        raise ConfigError("%s: %s %s; refusing to use it" % (setting, path, why))
    return st


def open_own(
    path: str, flags: int, setting: str, mode: int = 0o644, owners: Iterable[int] = ()
) -> int:
    """``os.open`` for a file m2gate writes: no symlink, no file that is someone else's.

    ``owners`` are uids accepted besides ours (the ``--user`` a previous run
    handed the file to). Errors are one-line ConfigErrors naming ``setting``.
    """
    check_directory(path, setting)
    try:
        fd = os.open(path, flags | OPEN_FLAGS, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component is a symlink
            raise ConfigError(
                "%s: %s is a symbolic link; refusing to follow it" % (setting, path)
            ) from None
        raise ConfigError("%s: cannot open %s: %s" % (setting, path, exc.strerror or exc)) from None
    check_own(fd, path, setting, owners)
    os.set_blocking(fd, True)
    return fd


def same_file(path: str, ident: tuple[int, int]) -> bool:
    """Whether ``path`` (not followed) is still the inode ``(st_dev, st_ino)``."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == ident


def unlink_if_same(path: str, ident: tuple[int, int] | None) -> None:
    """Remove ``path`` only if it is still the inode we made (it may have been swapped).

    The directory is one only root or we can write (:func:`check_directory`),
    so nothing can swap it between the check and the unlink.
    """
    if ident is not None and same_file(path, ident):
        try:
            os.unlink(path)
        except OSError:
            pass  # e.g. we dropped privileges and the directory is root's: leave it
