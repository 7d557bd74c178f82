"""Shared fixtures: a real Mongrel2 per test and ``m2gate serve`` subprocesses.

Everything started here is stopped by its own PID at teardown, whatever the
test did, so a failing test never leaves a server behind for the next one.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from m2gate.testing.mongrel2 import HandlerSpec, Mongrel2
from support import APPS, ROOT, m2gate_command

log = logging.getLogger(__name__)

# Safety net for an interpreter that dies between start and teardown.
_LIVE_M2GATE: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _kill_leftover_m2gate() -> None:
    for pid, proc in list(_LIVE_M2GATE.items()):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            proc.wait(timeout=5)
    _LIVE_M2GATE.clear()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "mongrel2(handlers=None, settings=None): configure the `mongrel2` fixture",
    )
    _compile_for_subprocesses()


def _compile_for_subprocesses() -> None:
    """Write the bytecode of m2gate and of the test apps once, before any test.

    Hundreds of ``m2gate`` subprocesses import them; where
    PYTHONDONTWRITEBYTECODE is set none of them would
    leave its bytecode behind, and each would compile every module again
    (a fifth of a second of every start). Unchanged files are skipped.
    """
    import compileall

    import m2gate

    for folder in (Path(m2gate.__file__).parent, APPS):
        compileall.compile_dir(folder, quiet=2, workers=1)


# -- Mongrel2 -------------------------------------------------------------------

Mongrel2Factory = Callable[..., Mongrel2]


@pytest.fixture
def mongrel2_factory(tmp_path: Path) -> Iterator[Mongrel2Factory]:
    """Start Mongrel2s on demand: ``mongrel2_factory(handlers=..., settings=...)``.

    Each gets its own directory under ``tmp_path``; all are stopped at teardown.
    They are returned once their ports are bound, before Mongrel2 1.12's half
    second of sleep before it accepts: the test starts its handler meanwhile,
    and a client that connects early waits in the listen backlog.
    ``wait=True`` returns only once Mongrel2 answers HTTP.
    """
    started: list[Mongrel2] = []

    def start(
        handlers: list[HandlerSpec] | None = None,
        settings: dict[str, object] | None = None,
        port: int | None = None,
        wait: bool = False,
    ) -> Mongrel2:
        workdir = tmp_path / f"mongrel2-{len(started)}"
        m2 = Mongrel2(workdir, handlers=handlers, settings=settings, port=port)
        started.append(m2)
        return m2.start(wait=wait)

    try:
        yield start
    finally:
        for m2 in reversed(started):
            m2.stop()


@pytest.fixture
def mongrel2(request: pytest.FixtureRequest, mongrel2_factory: Mongrel2Factory) -> Mongrel2:
    """A started Mongrel2 with one tnetstring handler on ``/`` (see the marker)."""
    marker = request.node.get_closest_marker("mongrel2")
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker else {}
    return mongrel2_factory(**kwargs)


# -- m2gate serve ---------------------------------------------------------------


class ServerError(RuntimeError):
    """An ``m2gate serve`` subprocess died or never answered."""


def probe(m2: Mongrel2, path: str, timeout: float) -> bool:
    """One GET through Mongrel2: True once the handler, not Mongrel2, answered."""
    conn = http.client.HTTPConnection("127.0.0.1", m2.port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        server = resp.getheader("Server") or ""
        return not server.startswith("Mongrel2")
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _loopback_port(spec: str) -> int | None:
    """The port of a ``tcp://127.0.0.1:PORT`` spec; None for any other."""
    prefix = "tcp://127.0.0.1:"
    rest = spec[len(prefix) :]
    return int(rest) if spec.startswith(prefix) and rest.isdigit() else None


def _connected_to(ports: Sequence[int | None]) -> bool:
    """Whether some local TCP connection is established to each of ``ports``.

    Read from /proc/net/tcp (True where there is none, so nothing waits on it):
    Mongrel2 binds the handler ports, so a connection to one is its handler's.
    """
    try:
        table = Path("/proc/net/tcp").read_text(encoding="ascii")
    except OSError:
        return True
    remote = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "01":  # ESTABLISHED
            remote.add(int(fields[2].rsplit(":", 1)[1], 16))
    return all(port in remote for port in ports)


