"""Service features through real Mongrel2: access log, ZeroMQ logging, app environment,
app folders, log reopening, daemon mode and handler specs read from Mongrel2's database."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import zmq

from m2gate.testing.mongrel2 import HandlerSpec, Mongrel2, free_port
from support import wait_until

pytestmark = pytest.mark.integration

Start = Callable[..., Any]
APPS = Path(__file__).resolve().parents[1] / "apps"
CLF = re.compile(
    r'(?P<host>\S+) - - \[[^\]]+\] "(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+|-)'
)


def m2gate(*argv: str) -> list[str]:
    return [sys.executable, "-m", "m2gate", *argv]


def answered(url: str) -> bool:
    """One short GET: True once m2gate (not Mongrel2) answered."""
    try:
        resp = requests.get(url, timeout=1, headers={"Connection": "close"})
    except requests.RequestException:
        return False
    return not resp.headers.get("Server", "").startswith("Mongrel2")


class Proc:
    """An ``m2gate`` process started without the conftest fixture's fixed arguments."""

    def __init__(self, argv: list[str], cwd: Path, log: Path, env: dict[str, str]) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, url: str) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError("m2gate exited: " + self.log.read_text())
            return answered(url)

        wait_until(ready, "m2gate at " + url)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def start(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Proc:
        full_env = dict(os.environ, PYTHONUNBUFFERED="1")
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(APPS), full_env.get("PYTHONPATH", "")) if p
        )
        full_env.update(env or {})
        proc = Proc(
            m2gate(*argv), cwd or tmp_path, tmp_path / ("m2gate-%d.out" % len(procs)), full_env
        )
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            proc.stop()


def write_app(directory: Path, name: str, source: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / (name + ".py")).write_text(textwrap.dedent(source))


PROBE_APP = """
import json, os, sys

def app(environ, start_response):
    try:
        import only_in_the_venv
        venv = only_in_the_venv.WHERE
    except ImportError:
        venv = None
    body = json.dumps({
        "greeting": os.environ.get("GREETING"),
        "other": os.environ.get("OTHER"),
        "sys_path": sys.path[:4],
        "cwd": os.getcwd(),
        "venv": venv,
        "virtual_env": os.environ.get("VIRTUAL_ENV"),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
"""


LOGGING_APP = """
import logging

log = logging.getLogger("logging_app")

def app(environ, start_response):
    log.warning("served %s", environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"logged"]
"""


# -- access log -------------------------------------------------------------------------


def read_lines(path: Path, count: int) -> list[str]:
    wait_until(lambda: path.exists() and len(path.read_text().splitlines()) >= count, str(path))
    return path.read_text().splitlines()


