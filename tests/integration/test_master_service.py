"""An app folder run as a daemon and driven only by ``m2gate status|reload|stop --app-dir``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from m2gate.ops.pidfile import is_locked, pidfile_for_app_dir, read_pid
from m2gate.testing.mongrel2 import Mongrel2
from support import APPS, m2gate_command

pytestmark = pytest.mark.integration


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*m2gate_command(), *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_daemon_app_dir_commands(mongrel2: Mongrel2, tmp_path: Path) -> None:
    h = mongrel2.handler
    site = tmp_path / "site"
    env = dict(os.environ, PYTHONPATH=str(APPS))
    made = run(
        "init",
        str(site),
        "master_app:application",
        "--send-spec",
        h.send_spec,
        "--recv-spec",
        h.recv_spec,
        "--send-ident",
        h.send_ident,
        "-p",
        "2",
        env=env,
    )
    assert made.returncode == 0, made.stderr
    pidfile = pidfile_for_app_dir(str(site))
    started = run("serve", "--app-dir", str(site), "--daemon", env=env)
    try:
        assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + 20
        while not (os.path.exists(pidfile) and is_locked(pidfile)):
            assert time.monotonic() < deadline, "no master came up"
            time.sleep(0.05)
        master = read_pid(pidfile)
        assert master is not None
        status = run("status", "--app-dir", str(site))
        deadline = time.monotonic() + 20
        while status.stdout.count(" idle ") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            status = run("status", "--app-dir", str(site))
        assert "master pid %d" % master in status.stdout
        assert requests.get(mongrel2.url + "/pid", timeout=10).status_code == 200
        reloaded = run("reload", "--wait", "--app-dir", str(site))
        assert reloaded.returncode == 0 and "generation 2 serving" in reloaded.stdout
        stopped = run("stop", "--app-dir", str(site))
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
        gone = run("status", "--app-dir", str(site))
        assert gone.returncode == 1 and "not running" in gone.stderr
        log_text = (site / "logs" / "m2gate.log").read_text()
        assert "reload done: generation 2 serving" in log_text
    finally:
        pid = read_pid(pidfile) if os.path.exists(pidfile) else None
        if pid is not None and is_locked(pidfile):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # its workers follow (PR_SET_PDEATHSIG)
