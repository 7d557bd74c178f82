"""``m2gate dev`` as a user runs it: a subprocess with its own real Mongrel2 on free ports.

Each test starts ``m2gate dev`` (which starts Mongrel2 and ``m2gate serve``),
talks HTTP to the URL it prints, and stops it with SIGINT as a terminal's
Ctrl-C would; teardown kills whatever is left, by PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from m2gate.testing.mongrel2 import free_port
from support import pid_alive, wait_until

pytestmark = pytest.mark.integration

READY = re.compile(r"m2gate dev: serving .* at (http://[\d.:]+)/ ")
PIDS = re.compile(r"m2gate dev: mongrel2 pid (\d+), m2gate pid (\d+)")

WSGI_APP = """\
def application(environ, start_response):
    body = b"VERSION %s" % environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

ASGI_APP = """\
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            kind = (await receive())["type"]
            await send({"type": kind + ".complete"})
            if kind == "lifespan.shutdown":
                return
    body = ("VERSION asgi %s" % scope["path"]).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
"""


@dataclass
class Dev:
    """One ``m2gate dev`` process and what it printed."""

    proc: subprocess.Popen[bytes]
    log: Path
    run_dir: Path
    url: str = ""
    mongrel2_pid: int = 0
    m2gate_pid: int = 0
    others: list[int] = field(default_factory=list)  # more PIDs to check (workers)

    @property
    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> Dev:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    "m2gate dev exited with %s:\n%s" % (self.proc.returncode, self.output)
                )
            return bool(READY.search(self.output) and PIDS.search(self.output))

        wait_until(ready, "m2gate dev to print its URL", timeout=timeout)
        match = READY.search(self.output)
        pids = PIDS.search(self.output)
        assert match and pids
        self.url = match.group(1)
        self.mongrel2_pid, self.m2gate_pid = int(pids.group(1)), int(pids.group(2))
        return self

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=10)

    def pids(self) -> list[int]:
        return [p for p in (self.mongrel2_pid, self.m2gate_pid, *self.others) if p]

    def interrupt(self, timeout: float = 60.0) -> int:
        """SIGINT, as Ctrl-C in a terminal; the exit status."""
        os.kill(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout=timeout)


def children_of(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, encoding="ascii") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(entry))
    return found


StartDev = Callable[..., Dev]


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[StartDev]:
    """``dev("app.py:application", "--threads", "2")``: start ``m2gate dev`` in tmp_path."""
    started: list[Dev] = []

    def start(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Dev:
        run_dir = tmp_path / ("run-%d" % len(started))
        log = tmp_path / ("dev-%d.log" % len(started))
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "m2gate", "dev", *args, "--run-dir", str(run_dir)],
                cwd=cwd or tmp_path,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(Dev(proc, log, run_dir))
        return started[-1]

    try:
        yield start
    finally:
        for d in started:
            if d.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(d.proc.pid, signal.SIGINT)
                try:
                    d.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.kill(d.proc.pid, signal.SIGKILL)
                    d.proc.wait(timeout=10)
            for pid in d.pids():
                if pid_alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def write_app(path: Path, text: str, version: str) -> None:
    """Write the app with its VERSION marker replaced, with an mtime that surely moved."""
    old = path.stat().st_mtime if path.exists() else 0.0
    path.write_text(text.replace("VERSION", version))
    stamp = max(time.time(), old + 2)
    os.utime(path, (stamp, stamp))


def assert_stopped(d: Dev) -> None:
    """SIGINT stops dev with status 0, and every process it started is gone."""
    pids = d.pids()
    assert len(pids) >= 2 and all(pid_alive(p) for p in pids), d.output
    assert d.interrupt() == 0, d.output
    for pid in pids:
        wait_until(lambda pid=pid: not pid_alive(pid), "pid %d to be gone" % pid, timeout=10)


def test_wsgi_app_static_dir_given_port_and_ctrl_c(dev: StartDev, tmp_path: Path) -> None:
    write_app(tmp_path / "hello.py", WSGI_APP, "v1")
    assets = tmp_path / "assets" / "css"
    assets.mkdir(parents=True)
    (assets / "site.css").write_text("body { color: teal }\n")
    port = free_port()
    d = dev("hello.py:application", "--static", "/assets/=assets", "--port", str(port))
    d.wait_ready()
    assert d.url == "http://127.0.0.1:%d" % port

    resp = d.get("/some/path")
    assert resp.status_code == 200
    assert resp.text == "v1 /some/path"
    css = d.get("/assets/css/site.css")
    assert css.status_code == 200
    assert css.text == "body { color: teal }\n"
    assert css.headers["Content-Type"] == "text/css"
    assert css.headers["Server"].startswith("Mongrel2")  # Mongrel2 served it, not the app
    assert d.get("/assets/css/missing.css").status_code == 404

    # the config it used is in the run directory, and it says where
    conf = d.run_dir / "m2.conf"
    assert 'Dir(base="%s/"' % (tmp_path / "assets") in conf.read_text()
    assert (d.run_dir / "config.sqlite").stat().st_size > 0
    assert str(conf) in d.output and str(d.run_dir / "config.sqlite") in d.output
    assert_stopped(d)
    assert "m2gate dev: stopped" in d.output


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_code_change_restarts_the_app(dev: StartDev, tmp_path: Path, kind: str) -> None:
    source, target = (WSGI_APP, "app.py:application") if kind == "wsgi" else (ASGI_APP, "app.py")
    app = tmp_path / "app.py"
    write_app(app, source, "v1")
    d = dev(target).wait_ready()
    assert d.get("/x").text == ("v1 /x" if kind == "wsgi" else "v1 asgi /x")
    first_pid = d.m2gate_pid

    write_app(app, source, "v2")

    def new_version() -> bool:
        try:
            return requests.get(d.url + "/x", timeout=2).text.startswith("v2")
        except requests.RequestException:
            return False

    wait_until(new_version, "the changed app to answer", timeout=30)
    assert "app.py changed: restarting m2gate" in d.output
    assert not pid_alive(first_pid)  # the old server was stopped, by PID
    d.m2gate_pid = next(p for p in children_of(d.proc.pid) if p != d.mongrel2_pid)
    assert_stopped(d)


