"""Files that are not ours: m2gate run as root must never write, chown or delete them.

Each test plants something an unprivileged user could plant (a symlink to a
root-owned 0600 file, a regular file where a socket is expected) and checks
that m2gate refused with a one-line error naming the setting, and that the
planted target is byte for byte, owner and mode, what it was.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from m2gate.testing.mongrel2 import free_port
from support import APPS, m2gate_command, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (privilege drop to nobody)"),
]

SECRET = b"root only\n"
NOBODY = pwd.getpwnam("nobody")


def secret(tmp_path: Path) -> Path:
    """A root-owned 0600 file, the kind a planted link points at."""
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return path


def assert_untouched(path: Path) -> None:
    st = path.lstat()
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o600)
    assert path.read_bytes() == SECRET


def shared_dir(tmp_path: Path) -> Path:
    """A directory handed to ``nobody`` (owned by it, as m2gate used to make DIR/run)."""
    path = tmp_path / "shared"
    path.mkdir()
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    tmp_path.chmod(0o755)  # nobody may reach it
    return path


def serve(tmp_path: Path, *args: str, timeout: float = 8.0) -> tuple[int | None, str]:
    """Run ``m2gate serve`` until it exits or ``timeout``; (status or None if it ran, output)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(APPS), env.get("PYTHONPATH", "")) if p)
    cmd = [
        *m2gate_command(),
        "serve",
        "master_app:application",
        "--send-spec",
        "tcp://127.0.0.1:%d" % free_port(),
        "--recv-spec",
        "tcp://127.0.0.1:%d" % free_port(),
        *args,
    ]
    out = tmp_path / "serve.out"
    with out.open("wb") as fh:
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
            start_new_session=True,
        )
    try:
        status: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        status = None
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    return status, out.read_text(errors="replace")


def test_pidfile_link_in_a_directory_nobody_owns_is_refused(tmp_path: Path) -> None:
    target = secret(tmp_path)
    shared = shared_dir(tmp_path)
    (shared / "m2gate.pid").symlink_to(target)
    status, out = serve(
        tmp_path, "-p", "2", "--pidfile", str(shared / "m2gate.pid"), "--user", "nobody"
    )
    assert_untouched(target)
    assert status == 2, out
    assert "pidfile:" in out and "writable by" in out, out


def test_log_file_link_in_a_directory_nobody_owns_is_refused(tmp_path: Path) -> None:
    target = secret(tmp_path)
    shared = shared_dir(tmp_path)
    (shared / "m2gate.log").symlink_to(target)
    status, out = serve(tmp_path, "--log-file", str(shared / "m2gate.log"), "--user", "nobody")
    assert_untouched(target)
    assert status == 2, out
    assert "log_file:" in out, out


@pytest.mark.parametrize("setting", ["pidfile", "log-file", "access-log"])
def test_a_planted_link_is_never_followed(tmp_path: Path, setting: str) -> None:
    """Even in a directory only root can write (the link may predate a chmod)."""
    target = secret(tmp_path)
    link = tmp_path / "planted"
    link.symlink_to(target)
    status, out = serve(tmp_path, "-p", "2", "--" + setting, str(link))
    assert_untouched(target)
    assert status == 2, out
    assert "%s: " % setting.replace("-", "_") in out and "symbolic link" in out, out


@pytest.mark.parametrize("planted", ["file", "link"])
def test_no_stale_socket_clean_up_of_what_is_not_a_socket(tmp_path: Path, planted: str) -> None:
    """The control socket (next to the pidfile) and a unix --stats socket path."""
    target = secret(tmp_path)
    for place, args in (
        (tmp_path / "m2gate.sock", ("--pidfile", str(tmp_path / "m2gate.pid"))),
        (tmp_path / "stats.sock", ("--stats", str(tmp_path / "stats.sock"))),
    ):
        if planted == "file":
            place.write_bytes(SECRET)
        else:
            place.symlink_to(target)
        status, out = serve(tmp_path, "-p", "2", *args)
        still = (
            place.is_symlink() and os.readlink(place) == str(target)
            if planted == "link"
            else not place.is_symlink() and place.is_file() and place.read_bytes() == SECRET
        )
        assert still, "%s was removed or replaced\n%s" % (place, out)
        assert status == 2, out
        assert "not a socket" in out, out
        assert_untouched(target)
        place.unlink()


@pytest.fixture
def reachable(tmp_path: Path) -> Iterator[Path]:
    """A root-owned 0755 directory nobody can reach (pytest's tmp_path is root's 0700)."""
    path = Path(tempfile.mkdtemp(prefix="m2gate-hostile-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_app_folder_as_nobody_keeps_root_owned_directories(tmp_path: Path, reachable: Path) -> None:
    """The happy path: pidfile, log and control socket work; run/ and logs/ stay root's."""
    site = reachable / "site"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(APPS), env.get("PYTHONPATH", "")) if p)
    send, recv = "tcp://127.0.0.1:%d" % free_port(), "tcp://127.0.0.1:%d" % free_port()
    made = subprocess.run(
        [
            *m2gate_command(),
            "init",
            str(site),
            "master_app:application",
            "--send-spec",
            send,
            "--recv-spec",
            recv,
            "-p",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert made.returncode == 0, made.stderr
    out = tmp_path / "serve.out"
    with out.open("wb") as fh:
        proc = subprocess.Popen(
            [*m2gate_command(), "serve", "--app-dir", str(site), "--user", "nobody"],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        pidfile = site / "run" / "m2gate.pid"
        wait_until(
            lambda: (
                proc.poll() is None
                and (site / "run" / "m2gate.sock").exists()
                and pidfile.exists()
                and pidfile.read_text().strip() == str(proc.pid)
            ),
            "the master's pidfile and control socket\n" + out.read_text(),
        )
        status = subprocess.run(
            [*m2gate_command(), "status", "--app-dir", str(site)],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert "master pid %d" % proc.pid in status.stdout, status.stderr
        for sub in ("run", "logs"):
            assert (site / sub).stat().st_uid == 0, sub
        log = (site / "logs" / "m2gate.log").stat()
        assert log.st_uid == NOBODY.pw_uid  # reopened by nobody after logrotate's create
        assert pidfile.stat().st_uid == 0
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