def test_access_log_common_format(m2gate_server: Start, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    server = m2gate_server("basic:application", "--threads", "2", "--access-log", str(log))
    assert requests.get(server.url + "/?a=1", timeout=10).status_code == 200
    assert requests.post(server.url + "/echo", data=b"12345", timeout=10).content == b"12345"
    assert requests.head(server.url + "/?head", timeout=10).status_code == 200

    def ours() -> list[str]:  # without the fixture's readiness probes (GET /)
        text = log.read_text() if log.exists() else ""
        return [line for line in text.splitlines() if '"GET / HTTP' not in line]

    wait_until(lambda: len(ours()) == 3, "3 access lines")
    parsed = [CLF.fullmatch(line) for line in ours()]
    assert all(parsed), ours()
    got = [(m["host"], m["request"], m["status"], m["bytes"]) for m in parsed if m]
    assert got == [
        ("127.0.0.1", "GET /?a=1 HTTP/1.1", "200", "14"),
        ("127.0.0.1", "POST /echo HTTP/1.1", "200", "5"),
        ("127.0.0.1", "HEAD /?head HTTP/1.1", "200", "-"),
    ]
    assert "GET /?a=1" not in server.output  # the access log is not the error log


def test_access_log_custom_format_with_time(m2gate_server: Start, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    server = m2gate_server(
        "wsgi_probe:application",
        "--access-log",
        str(log),
        "--access-log-format",
        "%(m)s %(U)s q=%(q)s %(s)s %(B)s %(D)sus %(p)s",
    )
    requests.get(server.url + "/no/such/probe?x=1", timeout=10)
    wait_until(lambda: "/no/such/probe" in log.read_text(), "the access line")
    (line,) = [line for line in log.read_text().splitlines() if "/no/such/probe" in line]
    match = re.fullmatch(r"GET /no/such/probe q=x=1 (\d{3}) (\d+) (\d+)us (\d+)", line)
    assert match, line
    assert int(match[4]) == server.pid


# -- ZeroMQ logging ---------------------------------------------------------------------


def test_log_zeromq_reaches_a_pull_collector(m2gate_server: Start) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVTIMEO, 15000)
    pull.setsockopt(zmq.LINGER, 0)
    endpoint = "tcp://127.0.0.1:%d" % free_port()
    pull.bind(endpoint)
    try:
        server = m2gate_server("basic:application", "--log-zeromq", endpoint)
        received = []
        while not any("serving basic:application" in line for line in received):
            received.append(pull.recv().decode())
        line = next(line for line in received if "serving basic:application" in line)
        assert re.match(r"\d{4}-\d\d-\d\d \S+ \[%d\] INFO m2gate: serving" % server.pid, line)
        assert "serving basic:application" in server.output  # still on stderr too
    finally:
        pull.close()
        ctx.term()


# -- the app's environment ---------------------------------------------------------------


def test_env_pythonpath_and_virtualenv_are_visible_to_the_app(
    m2gate_server: Start, tmp_path: Path
) -> None:
    libdir = tmp_path / "lib"
    write_app(libdir, "env_probe_app", PROBE_APP)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / ("python%d.%d" % sys.version_info[:2]) / "site-packages"
    (site / "only_in_the_venv.py").write_text("WHERE = 'venv'\n")
    server = m2gate_server(
        "env_probe_app:app",
        "--env",
        "GREETING=hello there",
        "--env",
        "OTHER=a=b",
        "--pythonpath",
        str(libdir),
        "--virtualenv",
        str(venv),
    )
    data = requests.get(server.url + "/", timeout=10).json()
    assert data["greeting"] == "hello there" and data["other"] == "a=b"
    assert str(libdir) in data["sys_path"]
    assert data["venv"] == "venv" and data["virtual_env"] == str(venv)


# -- app folders --------------------------------------------------------------------------


def test_init_then_serve_with_app_dir(
    mongrel2: Mongrel2, launch: Callable[..., Proc], tmp_path: Path
) -> None:
    site = tmp_path / "site"
    spec = mongrel2.handler
    result = subprocess.run(
        m2gate(
            "init",
            str(site),
            "env_probe_app:app",
            "--send-spec",
            spec.send_spec,
            "--recv-spec",
            spec.recv_spec,
            "--send-ident",
            spec.send_ident,
            "--env",
            "GREETING=from m2gate.toml",
            "--access-log",
            str(site / "logs" / "access.log"),
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    written = tomllib.loads((site / "m2gate.toml").read_text())
    assert written["app"] == "env_probe_app:app" and written["send_spec"] == spec.send_spec
    assert "threads" not in written  # only the options given
    write_app(site / "app", "env_probe_app", PROBE_APP)  # importable only from DIR/app

    proc = launch("serve", "--app-dir", str(site))
    proc.wait_ready(mongrel2.url + "/")
    data = requests.get(mongrel2.url + "/", timeout=10).json()
    assert data["greeting"] == "from m2gate.toml"
    assert data["cwd"] == str(site / "app")
    log = site / "logs" / "m2gate.log"
    assert "[%d] INFO m2gate" % proc.proc.pid in log.read_text()
    assert proc.log.read_text() == ""  # nothing on stderr: the folder's log has it
    assert (site / "run" / "m2gate.pid").read_text().strip() == str(proc.proc.pid)
    assert "GET / HTTP/1.1" in (site / "logs" / "access.log").read_text()


# -- logrotate: SIGUSR1 -------------------------------------------------------------------


def test_sigusr1_reopens_log_files(m2gate_server: Start, tmp_path: Path) -> None:
    log, access = tmp_path / "m2gate.log", tmp_path / "access.log"
    server = m2gate_server("basic:application", "--log-file", str(log), "--access-log", str(access))
    requests.get(server.url + "/before", timeout=10)
    # the line is written just after the reply leaves: wait for it before "rotating"
    wait_until(lambda: "/before" in access.read_text(), "access line before rotation")
    log.rename(tmp_path / "m2gate.log.1")
    access.rename(tmp_path / "access.log.1")
    server.signal(signal.SIGUSR1)
    wait_until(lambda: log.exists() and access.exists(), "reopened log files")
    wait_until(lambda: "log files reopened" in log.read_text(), "reopen message")
    requests.get(server.url + "/after", timeout=10)
    wait_until(lambda: "/after" in access.read_text(), "access line in the new file")
    assert "/before" in (tmp_path / "access.log.1").read_text()
    assert "/before" not in access.read_text()
    assert "serving basic:application" in (tmp_path / "m2gate.log.1").read_text()
    assert server.output == ""  # with --log-file nothing goes to stderr


def test_sigusr1_to_the_master_reopens_the_workers_access_log(
    m2gate_server: Start, tmp_path: Path
) -> None:
    access = tmp_path / "access.log"
    server = m2gate_server("basic:application", "--processes", "2", "--access-log", str(access))
    for i in range(4):
        requests.get(server.url + "/before%d" % i, headers={"Connection": "close"}, timeout=10)
    wait_until(lambda: access.read_text().count("/before") == 4, "4 lines before rotation")
    access.rename(tmp_path / "access.log.1")
    server.signal(signal.SIGUSR1)  # the master reopens its files and signals each worker
    wait_until(lambda: access.exists(), "a new access log")
    # master and both workers say so (workers act on it in their next housekeeping)
    wait_until(lambda: server.output.count("log files reopened") == 3, "3 processes reopening")
    for i in range(6):
        requests.get(server.url + "/after%d" % i, headers={"Connection": "close"}, timeout=10)
    wait_until(lambda: access.read_text().count("/after") == 6, "6 lines in the new file")
    assert "/after" not in (tmp_path / "access.log.1").read_text()


# -- daemon ------------------------------------------------------------------------------------


def test_daemon_detaches_and_serves(mongrel2: Mongrel2, tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    spec = mongrel2.handler
    env = dict(os.environ, PYTHONPATH=str(APPS))
    daemon_pid = 0
    try:
        started = time.monotonic()
        result = subprocess.run(
            m2gate(
                "serve",
                "basic:application",
                "--send-spec",
                spec.send_spec,
                "--recv-spec",
                spec.recv_spec,
                "--daemon",
                "--log-file",
                str(log),
            ),
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == "" and result.stderr == ""
        assert time.monotonic() - started < 30  # returned while the daemon runs on
        wait_until(lambda: log.exists() and "serving" in log.read_text(), "daemon log")
        match = re.search(r"\[(\d+)\] INFO m2gate: serving", log.read_text())
        assert match
        daemon_pid = int(match[1])
        wait_until(lambda: answered(mongrel2.url + "/"), "daemon answering")
        assert requests.get(mongrel2.url + "/", timeout=10).text == "Hello, world!\n"
        assert os.getsid(daemon_pid) != os.getsid(0)
    finally:
        if daemon_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon_pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    os.kill(daemon_pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                os.kill(daemon_pid, signal.SIGKILL)
    assert "stopped after" in log.read_text()


# -- Mongrel2's config database ------------------------------------------------------------


def test_specs_from_mongrel2_db_by_route(
    mongrel2_factory: Callable[..., Mongrel2], launch: Callable[..., Proc]
) -> None:
    m2 = mongrel2_factory(handlers=[HandlerSpec("/"), HandlerSpec("/api/", protocol="json")])
    api = m2.handlers[1]
    proc = launch(
        "serve", "basic:application", "--mongrel2-db", str(m2.db_path), "--route", "/api/"
    )
    proc.wait_ready(m2.url + "/api/")
    resp = requests.get(m2.url + "/api/environ", timeout=10)
    environ = resp.json()
    assert environ["SCRIPT_NAME"] + environ["PATH_INFO"] == "/api/environ"
    output = proc.log.read_text()
    assert "PULL %s" % api.send_spec in output and "identity %s" % api.send_ident in output
    # the "/" handler has nobody behind it: m2gate only took the /api/ handler
    conn = http.client.HTTPConnection("127.0.0.1", m2.port, timeout=1)
    with pytest.raises(TimeoutError):
        conn.request("GET", "/")
        conn.getresponse()
    conn.close()


def test_mongrel2_db_ambiguous_selection_lists_handlers(
    mongrel2_factory: Callable[..., Mongrel2],
) -> None:
    m2 = mongrel2_factory(handlers=[HandlerSpec("/"), HandlerSpec("/api/")])
    result = subprocess.run(
        m2gate("serve", "basic:application", "--mongrel2-db", str(m2.db_path)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "2 handlers match" in line
    for spec in m2.handlers:
        assert spec.send_spec in line and spec.send_ident in line
    assert json.dumps(line)  # one printable line


def test_log_zeromq_and_access_log_from_worker_processes(
    m2gate_server: Start, tmp_path: Path
) -> None:
    """With a master and 2 workers every process gets its own ZeroMQ socket after fork."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVTIMEO, 15000)
    pull.setsockopt(zmq.LINGER, 0)
    endpoint = "tcp://127.0.0.1:%d" % free_port()
    pull.bind(endpoint)
    access = tmp_path / "access.log"
    try:
        write_app(tmp_path / "lib", "logging_app", LOGGING_APP)
        server = m2gate_server(
            "logging_app:app",
            "--pythonpath",
            str(tmp_path / "lib"),
            "--processes",
            "2",
            "--log-zeromq",
            endpoint,
            "--access-log",
            str(access),
            "--access-log-format",
            "%(p)s %(U)s %(s)s",
        )
        for i in range(20):
            requests.get(server.url + "/n%d" % i, headers={"Connection": "close"}, timeout=10)
        lines = read_lines(access, 20)
        worker_pids = {int(line.split()[0]) for line in lines}
        assert server.pid not in worker_pids  # requests are served by the workers
        senders: set[int] = set()
        while not ({server.pid} | worker_pids) <= senders:
            line = pull.recv().decode()  # 15 s timeout: raises if records stop coming
            senders.update(int(pid) for pid in re.findall(r"\[(\d+)\] \w+ ", line))
    finally:
        pull.close()
        ctx.term()


def test_app_folder_as_a_daemon_with_workers(mongrel2: Mongrel2, tmp_path: Path) -> None:
    """wsgid's workflow: init once, then serve/status/stop with only --app-dir."""
    site = tmp_path / "site"
    spec = mongrel2.handler
    init = subprocess.run(
        m2gate(
            "init",
            str(site),
            "hello_site:app",
            "--send-spec",
            spec.send_spec,
            "--recv-spec",
            spec.recv_spec,
            "--processes",
            "2",
            "--daemon",
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    write_app(
        site / "app",
        "hello_site",
        """
        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"hi from the site"]
        """,
    )
    pidfile = site / "run" / "m2gate.pid"

    def command(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            m2gate(*argv, "--app-dir", str(site)),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    master = 0
    try:
        served = command("serve")
        assert served.returncode == 0, served.stderr
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() != "", "pidfile")
        master = int(pidfile.read_text())
        wait_until(lambda: answered(mongrel2.url + "/"), "the daemon answering")
        assert requests.get(mongrel2.url + "/", timeout=10).text == "hi from the site"
        status = command("status")
        assert status.returncode == 0 and str(master) in status.stdout
        stopped = command("stop")
        assert stopped.returncode == 0, stopped.stderr
        wait_until(lambda: not os.path.exists("/proc/%d" % master), "the master to exit")
        assert command("status").returncode != 0
    finally:
        if master and os.path.exists("/proc/%d" % master):
            with contextlib.suppress(ProcessLookupError):
                os.kill(master, signal.SIGKILL)
    log = (site / "logs" / "m2gate.log").read_text()
    assert "[%d]" % master in log


def test_config_file_environment_and_cli_precedence_in_a_real_server(
    mongrel2: Mongrel2, launch: Callable[..., Proc], tmp_path: Path
) -> None:
    """`serve -c m2gate.toml`: the file is read, M2GATE_* beats it, the command line beats both."""
    write_app(tmp_path / "lib", "env_probe_app", PROBE_APP)
    spec = mongrel2.handler
    config = tmp_path / "m2gate.toml"
    config.write_text(
        textwrap.dedent(
            """
            app = "env_probe_app:app"
            send-spec = "%s"
            recv_spec = "%s"
            pythonpath = ["%s"]
            env = ["GREETING=from the file", "OTHER=file"]
            """
            % (spec.send_spec, spec.recv_spec, tmp_path / "lib")
        )
    )
    seen = []
    for extra, environ in [
        ((), {}),
        ((), {"M2GATE_ENV": "GREETING=from the environment"}),
        (("--env", "GREETING=from the command line"), {"M2GATE_ENV": "GREETING=env"}),
    ]:
        proc = launch("serve", "-c", str(config), *extra, env=environ)
        proc.wait_ready(mongrel2.url + "/")
        data = requests.get(mongrel2.url + "/", timeout=10).json()
        seen.append((data["greeting"], data["other"]))
        proc.stop()
    assert seen == [
        ("from the file", "file"),
        ("from the environment", None),  # a list setting is replaced, not merged
        ("from the command line", None),
    ]