class M2GateServer:
    """One ``m2gate serve`` process, owned by PID (and its own process group)."""

    def __init__(
        self,
        app: str,
        extra_args: tuple[str, ...],
        m2: Mongrel2,
        handler: HandlerSpec,
        cwd: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.app = app
        self.m2 = m2
        self.handler = handler
        self.log_path = log_path
        self.args = [
            *m2gate_command(),
            "serve",
            app,
            "--send-spec",
            handler.send_spec,
            "--recv-spec",
            handler.recv_spec,
            "--send-ident",
            handler.send_ident,
            *extra_args,
        ]
        if command is not None:  # a whole command line (docs/deploying.md's); app: a label
            self.args = list(command)
        full_env = dict(os.environ)
        full_env["PYTHONUNBUFFERED"] = "1"
        # Test apps import as modules of tests/apps whatever the cwd.
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(APPS), full_env.get("PYTHONPATH", "")) if p
        )
        full_env.update(env or {})
        with log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args,
                cwd=cwd,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: workers die with it
            )
        _LIVE_M2GATE[self.proc.pid] = self.proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return self.m2.url

    @property
    def output(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, path: str = "/", timeout: float = 20.0) -> None:
        """Poll with short GETs until the app answers through Mongrel2.

        Short probes, because a reply published before the PUB socket connected
        is lost and that request would hang forever. The first waits until
        m2gate's sockets have reached Mongrel2's: a probe sent before that
        waits for the handler inside Mongrel2, and its answer often missed
        the probe's second (a whole second lost in most starts).
        """
        deadline = time.monotonic() + timeout
        ports = [_loopback_port(spec) for spec in (self.handler.send_spec, self.handler.recv_spec)]
        while None not in ports and not _connected_to(ports) and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break  # reported below
            time.sleep(0.01)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"m2gate exited with {self.proc.returncode}: {self.args}\n{self.output}"
                )
            if probe(self.m2, path, timeout=1.0):
                return
            time.sleep(0.05)
        raise ServerError(f"m2gate not answering after {timeout}s: {self.args}\n{self.output}")

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the m2gate process itself."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait, then SIGKILL the process group; returns the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("m2gate pid %s ignored SIGTERM, killing it", self.proc.pid)
        # Anything left in its group (workers, or the process itself) goes now.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        _LIVE_M2GATE.pop(self.proc.pid, None)
        return self.proc.returncode


M2GateFactory = Callable[..., M2GateServer]


@pytest.fixture
def m2gate_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[M2GateFactory]:
    """Start ``m2gate serve APP *extra_args`` against a Mongrel2 and wait until it answers.

    ``m2gate_server("basic:application", "--threads", "4")`` uses the ``mongrel2``
    fixture's first handler; pass ``m2=``/``handler=`` for another one,
    ``cwd=`` (default: repo root), ``env=``, ``ready_path=`` or ``wait=False``;
    ``command=[...]`` runs that command line instead of ``m2gate serve APP ...``.
    Apps in tests/apps are importable by module name.
    """
    servers: list[M2GateServer] = []

    def start(
        app: str,
        *extra_args: str,
        m2: Mongrel2 | None = None,
        handler: HandlerSpec | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        ready_path: str = "/",
        ready_timeout: float = 20.0,
        wait: bool = True,
        command: Sequence[str] | None = None,
    ) -> M2GateServer:
        mongrel = m2 if m2 is not None else request.getfixturevalue("mongrel2")
        spec = handler if handler is not None else mongrel.handlers[0]
        server = M2GateServer(
            app,
            extra_args,
            mongrel,
            spec,
            cwd if cwd is not None else ROOT,
            tmp_path / f"m2gate-{len(servers)}.log",
            env,
            command,
        )
        servers.append(server)
        if wait:
            server.wait_ready(ready_path, ready_timeout)
        return server

    try:
        yield start
    finally:
        for server in reversed(servers):
            server.stop()
