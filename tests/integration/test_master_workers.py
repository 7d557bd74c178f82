"""The master and its worker processes against a real Mongrel2: supervision and hygiene.

Each test drives ``m2gate serve`` as a user would (signals, ``m2gate``
commands, HTTP through Mongrel2) and checks what clients and the control
socket see.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from loadgen import LoadGenerator

from m2gate.cli import control as client
from m2gate.ops.pidfile import control_path_for
from m2gate.testing.mongrel2 import Mongrel2, free_port
from support import in_background, pid_alive, wait_until

pytestmark = pytest.mark.integration

Factory = Callable[..., Any]


class Served:
    """A server started with a pidfile, plus helpers to ask its master."""

    def __init__(self, server: Any, pidfile: Path) -> None:
        self.server = server
        self.pidfile = pidfile
        self.sock = control_path_for(str(pidfile))

    def status(self) -> dict[str, Any]:
        return client.request(self.sock, "status", timeout=10)

    def worker_pids(self) -> set[int]:
        return {w["pid"] for w in self.status()["workers"]}

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.server.args[:1], *args, "--pidfile", str(self.pidfile)],
            capture_output=True,
            text=True,
            timeout=60,
        )


def start(
    m2gate_server: Factory,
    tmp_path: Path,
    *args: str,
    app: str = "master_app:application",
    **kwargs: Any,
) -> Served:
    pidfile = tmp_path / ("m2gate-%d.pid" % len(list(tmp_path.glob("m2gate-*.pid"))))
    server = m2gate_server(app, *args, "--pidfile", str(pidfile), **kwargs)
    return Served(server, pidfile)


def answers(s: Served) -> bool:
    """Whether the master's control socket is up yet (it comes after the pidfile)."""
    try:
        s.status()
    except client.NotRunning:
        return False
    return True


def get(m2: Mongrel2, path: str, timeout: float = 15.0) -> requests.Response:
    return requests.get(m2.url + path, timeout=timeout)


def sleepers(worker: dict[str, Any]) -> list[dict[str, Any]]:
    """The worker's ``/sleep`` requests in flight (not a probe about to be reported done)."""
    return [e for e in worker["in_flight"] if e["request"].startswith("GET /sleep")]


def wait_in_flight(s: Served, count: int = 1) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        doc = s.status()
        n = sum(len(sleepers(w)) for w in doc["workers"])
        return doc if n >= count else None

    result: dict[str, Any] = wait_until(check, what="a request in flight")
    return result


# -- processes, readiness, preload ------------------------------------------------


def test_processes_serve_with_their_own_pids(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "2", "--threads", "2")
    # The server answers as soon as one worker is ready; wait for the second.
    wait_until(
        lambda: all(w["status"] != "starting" for w in s.status()["workers"]),
        what="both workers ready",
    )
    pids = s.worker_pids()
    assert len(pids) == 2 and s.server.pid not in pids
    seen = {int(get(mongrel2, "/pid").text) for _ in range(40)}
    assert seen <= pids
    # A worker reports "done" a moment after its reply left: wait for the count.
    doc = wait_until(lambda: (d := s.status())["requests"] >= 40 and d, what="40 requests")
    assert all(w["status"] in ("idle", "busy") for w in doc["workers"])


def test_preload_imports_the_app_once_in_the_master(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "2", "--preload")
    stamps = {get(mongrel2, "/loaded").text for _ in range(20)}
    assert len(stamps) == 1  # one import, inherited by both forks
    assert "preloaded in the master" in s.server.output