def test_an_app_that_does_not_load_is_started_again_once_fixed(
    dev: StartDev, tmp_path: Path
) -> None:
    app = tmp_path / "app.py"
    write_app(app, "def application(environ, start_response)\n", "v0")  # a syntax error
    d = dev("app.py:application")
    wait_until(lambda: "m2gate exited with status 3; it restarts" in d.output, "the load failure")
    assert "SyntaxError" in d.output
    assert d.proc.poll() is None  # Mongrel2 and dev stay up, waiting for the fix
    write_app(app, WSGI_APP, "v1")
    d.wait_ready()
    assert d.get("/ok").text == "v1 /ok"
    assert_stopped(d)


def test_worker_processes_reload_through_the_master(dev: StartDev, tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    write_app(app, WSGI_APP, "v1")
    d = dev("app.py:application", "-p", "2", "--threads", "2").wait_ready()
    assert d.get("/").text == "v1 /"
    wait_until(lambda: len(children_of(d.m2gate_pid)) == 2, "two worker processes")
    old_workers = children_of(d.m2gate_pid)

    write_app(app, WSGI_APP, "v2")
    wait_until(lambda: d.get("/").text == "v2 /", "the master to reload its workers", timeout=30)
    assert pid_alive(d.m2gate_pid)  # the same master, new workers
    assert "--reload-on-change" in d.output
    d.others = wait_until(
        lambda: [p for p in children_of(d.m2gate_pid) if p not in old_workers] or None,
        "the new workers",
    )
    assert_stopped(d)


def test_a_killed_dev_takes_mongrel2_and_the_app_with_it(dev: StartDev, tmp_path: Path) -> None:
    write_app(tmp_path / "app.py", WSGI_APP, "v1")
    d = dev("app.py:application").wait_ready()
    pids = d.pids()
    assert all(pid_alive(p) for p in pids)
    os.kill(d.proc.pid, signal.SIGKILL)  # no chance to clean up: the parent-death signals do
    d.proc.wait(timeout=10)
    for pid in pids:
        wait_until(lambda pid=pid: not pid_alive(pid), "pid %d to be gone" % pid, timeout=20)


def test_without_mongrel2_on_path_one_line_and_exit_2(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    write_app(tmp_path / "app.py", WSGI_APP, "v1")
    result = subprocess.run(
        [sys.executable, "-m", "m2gate", "dev", "app.py:application", "--run-dir", "run"],
        cwd=tmp_path,
        env={**os.environ, "PATH": str(empty)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "apt-get install mongrel2-core" in lines[0]
    assert not (tmp_path / "run").exists()


# -- Django ------------------------------------------------------------------


def startproject(tmp_path: Path, static_root: bool = True, collect: bool = True) -> Path:
    """A fresh ``django-admin startproject mysite`` (with STATIC_ROOT, collectstatic run)."""
    tmp_path.mkdir()
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", "mysite", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    if static_root:
        settings = tmp_path / "mysite" / "settings.py"
        settings.write_text(settings.read_text() + '\nSTATIC_ROOT = BASE_DIR / "staticfiles"\n')
    if collect:
        collectstatic(tmp_path)
    return tmp_path


def collectstatic(project: Path) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=project,
        check=True,
        capture_output=True,
        timeout=120,
    )


def assert_admin_styled(d: Dev) -> None:
    page = d.get("/admin/login/")
    assert page.status_code == 200, page.text[:500]
    css_path = re.search(r'href="(/static/admin/css/[\w.]+\.css)"', page.text)
    assert css_path, page.text[:2000]
    css = d.get(css_path.group(1))
    assert css.status_code == 200
    assert css.headers["Content-Type"] == "text/css"
    assert css.headers["Server"].startswith("Mongrel2")
    assert len(css.content) > 100


def test_django_admin_is_styled_by_itself(dev: StartDev, tmp_path: Path) -> None:
    project = startproject(tmp_path / "proj")
    d = dev(str(project)).wait_ready()
    assert "static /static/ -> %s/" % (project / "staticfiles") in d.output
    assert "collectstatic" not in d.output
    assert_admin_styled(d)
    assert_stopped(d)


def test_django_without_collectstatic_says_so_and_serves_once_collected(
    dev: StartDev, tmp_path: Path
) -> None:
    project = startproject(tmp_path / "proj", collect=False)
    d = dev(str(project)).wait_ready()
    hints = [line for line in d.output.splitlines() if "collectstatic" in line]
    assert len(hints) == 1, d.output
    assert "STATIC_ROOT %s does not exist" % (project / "staticfiles") in hints[0]
    assert "run `python manage.py collectstatic`" in hints[0]
    assert d.get("/static/admin/css/base.css").status_code == 404

    collectstatic(project)  # no restart needed: the route was there already
    assert_admin_styled(d)
    assert_stopped(d)


def test_fresh_django_project_without_static_root_gets_the_hint(
    dev: StartDev, tmp_path: Path
) -> None:
    project = startproject(tmp_path / "proj", static_root=False, collect=False)
    d = dev(str(project)).wait_ready()
    hints = [line for line in d.output.splitlines() if "collectstatic" in line]
    assert len(hints) == 1, d.output
    assert "STATIC_ROOT is not set" in hints[0]
    assert d.get("/admin/login/").status_code == 200
    assert_stopped(d)
