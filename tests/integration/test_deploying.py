"""docs/deploying.md's recipes, run as the page shows them, through a real Mongrel2.

Every config, command and file used here is read from the page's tagged code
blocks (tests/integration/docblocks.py), never kept as a copy, so the page
cannot drift from what works. The test changes only what a test must change,
the same way for every block:

- ``/srv/`` moves under a temporary root (``Site.relocate``);
- Mongrel2's ``port`` and ``bind_addr`` and the handler specs become free ports
  on 127.0.0.1, and the server uuid becomes the harness's (``DocMongrel2``);
- ``/srv/mysite/venv/bin`` holds ``python``, ``m2gate`` and ``django-admin``
  scripts that run this suite's interpreter (no ``pip install`` here).

Not testable here, and left to the reader: ``apt-get``, ``pip``, ``useradd``
and ``systemctl`` (systemd is not PID 1). The units are checked with
``systemd-analyze verify``, and the notify protocol is run for real.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from docblocks import Block, only, read_blocks, select
from websockets.sync.client import connect

from m2gate.testing.mongrel2 import HandlerSpec, Mongrel2
from support import ROOT, m2gate_command, wait_until

pytestmark = pytest.mark.integration

DOC = ROOT / "docs" / "deploying.md"
VENV = "/srv/mysite/venv"
M2CONF = "/srv/mongrel2/m2.conf"
MONGREL2_UNIT = "/etc/systemd/system/mongrel2.service"
M2GATE_UNIT = "/etc/systemd/system/m2gate.service"
LOGROTATE = "/etc/logrotate.d/mysite"
RECIPES = frozenset({"django", "flask", "fastapi", "two-hosts"})
SHARED_FILES = frozenset({M2CONF, MONGREL2_UNIT, M2GATE_UNIT, LOGROTATE})


@pytest.fixture(scope="module")
def doc() -> list[Block]:
    return read_blocks(DOC)


# -- reading the doc's configs ------------------------------------------------------


def conf_value(text: str, key: str) -> str:
    """The value of the one ``key="..."`` or ``key=123`` in an m2.conf."""
    found = re.findall(r'\b%s=(?:"([^"]*)"|(\d+))' % re.escape(key), text)
    assert len(found) == 1, "the m2.conf should set %s once, not %d times" % (key, len(found))
    quoted, number = found[0]
    return str(quoted or number)


def sub_once(pattern: str, new: str, text: str) -> str:
    """``text`` with the one match of ``pattern`` replaced by ``new``."""
    out, count = re.subn(pattern, lambda _: new, text)
    assert count == 1, "expected one %r in the m2.conf, found %d" % (pattern, count)
    return out


def replace_statement(conf: str, block: Block) -> str:
    """``conf`` with the ``NAME = Kind(...)`` statement that ``block`` redefines replaced."""
    statement = block.text.strip()
    head = re.fullmatch(r"(\w+) = (\w+)\([^)]*\)", statement)
    assert head is not None, "%s should be one `NAME = Kind(...)` statement" % block
    pattern = r"^%s = %s\([^)]*\)" % (head[1], head[2])
    out, count = re.subn(pattern, lambda _: statement, conf, flags=re.M)
    assert count == 1, "%s replaces `%s = ...`, which the m2.conf has %d times" % (
        block,
        head[1],
        count,
    )
    return out


def front_conf(doc: list[Block], recipe: str | None) -> str:
    """The page's m2.conf, with the changes ``recipe`` makes to it."""
    base = only([b for b in select(doc, file=M2CONF) if not b.recipes], "the m2.conf")
    text = base.text
    for block in select(doc, recipe=recipe, file=M2CONF) if recipe else []:
        assert block.has("replace"), "%s: a change of the m2.conf is tagged `replace`" % block
        text = replace_statement(text, block)
    return text


