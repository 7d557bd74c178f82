"""Pidfile lock, control socket (server and client), status and metrics text, without a master."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from m2gate.cli import control as client
from m2gate.ops import pidfile
from m2gate.ops.control import ControlServer


def test_pidfile_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    path = tmp_path / "m.pid"
    first = pidfile.PidFile(str(path)).acquire()
    assert path.read_text() == "%d\n" % os.getpid()
    assert pidfile.is_locked(str(path))
    # Another process (flock locks belong to open files, so use a real second process).
    code = (
        "import sys; from m2gate.ops.pidfile import PidFile, AlreadyRunning\n"
        "try:\n    PidFile(sys.argv[1]).acquire()\n"
        "except AlreadyRunning as e:\n    print(e); sys.exit(7)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 7
    assert "locked by a running m2gate (pid %d)" % os.getpid() in out.stdout
    first.release()
    assert not path.exists() and not pidfile.is_locked(str(path))


def test_locate_says_why_nothing_runs(tmp_path: Path) -> None:
    with pytest.raises(client.NotRunning, match="no pidfile"):
        client.locate(str(tmp_path / "none.pid"), "", "")
    stale = tmp_path / "stale.pid"
    stale.write_text("4242\n")
    with pytest.raises(client.NotRunning, match=r"stale pidfile .*pid 4242"):
        client.locate(str(stale), "", "")
    with pytest.raises(client.NotRunning, match="pass --pidfile"):
        client.locate("", "", "")
    assert pidfile.control_path_for("/run/x/m2gate.pid") == "/run/x/m2gate.sock"
    assert pidfile.pidfile_for_app_dir("/srv/site") == "/srv/site/run/m2gate.pid"


def test_control_server_round_trip(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def handle(request: dict[str, Any]) -> dict[str, Any]:
        seen.append(request)
        return {"ok": True, "echo": request["command"]}

    path = str(tmp_path / "c.sock")
    server = ControlServer(path, handle).start()
    try:
        assert client.request(path, "status", timeout=5) == {"ok": True, "echo": "status"}
        assert os.stat(path).st_mode & 0o077 == 0  # only our user may command the master
    finally:
        server.close()
    assert seen == [{"command": "status"}]
    assert not os.path.exists(path)
    with pytest.raises(client.NotRunning, match="no answer"):
        client.request(path, "status", timeout=1)


def _doc() -> dict[str, Any]:
    worker = {
        "id": "w1", "pid": 11, "generation": 2, "status": "busy", "threads": 2, "busy": 1,
        "requests": 5, "exceptions": 1, "disconnects": 2,
        "avg_request_time": 0.25, "last_request_time": 0.5,
        "rss": 30_000_000, "max_requests": 0,
        "in_flight": [{"sender": "s", "conn_id": 7, "age": 1.25, "pipelined": False}],
    }  # fmt: skip
    return {
        "ok": True, "pid": 10, "generation": 2, "reloading_to": None, "queued": 3,
        "requests": 9, "rejected": 1, "harakiri": 0, "restarts": 2, "reloads": 1,
        "processes": 1, "workers_min": 1, "workers_max": 1, "workers_spawned": 0,
        "workers_retired_idle": 0, "queue_oldest_wait": 0.5, "queue_waited": 4,
        "queue_wait_seconds": 1.0, "queue_wait_window": 10, "queue_wait_recent": 4,
        "queue_wait_avg": 0.25, "queue_wait_max": 0.5,
        "workers": [worker],
    }  # fmt: skip


def test_status_text_shows_what_each_worker_does() -> None:
    text = client.format_status(_doc())
    assert "m2gate master pid 10, generation 2, 1 worker(s), 3 request(s) queued" in text
    assert "w1" in text and "busy" in text and "conn 7 1.2s" in text and "30.0MB" in text


def test_metrics_text_parses_as_prometheus() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from m2gate.ops.metrics import render_metrics

    body, _ = render_metrics(_doc())
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["m2gate_requests"].samples[0].value == 9
    rss = families["m2gate_worker_rss_bytes"].samples[0]
    assert rss.value == 30_000_000 and rss.labels == {
        "worker": "w1",
        "pid": "11",
        "generation": "2",
    }
    assert families["m2gate_workers"].samples[0].labels == {"status": "busy"}
    assert families["m2gate_worker_disconnects"].samples[0].value == 2
