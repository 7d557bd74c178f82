"""m2gate.config.paths and bind_unix: what is not provably ours is refused, never touched."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from m2gate.config import paths
from m2gate.config.declare import ConfigError
from m2gate.ops.listener import SocketInUse, bind_unix

WRITE = os.O_WRONLY | os.O_APPEND | os.O_CREAT


def test_open_own_creates_and_reopens_a_regular_file(tmp_path: Path) -> None:
    path = str(tmp_path / "x.log")
    for _ in range(2):
        os.close(paths.open_own(path, WRITE, "log_file"))


def test_symlink_hard_link_and_fifo_are_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("keep")
    (tmp_path / "link").symlink_to(target)
    os.link(target, tmp_path / "hard")
    os.mkfifo(tmp_path / "fifo")
    for name, why in (
        ("link", "symbolic link"),
        ("hard", "2 hard links"),
        ("fifo", "fifo"),
    ):
        with pytest.raises(ConfigError, match="pidfile: .*%s" % why):
            paths.open_own(str(tmp_path / name), WRITE, "pidfile")
    assert target.read_text() == "keep"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_as_root_a_directory_others_can_write_or_a_file_of_theirs_is_refused(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match=r"log_file: directory .*shared is writable"):
        paths.open_own(str(shared / "x.log"), WRITE, "log_file")
    theirs = tmp_path / "theirs"
    theirs.write_text("")
    os.chown(theirs, 65534, 65534)
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        paths.open_own(str(theirs), WRITE, "log_file")
    os.close(paths.open_own(str(theirs), WRITE, "log_file", owners=(65534,)))


def test_unlink_if_same_leaves_a_swapped_path(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("")
    st = path.lstat()
    path.rename(tmp_path / "moved")  # still alive: its inode number cannot be reused
    path.write_text("someone else's")  # a new inode under the same name
    paths.unlink_if_same(str(path), (st.st_dev, st.st_ino))
    assert path.read_text() == "someone else's"


def test_bind_unix_removes_only_a_dead_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    sock, _ = bind_unix(path, "stats")
    sock.close()  # a killed process leaves the file behind
    sock, ident = bind_unix(path, "stats")
    sock.listen(1)
    with pytest.raises(SocketInUse):
        bind_unix(path, "stats")
    sock.close()
    paths.unlink_if_same(path, ident)
    assert not os.path.lexists(path)
    Path(path).write_text("not a socket")
    with pytest.raises(ConfigError, match=r"stats: .* is not a socket"):
        bind_unix(path, "stats")
    assert Path(path).read_text() == "not a socket"
    assert isinstance(sock, socket.socket)