def unit_file(text: str) -> dict[str, dict[str, str]]:
    """A systemd unit's sections and keys (a key given twice: the last one)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return {name: dict(parser[name]) for name in parser.sections()}


class DocMongrel2(Mongrel2):
    """The harness, serving the page's m2.conf instead of the config it writes itself.

    Only the listening address, the handler specs and the server uuid are
    replaced (each must occur once), and again after the harness picked new
    ports on a clash, since ``write_config`` renders on every start.
    """

    def __init__(self, workdir: Path, conf: str) -> None:
        self.doc_conf = conf
        spec = HandlerSpec(route="/", send_ident=conf_value(conf, "send_ident"))
        super().__init__(workdir, handlers=[spec])

    def render_config(self) -> str:
        text = sub_once(r"\bport=\d+", "port=%d" % self.port, self.doc_conf)
        text = sub_once(r'\bbind_addr="[^"]*"', 'bind_addr="127.0.0.1"', text)
        text = sub_once(r'\bsend_spec="[^"]*"', 'send_spec="%s"' % self.handler.send_spec, text)
        text = sub_once(r'\brecv_spec="[^"]*"', 'recv_spec="%s"' % self.handler.recv_spec, text)
        return sub_once(r'\buuid="[^"]*"', 'uuid="%s"' % self.server_uuid, text)


# -- one machine of the page: /srv under a temporary root ------------------------


@dataclass
class Site:
    """A temporary root standing for the page's ``/``, with its stand-in virtualenv."""

    root: Path
    doc: list[Block]
    specs: dict[str, str] = field(default_factory=dict)  # the page's spec -> the harness's

    def __post_init__(self) -> None:
        bin_dir = self.path(VENV) / "bin"
        bin_dir.mkdir(parents=True)
        python = shlex.quote(sys.executable)
        commands = {
            "python": python,
            "m2gate": " ".join(map(shlex.quote, m2gate_command())),
            "django-admin": python + " -m django",
        }
        for name, command in commands.items():
            script = bin_dir / name
            script.write_text('#!/bin/sh\nexec %s "$@"\n' % command, encoding="utf-8")
            script.chmod(0o755)

    def path(self, doc_path: str) -> Path:
        return self.root / doc_path.lstrip("/")

    def relocate(self, text: str) -> str:
        for doc_spec, spec in self.specs.items():
            text = text.replace(doc_spec, spec)
        return text.replace("/srv/", "%s/srv/" % self.root)

    def connect_to(self, m2: DocMongrel2) -> None:
        """Use ``m2``'s specs wherever the page writes the m2.conf's."""
        for key in ("send_spec", "recv_spec"):
            self.specs[conf_value(m2.doc_conf, key)] = getattr(m2.handler, key)

    def run(self, block: Block) -> None:
        script = self.relocate(block.text)
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, "%s failed with %d:\n%s\n%s%s" % (
            block,
            done.returncode,
            script,
            done.stdout,
            done.stderr,
        )

    def write(self, block: Block) -> None:
        assert block.file is not None
        target = self.path(block.file)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = self.relocate(block.text)
        if block.has("append"):
            old = target.read_text(encoding="utf-8")
            text = old + ("" if old.endswith("\n") else "\n") + "\n" + text
        target.write_text(text, encoding="utf-8")

    def apply(self, recipe: str) -> list[str]:
        """Write and run ``recipe``'s blocks in order; return its ``serve`` command line.

        The m2.conf's changes are the front's business (:func:`front_conf`).
        """
        serve: list[str] | None = None
        for block in select(self.doc, recipe=recipe):
            if block.file == M2CONF:
                continue
            if block.file is not None:
                self.write(block)
            elif block.has("serve"):
                assert serve is None, "%s: a second serve block" % block
                assert block.text.count("\n") == 1, "%s: one command line" % block
                serve = shlex.split(self.relocate(block.text))
            elif block.lang == "sh":
                self.run(block)
            else:
                raise AssertionError("%s: neither file=, serve nor sh" % block)
        assert serve is not None, "recipe %s has no serve block" % recipe
        return serve

    def settings(self) -> dict[str, Any]:
        """The m2gate.toml the recipe's ``m2gate init`` wrote."""
        return tomllib.loads(self.path("/srv/mysite/m2gate.toml").read_text(encoding="utf-8"))

    def logs(self) -> str:
        """m2gate's log files, for failure messages."""
        out = []
        for log in sorted(self.path("/srv/mysite/logs").glob("*")):
            out.append("--- %s\n%s" % (log, log.read_text(encoding="utf-8", errors="replace")))
        return "\n".join(out)


@dataclass
class Deployment:
    """Sites and the Mongrel2 in front of them, for one test; stops what it started."""

    tmp_path: Path
    doc: list[Block]
    fronts: list[DocMongrel2] = field(default_factory=list)

    def site(self, name: str = "site") -> Site:
        return Site(self.tmp_path / name, self.doc)

    def front(self, site: Site, recipe: str | None) -> DocMongrel2:
        """Start Mongrel2 on the page's m2.conf (as changed by ``recipe``), in ``site``."""
        conf = site.relocate(front_conf(self.doc, recipe))
        m2 = DocMongrel2(site.path(M2CONF).parent, conf)
        self.fronts.append(m2)
        return m2.start()