def test_pipelined_requests_answered_in_order(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    start(m2gate_server, tmp_path, "-p", "2", "--threads", "2")
    with socket.create_connection(("127.0.0.1", mongrel2.port), timeout=10) as sock:
        sock.sendall(
            b"GET /sleep?s=0.3 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200") == 2
    slept = data.index(b"slept")
    assert slept < data.rindex(b"HTTP/1.1 200")  # the slow one first
    # Both went to the worker serving the connection.
    sleeper_pid = data[slept:].split(b"in ", 1)[1].split(b"HTTP", 1)[0].strip()
    assert data.rstrip().endswith(sleeper_pid)


# -- crash-loop guard, restarts -------------------------------------------------------


def test_app_that_cannot_load_stops_the_master_with_one_line(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    server = m2gate_server("broken_app:application", "-p", "2", wait=False)
    assert server.proc.wait(timeout=30) == 3
    errors = [line for line in server.output.splitlines() if line.startswith("m2gate: error:")]
    assert len(errors) == 1, server.output
    assert "m2gate_no_such_module" in errors[0]


def test_killed_worker_is_replaced_and_its_client_gets_502(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "2")
    before = s.worker_pids()
    t, out = in_background(lambda: get(mongrel2, "/sleep?s=30"))
    doc = wait_in_flight(s)
    victim = next(w["pid"] for w in doc["workers"] if sleepers(w))
    os.kill(victim, signal.SIGKILL)
    t.join(15)
    assert out and getattr(out[0], "status_code", None) == 502
    pids = wait_until(
        lambda: (p := s.worker_pids()) and len(p) == 2 and victim not in p and p,
        what="a replacement worker",
    )
    assert len(pids & before) == 1
    assert get(mongrel2, "/").status_code == 200


def test_workers_exit_when_the_master_is_killed(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "2")
    pids = s.worker_pids()
    os.kill(s.server.pid, signal.SIGKILL)
    s.server.proc.wait(10)
    # An orphan stops gracefully (SIGTERM from PR_SET_PDEATHSIG): within the graceful timeout.
    wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=30, what="orphans to exit")


# -- stop ------------------------------------------------------------------------------


def test_graceful_stop_finishes_the_request_in_flight(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "2")
    t, out = in_background(lambda: get(mongrel2, "/sleep?s=1.5"))
    wait_in_flight(s)
    s.server.signal(signal.SIGTERM)
    t.join(20)
    assert out, "no answer:\n" + s.server.output
    assert out[0].status_code == 200 and out[0].text.startswith("slept")
    assert s.server.proc.wait(15) == 0
    assert not s.pidfile.exists()


def test_stop_keeps_replies_flowing_and_refuses_new_requests(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    """Replies keep reaching clients while the master stops; new requests get 503.

    (The master keeps its PULL connected to the end: with it disconnected at
    stop, replies published afterwards were sometimes never delivered.)
    """
    s = start(m2gate_server, tmp_path, "-p", "2", "--threads", "2")
    t, out = in_background(lambda: get(mongrel2, "/sleep?s=1.5"))
    gone = socket.create_connection(("127.0.0.1", mongrel2.port), timeout=10)
    gone.sendall(b"GET /sleep?s=0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_in_flight(s, 2)
    gone.close()  # its reply will go to a connection Mongrel2 no longer has
    s.server.signal(signal.SIGTERM)
    wait_until(lambda: s.status()["stopping"], what="the master to begin stopping")
    late = get(mongrel2, "/")
    assert late.status_code == 503
    t.join(20)
    assert out, "no answer:\n" + s.server.output
    assert out[0].status_code == 200 and out[0].text.startswith("slept")
    assert s.server.proc.wait(15) == 0


def test_graceful_timeout_answers_503_for_what_is_left(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "1", "--graceful-timeout", "0.5")
    t, out = in_background(lambda: get(mongrel2, "/sleep?s=30"))
    wait_in_flight(s)
    s.server.signal(signal.SIGTERM)
    t.join(15)
    assert out and getattr(out[0], "status_code", None) == 503
    assert s.server.proc.wait(15) == 0


def test_second_signal_forces_the_stop(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "1")
    t, out = in_background(lambda: get(mongrel2, "/sleep?s=30"))
    wait_in_flight(s)
    s.server.signal(signal.SIGINT)
    time.sleep(0.2)
    s.server.signal(signal.SIGINT)
    assert s.server.proc.wait(15) == 1
    t.join(15)
    assert out and getattr(out[0], "status_code", None) == 503


# -- harakiri, recycling -------------------------------------------------------------


def test_harakiri_answers_504_logs_the_traceback_and_replaces_the_worker(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "1", "--threads", "2", "--harakiri", "1")
    victim = int(get(mongrel2, "/pid").text)
    resp = get(mongrel2, "/sleep?s=30")
    assert resp.status_code == 504
    assert int(get(mongrel2, "/pid").text) != victim

    def dumped() -> str:
        # faulthandler's dump of the stuck thread, written before the kill.
        # It is written piecemeal ("File ...master_app.py", then ", line N in
        # application"): wait for the whole frame, not its first words.
        text = s.server.output
        after = text.split("harakiri: worker", 1)[1] if "harakiri: worker" in text else ""
        return after if "in application" in after else ""

    after = wait_until(dumped, what="the stuck thread's traceback after the harakiri line")
    assert "(most recent call first)" in after and "master_app.py" in after
    assert s.status()["harakiri"] == 1


def test_max_requests_recycles_under_load_without_losing_one(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(
        m2gate_server,
        tmp_path,
        "-p",
        "2",
        "--threads",
        "2",
        "--max-requests",
        "25",
        "--max-requests-jitter",
        "10",
    )
    load = LoadGenerator(mongrel2.port, ["/pid", "/sleep?s=0.01", "/"], threads=4).start()
    try:
        load.wait_for(400)
    finally:
        result = load.stop()
    doc = s.status()
    print(
        "\nmax-requests: %d served, %d failed, %d restarts"
        % (result.ok, len(result.failures), doc["restarts"])
    )
    assert result.failures == []
    assert doc["restarts"] >= 4
    # (A worker over its limit keeps serving until its replacement is ready.)


def test_reload_on_rss_replaces_a_fat_worker(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "1", "--reload-on-rss", "80")
    fat = int(get(mongrel2, "/pid").text)
    assert get(mongrel2, "/alloc?mb=100").status_code == 200
    wait_until(lambda: fat not in s.worker_pids() and s.worker_pids(), what="the fat worker to go")
    assert int(get(mongrel2, "/pid").text) != fat
    assert "over 80 MB" in s.server.output


def test_queue_timeout_answers_503_when_no_worker_is_free(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(
        m2gate_server,
        tmp_path,
        "-p",
        "1",
        "--threads",
        "1",
        "--prefetch",
        "0",
        "--queue-timeout",
        "0.5",
    )
    t, out = in_background(lambda: get(mongrel2, "/sleep?s=3"))
    wait_in_flight(s)
    assert get(mongrel2, "/").status_code == 503
    t.join(15)
    assert out[0].status_code == 200
    assert get(mongrel2, "/").status_code == 200


# -- reload triggers ----------------------------------------------------------------


def wait_generation(s: Served, generation: int) -> None:
    def alone() -> bool:
        doc = s.status()
        return doc["generation"] == generation and {w["generation"] for w in doc["workers"]} == {
            generation
        }

    wait_until(alone, what="generation %d" % generation)


def test_touch_reload(mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path) -> None:
    touch = tmp_path / "reload.touch"
    touch.write_text("")
    s = start(m2gate_server, tmp_path, "-p", "1", "--touch-reload", str(touch))
    time.sleep(1.2)  # let the master record the first mtime
    os.utime(touch, (time.time() + 5, time.time() + 5))
    wait_generation(s, 2)


def test_reload_on_change_of_the_app_source(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    app = tmp_path / "app" / "changing.py"
    app.parent.mkdir()
    app.write_text(_app_text("before"))
    s = start(
        m2gate_server,
        tmp_path,
        "-p",
        "1",
        "--reload-on-change",
        app="changing:application",
        cwd=app.parent,
    )
    assert get(mongrel2, "/").text == "before"
    time.sleep(1.5)  # the worker reported its files; the master polled them once
    app.write_text(_app_text("after!"))
    os.utime(app, (time.time() + 5, time.time() + 5))
    wait_generation(s, 2)
    assert get(mongrel2, "/").text == "after!"


def test_reload_on_change_through_inotify_sees_a_change_that_keeps_the_mtime(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    """With watchfiles the master reloads on a write that mtime polling cannot see."""
    pytest.importorskip("watchfiles")
    app = tmp_path / "app" / "keeping.py"
    app.parent.mkdir()
    app.write_text(_app_text("before"))
    s = start(
        m2gate_server,
        tmp_path,
        "-p",
        "1",
        "--reload-on-change",
        app="keeping:application",
        cwd=app.parent,
    )
    assert get(mongrel2, "/").text == "before"
    wait_until(lambda: "with inotify" in s.server.output, what="the inotify watches")
    st = os.stat(app)
    # Another size: with mtime and size both kept, Python would reuse the cached bytecode.
    app.write_text(_app_text("after, and longer"))
    os.utime(app, ns=(st.st_atime_ns, st.st_mtime_ns))
    wait_generation(s, 2)
    assert get(mongrel2, "/").text == "after, and longer"


def _app_text(text: str) -> str:
    return (
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Length', '%d')])\n"
        "    return [b'%s']\n" % (len(text), text)
    )


def test_systemd_notify(mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(20)
        s = start(m2gate_server, tmp_path, "-p", "1", env={"NOTIFY_SOCKET": path})
        assert sock.recv(4096).startswith(b"READY=1")
        s.server.signal(signal.SIGHUP)
        assert sock.recv(4096) == b"RELOADING=1"
        assert sock.recv(4096).startswith(b"READY=1")
        s.server.signal(signal.SIGTERM)
        assert sock.recv(4096) == b"STOPPING=1"
    assert s.server.proc.wait(15) == 0


# -- pidfile, commands, stats, metrics ----------------------------------------------


def test_pidfile_lock_refuses_a_second_instance(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "1")
    assert int(s.pidfile.read_text()) == s.server.pid
    second = m2gate_server("master_app:application", "--pidfile", str(s.pidfile), wait=False)
    assert second.proc.wait(timeout=30) == 2
    lines = [line for line in second.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "is locked by a running m2gate (pid %d)" % s.server.pid in lines[0]
    assert get(mongrel2, "/").status_code == 200  # the first one is untouched


def test_status_stop_reload_commands(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "2", "--threads", "2")
    # Long enough to still run when the `status` command (a Python start-up,
    # seconds on a loaded 2-CPU machine) asks; the reload waits it out.
    t, _out = in_background(lambda: get(mongrel2, "/sleep?s=5"))
    wait_in_flight(s)
    st = s.command("status")
    assert st.returncode == 0, st.stderr
    assert "master pid %d" % s.server.pid in st.stdout
    assert "GET /sleep" in st.stdout  # what the busy worker is doing
    for pid in s.worker_pids():
        assert str(pid) in st.stdout
    t.join(15)
    rl = s.command("reload", "--wait")
    assert rl.returncode == 0, rl.stderr
    assert "generation 2 serving" in rl.stdout
    sp = s.command("stop")
    assert sp.returncode == 0 and "stopped" in sp.stdout, sp.stderr
    assert s.server.proc.wait(15) == 0
    gone = s.command("status")
    assert gone.returncode == 1
    assert "m2gate is not running (no pidfile" in gone.stderr


def test_commands_report_nothing_running(tmp_path: Path) -> None:
    from support import m2gate_command

    pidfile = tmp_path / "stale.pid"
    pidfile.write_text("999999\n")
    for cmd in ("status", "stop", "reload"):
        out = subprocess.run(
            [*m2gate_command(), cmd, "--pidfile", str(pidfile)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 1
        assert (
            out.stderr.strip()
            == "m2gate: m2gate is not running (stale pidfile %s, pid 999999)" % pidfile
        )
    out = subprocess.run(
        [*m2gate_command(), "status", "--app-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1 and "no pidfile" in out.stderr


def test_stats_json(mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path) -> None:
    import json

    unix = str(tmp_path / "stats.sock")
    port = free_port()
    start(m2gate_server, tmp_path, "-p", "2", "--stats", "127.0.0.1:%d" % port)
    s2_dir = tmp_path / "second"
    s2_dir.mkdir()
    for _ in range(10):
        assert get(mongrel2, "/").status_code == 200
    assert get(mongrel2, "/boom").status_code == 500

    def read(addr: Any, family: int) -> dict[str, Any]:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(addr)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        doc: dict[str, Any] = json.loads(data)
        return doc

    doc = wait_until(
        lambda: (
            (d := read(("127.0.0.1", port), socket.AF_INET))
            and all(w["rss"] > 0 for w in d["workers"])
            and sum(w["exceptions"] for w in d["workers"]) == 1
            and d["requests"] >= 11
            and d
        ),
        what="heartbeats",
    )
    assert doc["requests"] >= 11
    for w in doc["workers"]:
        assert {
            "pid",
            "status",
            "requests",
            "exceptions",
            "avg_request_time",
            "last_request_time",
            "rss",
        } <= set(w)
    assert sum(w["requests"] for w in doc["workers"]) >= 11
    # A unix socket works too (on a second server, same Mongrel2 handler is fine: own pidfile).
    other = m2gate_server(
        "master_app:application", "--stats", unix, "--pidfile", str(s2_dir / "m.pid")
    )
    wait_until(lambda: os.path.exists(unix), what="the second server's stats socket")
    assert read(unix, socket.AF_UNIX)["pid"] == other.pid


def test_metrics_prometheus(mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    start(m2gate_server, tmp_path, "-p", "2", "--metrics", "127.0.0.1:%d" % port)
    for _ in range(12):
        get(mongrel2, "/")

    def scrape() -> dict[str, Any] | None:
        resp = requests.get("http://127.0.0.1:%d/metrics" % port, timeout=10)
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        fams = {f.name: f for f in text_string_to_metric_families(resp.text)}
        return fams if fams["m2gate_requests"].samples[0].value >= 12 else None

    families = wait_until(scrape, what="12 requests counted")
    total = families["m2gate_requests"].samples[0].value
    per_worker = families["m2gate_worker_requests"].samples
    assert len(per_worker) == 2 and sum(smp.value for smp in per_worker) == total
    assert {smp.labels["pid"] for smp in per_worker}


def test_uploads_through_the_master(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    """Upload-start and upload-done reach the same worker; the accounting stays exact."""
    s = start(
        m2gate_server, tmp_path, "-p", "2", "--upload-dir", str(mongrel2.upload_dir),
        app="basic:application",
    )  # fmt: skip
    body = os.urandom(300_000)
    for _ in range(3):
        resp = requests.post(mongrel2.url + "/echo", data=body, timeout=30)
        assert resp.status_code == 200 and resp.content == body
    doc = wait_until(
        lambda: (d := s.status()) and all(w["in_flight"] == [] for w in d["workers"]) and d,
        what="no request left in flight",
    )
    assert doc["requests"] >= 3


def test_started_before_mongrel2_and_across_its_restart(
    m2gate_server: Factory, tmp_path: Path
) -> None:
    """Workers become ready when Mongrel2 appears, and serve again after it restarts."""
    from m2gate.testing.mongrel2 import HandlerSpec

    spec = HandlerSpec(
        send_spec="tcp://127.0.0.1:%d" % free_port(),
        recv_spec="tcp://127.0.0.1:%d" % free_port(),
    )
    m2 = Mongrel2(tmp_path / "late-mongrel2", handlers=[spec], port=free_port())
    try:
        server = m2gate_server(
            "master_app:application", "-p", "2", "--pidfile", str(tmp_path / "m.pid"),
            m2=m2, handler=m2.handlers[0], wait=False,
        )  # fmt: skip
        s = Served(server, tmp_path / "m.pid")
        wait_until(lambda: answers(s), what="the master's control socket")
        time.sleep(0.5)  # time for a worker to turn ready if it wrongly could
        assert {w["status"] for w in s.status()["workers"]} == {"starting"}
        m2.start()
        server.wait_ready("/")
        assert get(m2, "/").status_code == 200
        m2.restart()
        server.wait_ready("/")
        for _ in range(10):
            assert get(m2, "/").status_code == 200
    finally:
        m2.stop()


def test_stats_count_clients_gone_mid_request(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    """A client leaving during its request reaches its worker and the stats."""
    import json

    port = free_port()
    start(m2gate_server, tmp_path, "-p", "2", "--stats", "127.0.0.1:%d" % port)

    def disconnects() -> int:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return sum(w.get("disconnects", 0) for w in json.loads(data)["workers"])

    # The fixture's readiness probes may have hung up mid-request themselves:
    # count from what the heartbeats (every second) report once settled.
    time.sleep(1.5)
    before = disconnects()
    with socket.create_connection(("127.0.0.1", mongrel2.port), timeout=10) as client:
        client.sendall(b"GET /sleep?s=1.5 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)  # let the request reach a worker, then hang up
    wait_until(lambda: disconnects() == before + 1, what="the disconnect in the stats")