@pytest.fixture
def deploy(tmp_path: Path, doc: list[Block]) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path, doc)
    try:
        yield deployment
    finally:
        for m2 in reversed(deployment.fronts):
            m2.stop()


def get(m2: Mongrel2, path: str, host: str, **kwargs: Any) -> requests.Response:
    """One request through Mongrel2 as a browser of ``host`` sends it; no keep-alive."""
    headers = {"Host": host, "Connection": "close", **kwargs.pop("headers", {})}
    return requests.get(m2.url + path, headers=headers, timeout=30, **kwargs)


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


Factory = Callable[..., Any]


# -- the page itself ------------------------------------------------------------------


def test_every_tagged_block_is_run_by_a_test(doc: list[Block]) -> None:
    tagged = [b for b in doc if b.tags]
    stray = [str(b) for b in tagged if not b.recipes and b.file not in SHARED_FILES]
    stray += [str(b) for b in tagged if not b.recipes <= RECIPES]
    assert not stray, "blocks no test runs: %s" % stray
    assert {r for b in tagged for r in b.recipes} == RECIPES
    assert {b.file for b in tagged if not b.recipes} == SHARED_FILES


def test_mongrel2_commands_name_the_configured_server(doc: list[Block]) -> None:
    """The page starts Mongrel2 with the m2.conf's uuid, as the harness starts it here."""
    uuid = conf_value(front_conf(doc, None), "uuid")
    text = DOC.read_text(encoding="utf-8")
    started = re.findall(r"mongrel2 config\.sqlite (\S+)", text)
    assert len(started) >= 2 and set(started) == {uuid}  # the shell and the unit
    unit = unit_file(only(select(doc, file=MONGREL2_UNIT), "the Mongrel2 unit").text)
    service = unit["Service"]
    # The harness runs [mongrel2, db_path.name, uuid] in its workdir: the same thing.
    assert service["WorkingDirectory"] == str(Path(M2CONF).parent)
    mongrel2 = shutil.which("mongrel2")
    assert mongrel2 is not None
    command = shlex.split(service["ExecStart"])
    assert Path(command[0]).resolve() == Path(mongrel2).resolve()
    assert command[1:] == [Mongrel2(Path(M2CONF).parent).db_path.name, uuid]


# -- the recipes ----------------------------------------------------------------------


def test_django_admin_is_styled_and_logs_in(deploy: Deployment, m2gate_server: Factory) -> None:
    site = deploy.site()
    m2 = deploy.front(site, "django")
    site.connect_to(m2)
    serve = site.apply("django")
    app_dir = site.path("/srv/mysite/app")
    password = "a-long-enough-Pa55word"
    python = str(site.path(VENV) / "bin" / "python")
    created = subprocess.run(
        [python, "manage.py", "createsuperuser", "--noinput", "--username", "admin"],
        cwd=app_dir,
        env={**os.environ, "DJANGO_SUPERUSER_PASSWORD": password, "DJANGO_SUPERUSER_EMAIL": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    m2gate_server("django", command=serve, m2=m2, cwd=site.root)
    host = conf_value(m2.doc_conf, "default_host")
    static_base = Path(conf_value(m2.doc_conf, "base"))

    login = get(m2, "/admin/login/", host)
    assert login.status_code == 200, site.logs()
    sheets = re.findall(r'<link rel="stylesheet" href="(/static/[^"]+\.css)"', login.text)
    assert "/static/admin/css/base.css" in sheets
    for sheet in sheets:
        css = get(m2, sheet, host)
        assert css.status_code == 200, sheet
        assert css.headers["Content-Type"] == "text/css"
        assert css.content == (static_base / sheet.removeprefix("/static/")).read_bytes()
    access = Path(site.settings()["access_log"])
    wait_until(lambda: any("/admin/login/" in line for line in lines(access)), "access log")
    assert not [line for line in lines(access) if "/static/" in line], "served by Django?"

    with requests.Session() as browser:
        browser.headers.update({"Host": host})
        form = browser.get(m2.url + "/admin/login/?next=/admin/", timeout=30)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        assert token is not None and browser.cookies.get("csrftoken")
        fields = {"csrfmiddlewaretoken": token[1], "next": "/admin/"}
        fields.update(username="admin", password=password)
        done = browser.post(
            m2.url + "/admin/login/?next=/admin/", data=fields, allow_redirects=False, timeout=30
        )
        assert done.status_code == 302, done.text
        assert done.headers["Location"] == "/admin/"
        admin = browser.get(m2.url + "/admin/", allow_redirects=False, timeout=30)
        assert admin.status_code == 200
        assert "Site administration" in admin.text and "admin/logout/" in admin.text


def test_flask_static_folder_is_served_by_mongrel2(
    deploy: Deployment, m2gate_server: Factory
) -> None:
    site = deploy.site()
    m2 = deploy.front(site, "flask")
    site.connect_to(m2)
    m2gate_server("flask", command=site.apply("flask"), m2=m2, cwd=site.root)
    host = conf_value(m2.doc_conf, "default_host")

    page = get(m2, "/", host)
    assert page.status_code == 200 and "Hello from Flask" in page.text
    href = re.search(r'<link rel="stylesheet" href="([^"]+)">', page.text)
    assert href is not None and href[1] == "/static/style.css"
    css = get(m2, href[1], host)
    css_block = only(
        select(site.doc, recipe="flask", file="/srv/mysite/app/static/style.css"), "css"
    )
    assert css.status_code == 200 and css.headers["Content-Type"] == "text/css"
    assert css.text == css_block.text
    access = Path(site.settings()["access_log"])
    wait_until(lambda: any('"GET / HTTP/1.1" 200' in line for line in lines(access)), "access")
    assert not [line for line in lines(access) if "style.css" in line]


def test_fastapi_http_and_websocket_echo(deploy: Deployment, m2gate_server: Factory) -> None:
    site = deploy.site()
    m2 = deploy.front(site, "fastapi")
    site.connect_to(m2)
    m2gate_server("fastapi", command=site.apply("fastapi"), m2=m2, cwd=site.root)
    host = conf_value(m2.doc_conf, "default_host")

    index = get(m2, "/", host)
    assert index.status_code == 200 and index.json() == {"hello": "world"}
    ws_url = m2.url.replace("http://", "ws://") + "/ws"
    with connect(ws_url, open_timeout=30) as ws:  # Host: 127.0.0.1, Mongrel2's default_host
        for message in ("hello", "wörld " * 1000):
            ws.send(message)
            assert ws.recv(timeout=30) == message


# -- systemd --------------------------------------------------------------------------


def test_systemd_units_verify(deploy: Deployment, doc: list[Block], tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian: apt-get install systemd)")
    site = deploy.site()  # ExecStart's m2gate must exist for verify
    units = tmp_path / "units"
    units.mkdir()
    paths = []
    for doc_path in (MONGREL2_UNIT, M2GATE_UNIT):
        unit = only(select(doc, file=doc_path), doc_path)
        path = units / Path(doc_path).name
        path.write_text(site.relocate(unit.text), encoding="utf-8")
        paths.append(str(path))
    result = subprocess.run(
        [analyze, "verify", *paths], capture_output=True, text=True, timeout=60, check=False
    )
    # verify only warns about some mistakes (an unknown Type=): any output fails.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def notify_messages(sock: socket.socket) -> dict[str, str]:
    """One sd_notify datagram as KEY -> value."""
    data = sock.recv(4096).decode()
    return dict(line.partition("=")[::2] for line in data.splitlines())


def test_m2gate_unit_notifies_systemd(
    deploy: Deployment, m2gate_server: Factory, doc: list[Block], tmp_path: Path
) -> None:
    """The unit's ExecStart, ExecReload and stop, with the NOTIFY_SOCKET systemd would bind.

    Run as the test's user (``User=`` needs systemd); SIGTERM goes to the main
    process only, as the unit's ``KillMode=mixed`` has it.
    """
    service = unit_file(only(select(doc, file=M2GATE_UNIT), "the m2gate unit").text)["Service"]
    assert service["Type"] == "notify" and service["KillMode"] == "mixed"
    site = deploy.site()
    m2 = deploy.front(site, "flask")
    site.connect_to(m2)
    site.apply("flask")
    command = shlex.split(site.relocate(service["ExecStart"]))
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        server = m2gate_server(
            "m2gate.service",
            command=command,
            m2=m2,
            cwd=Path(site.relocate(service["WorkingDirectory"])),
            env={"NOTIFY_SOCKET": str(path)},
            wait=False,
        )
        ready = notify_messages(sock)
        assert ready["READY"] == "1" and ready["MAINPID"] == str(server.pid), ready
        server.wait_ready()
        assert "Hello from Flask" in get(m2, "/", conf_value(m2.doc_conf, "default_host")).text

        reload = shlex.split(service["ExecReload"].replace("$MAINPID", str(server.pid)))
        assert subprocess.run(reload, timeout=30, check=False).returncode == 0
        assert notify_messages(sock) == {"RELOADING": "1"}
        assert notify_messages(sock)["READY"] == "1"

        server.signal(signal.SIGTERM)
        assert notify_messages(sock) == {"STOPPING": "1"}
    assert server.proc.wait(timeout=float(service["TimeoutStopSec"])) == 0, site.logs()


# -- logrotate ------------------------------------------------------------------------


def test_logrotate_moves_both_servers_to_new_files(
    deploy: Deployment, m2gate_server: Factory, doc: list[Block], tmp_path: Path
) -> None:
    # /usr/sbin is not on every user's PATH.
    logrotate = shutil.which("logrotate", path=os.pathsep.join([os.environ["PATH"], "/usr/sbin"]))
    if logrotate is None:
        pytest.skip("logrotate not installed (make sysdeps, or apt-get install logrotate)")
    service = unit_file(only(select(doc, file=M2GATE_UNIT), "the m2gate unit").text)["Service"]
    site = deploy.site()
    m2 = deploy.front(site, "flask")
    site.connect_to(m2)
    site.apply("flask")
    command = shlex.split(site.relocate(service["ExecStart"]))
    m2gate_server("m2gate.service", command=command, m2=m2, cwd=site.root)
    host = conf_value(m2.doc_conf, "default_host")
    settings = site.settings()
    access = Path(settings["access_log"])
    main_log = site.path("/srv/mysite/logs/m2gate.log")
    m2_access = m2.access_log

    # Mongrel2 logs no query string: distinct paths (404s from the app) mark the requests.
    assert get(m2, "/before-rotation", host).status_code == 404
    for log in (access, m2_access):
        wait_until(lambda log=log: any("before-rotation" in x for x in lines(log)), str(log))

    config = tmp_path / "logrotate.conf"
    rotate = only(select(doc, file=LOGROTATE), "the logrotate snippet")
    config.write_text(site.relocate(rotate.text), encoding="utf-8")
    config.chmod(0o644)
    rotated = subprocess.run(
        [logrotate, "-f", "-v", "-s", str(tmp_path / "logrotate.state"), str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    for log in (access, main_log, m2_access, m2.error_log):
        assert log.with_name(log.name + ".1").exists(), rotated.stderr

    # Every m2gate process (master and workers) says so in the new log once it reopened.
    processes = 1 + int(settings.get("processes", 1))
    wait_until(
        lambda: sum("log files reopened" in x for x in lines(main_log)) >= processes,
        "m2gate's processes reopening their logs",
    )
    assert get(m2, "/after-rotation", host).status_code == 404
    for log in (access, m2_access):
        wait_until(lambda log=log: any("after-rotation" in x for x in lines(log)), str(log))
        old = lines(log.with_name(log.name + ".1"))
        assert any("before-rotation" in x for x in old)
        assert not any("after-rotation" in x for x in old)
        assert not any("before-rotation" in x for x in lines(log))


# -- two handler hosts ----------------------------------------------------------------


def test_two_handler_hosts_share_one_mongrel2(deploy: Deployment, m2gate_server: Factory) -> None:
    front = deploy.site("mongrel2-host")
    m2 = deploy.front(front, "two-hosts")
    servers = []
    for name in ("handler-host-a", "handler-host-b"):
        site = deploy.site(name)
        site.connect_to(m2)
        serve = site.apply("two-hosts")
        servers.append(m2gate_server(name, command=serve, m2=m2, cwd=site.root, wait=False))
    servers[0].wait_ready()
    host = conf_value(m2.doc_conf, "default_host")
    masters = {server.pid: index for index, server in enumerate(servers)}
    seen: set[int] = set()

    def both_served() -> bool:
        answer = get(m2, "/", host)
        assert answer.status_code == 200
        pid = int(answer.text.split()[1])
        with open("/proc/%d/stat" % pid, encoding="ascii") as fh:
            parent = int(fh.read().rsplit(")", 1)[1].split()[1])
        assert parent in masters, "pid %d is no worker of either host" % pid
        seen.add(masters[parent])
        return len(seen) == 2

    wait_until(both_served, "requests served by both handler hosts")
