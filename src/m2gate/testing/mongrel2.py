"""Run a real Mongrel2 in the foreground for tests, benchmarks and demos.

Mongrel2 is configured through ``m2sh`` and a sqlite database, daemonizes and
chroots by default, and has no "reload config" any more. This module hides all
of that: it writes an ``m2.conf`` without chroot and with daemonizing off, loads
it, runs ``mongrel2`` as a child process that only ever gets signalled by its
own PID, and waits until the HTTP port really accepts connections. Before
stopping it, it closes the client connections through Mongrel2's control port:
Mongrel2 1.12 segfaults when SIGINT (or SIGTERM, the same to it) finds one open.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import zmq

__all__ = [
    "DirSpec",
    "HandlerSpec",
    "Mongrel2",
    "Mongrel2Error",
    "free_port",
    "reaper_bound",
    "reaper_settings",
]

log = logging.getLogger(__name__)

DEFAULT_CONTENT_LENGTH: Final = 20480
_IPC_PATH_MAX: Final = 107  # sun_path holds 108 bytes with the terminating NUL
_SPEC_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/*@+=,~%"
)


class Mongrel2Error(RuntimeError):
    """Mongrel2 could not be configured or started."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The kernel picks it (bind to port 0), so parallel test runs do not collide on
    a fixed number; the small race until the real server binds it is accepted.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def reaper_settings(min_ping: int, tick_timer: int = 1) -> dict[str, object]:
    """Mongrel2 settings that close any connection quiet for ``min_ping`` seconds.

    Mongrel2's reaper (``Register_cleanout``, every ``tick_timer`` s) kills a
    connection when more criteria than ``limits.kill_limit`` hold; by default
    (2) a stale ping *and* both low rates, which a request waiting on a dead
    handler host meets only after 120 s and more. With the rates off and
    kill_limit 0 the ping alone decides: a client whose request nobody will
    answer sees its connection closed within :func:`reaper_bound`. What
    counts as activity: a request read from the client, a handler's ``ctl``
    keep-alive; response bytes do not (docs/deploying.md).
    """
    return {
        "limits.min_ping": min_ping,
        "limits.min_read_rate": 0,
        "limits.min_write_rate": 0,
        "limits.kill_limit": 0,
        "limits.tick_timer": tick_timer,
    }


def reaper_bound(min_ping: int, tick_timer: int = 1) -> int:
    """Seconds within which :func:`reaper_settings` close a quiet connection.

    The reaper compares whole-second clocks that it refreshes only once a
    tick, one tick before it checks: up to two ticks and two seconds late.
    """
    return min_ping + 2 * tick_timer + 2


@dataclass
class HandlerSpec:
    """One Mongrel2 handler route; empty specs are filled with free loopback ports."""

    route: str = "/"
    send_spec: str = ""
    recv_spec: str = ""
    send_ident: str = field(default_factory=lambda: str(uuid.uuid4()))
    protocol: str = "tnetstring"


@dataclass
class DirSpec:
    """One Mongrel2 ``Dir`` route: Mongrel2 itself serves the files under ``base``.

    ``route`` is a URL prefix (``/static/``); a request for ``/static/css/a.css``
    reads ``base/css/a.css``. ``base`` must be absolute: Mongrel2 resolves it
    against its own working directory, which is not the caller's.
    """

    route: str
    base: str
    index_file: str = "index.html"
    default_ctype: str = "application/octet-stream"


_DIR_MAX_PATH: Final = 256  # Mongrel2's default limits.dir_max_path


def _check_dir(spec: DirSpec) -> DirSpec:
    """``spec`` with its base ending in ``/`` (Mongrel2 refuses it otherwise)."""
    if not spec.route.startswith("/") or not spec.route.endswith("/"):
        raise Mongrel2Error(f"Dir route {spec.route!r} must start and end with /")
    if not os.path.isabs(spec.base):
        raise Mongrel2Error(f"Dir base {spec.base!r} must be an absolute path")
    return dataclasses.replace(spec, base=spec.base.rstrip("/") + "/")


# PIDs of every Mongrel2 this process started and has not reaped yet, so that an
# interpreter exit (test failure, Ctrl-C, forgotten stop()) never leaks a server.
_LIVE: dict[int, subprocess.Popen[bytes]] = {}
_LIVE_LOCK = threading.Lock()


def _kill_leftovers() -> None:
    """atexit safety net: stop every still-running Mongrel2 we started, by PID."""
    with _LIVE_LOCK:
        procs = list(_LIVE.values())
        _LIVE.clear()
    for proc in procs:
        _terminate(proc, grace=2.0)


atexit.register(_kill_leftovers)


def _terminate(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGINT (Mongrel2's clean shutdown) to this PID, then SIGKILL after ``grace``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        log.warning("mongrel2 pid %s ignored SIGINT for %ss, killing it", proc.pid, grace)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up once in the parent (dlopen is not fork-safe)."""
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: atexit remains the safety net
        return None
    return prctl


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG: Final = 1


def _die_with_parent() -> None:
    """Child-side hook: ask Linux to SIGKILL Mongrel2 if our process dies hard."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _conf_string(value: str) -> str:
    """Quote ``value`` for m2sh's config language, which has no escape sequences."""
    if '"' in value or "\\" in value or "\n" in value:
        raise Mongrel2Error(f"value not representable in m2.conf: {value!r}")
    return f'"{value}"'


def _conf_value(value: object) -> str:
    """Render a setting value: m2sh knows integers and strings only."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return _conf_string(str(value))


def _tns(value: object) -> bytes:
    """A tnetstring (strings, integers, lists, dicts): what the control port reads."""
    if isinstance(value, str):
        data, tag = value.encode("utf-8"), b","
    elif isinstance(value, int) and not isinstance(value, bool):
        data, tag = b"%d" % value, b"#"
    elif isinstance(value, dict):
        data, tag = b"".join(_tns(k) + _tns(v) for k, v in value.items()), b"}"
    elif isinstance(value, (list, tuple)):
        data, tag = b"".join(_tns(v) for v in value), b"]"
    else:
        raise TypeError("no tnetstring for %r" % (value,))
    return b"%d:%s%s" % (len(data), data, tag)


def _untns(data: bytes, pos: int = 0) -> tuple[Any, int]:
    """Parse one tnetstring at ``pos``: (value, position after it); ValueError if broken."""
    colon = data.index(b":", pos)
    start = colon + 1
    end = start + int(data[pos:colon])
    payload, tag = data[start:end], data[end : end + 1]
    if tag == b",":
        return payload.decode("utf-8", "replace"), end + 1
    if tag == b"#":
        return int(payload), end + 1
    if tag == b"!":
        return payload == b"true", end + 1
    if tag == b"~":
        return None, end + 1
    if tag in (b"]", b"}"):
        items: list[Any] = []
        at = start
        while at < end:
            item, at = _untns(data, at)
            items.append(item)
        if tag == b"]":
            return items, end + 1
        return dict(zip(items[::2], items[1::2], strict=True)), end + 1
    raise ValueError("unknown tnetstring tag %r" % tag)


# Mongrel2 1.12's error log line once its control port is set up (src/control.c).
_CONTROL_UP: Final = b"Setting up control socket in at "


def _size(path: Path) -> int:
    """Size of ``path`` now, 0 if it does not exist yet."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int) -> bytes:
    """What ``path`` holds past ``offset``; empty if unreadable."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read()
    except OSError:
        return b""


def _tail(path: Path, lines: int = 25) -> str:
    """Last lines of a log file, for error messages; empty if unreadable."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Mongrel2:
    """A foreground Mongrel2 in ``workdir``, owned and stopped by PID.

    Use it as a context manager (``with Mongrel2(tmp_path) as m2:``) or call
    :meth:`start` and :meth:`stop`; stop is idempotent and always runs on exit.
    """

    server_uuid: Final = "f400bf85-4538-4f7a-8908-67e313d515c2"

    def __init__(
        self,
        workdir: Path,
        handlers: list[HandlerSpec] | None = None,
        settings: dict[str, object] | None = None,
        port: int | None = None,
        *,
        bind_addr: str = "127.0.0.1",
        dirs: list[DirSpec] | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.startup_timeout = startup_timeout
        self.bind_addr = bind_addr
        self._fixed_port = port
        self._requested = list(handlers or [HandlerSpec()])
        self.port = 0
        self.handlers: list[HandlerSpec] = []
        self._assign_ports()
        self.dirs = [_check_dir(spec) for spec in dirs or []]
        routes = [spec.route for spec in self.handlers] + [spec.route for spec in self.dirs]
        if len(set(routes)) != len(routes):
            raise Mongrel2Error(f"duplicate routes: {routes}")
        self.settings: dict[str, object] = {
            "server.daemonize": 0,
            "limits.content_length": DEFAULT_CONTENT_LENGTH,
            "upload.temp_store": str(self.workdir / "tmp" / "upload.XXXXXX"),
        }
        # Mongrel2 refuses a Dir whose base or route is as long as this limit.
        longest = max((len(x) for d in self.dirs for x in (d.base, d.route)), default=0)
        if longest >= _DIR_MAX_PATH:
            self.settings["limits.dir_max_path"] = longest + 1
        self.settings.update(settings or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._ever_started = False
        self.returncode: int | None = None  # Mongrel2's exit status, once stopped

    def _assign_ports(self) -> None:
        """(Re)pick every port the caller left to us; explicit ones are kept."""
        taken: set[int] = set()
        self.port = self._fixed_port if self._fixed_port is not None else self._pick_port(taken)
        taken.add(self.port)
        self.handlers = [self._resolve(spec, taken) for spec in self._requested]

    @property
    def _has_auto_ports(self) -> bool:
        return self._fixed_port is None or any(
            not spec.send_spec or not spec.recv_spec for spec in self._requested
        )

    # -- configuration -------------------------------------------------------

    @staticmethod
    def _pick_port(taken: set[int]) -> int:
        """A free port not already handed to this instance (the kernel may repeat)."""
        for _ in range(50):
            candidate = free_port()
            if candidate not in taken:
                return candidate
        raise Mongrel2Error("could not find a free TCP port")

    def _resolve(self, spec: HandlerSpec, taken: set[int]) -> HandlerSpec:
        """Copy ``spec`` with empty send/recv specs replaced by free loopback ports."""
        specs: dict[str, str] = {}
        for name in ("send_spec", "recv_spec"):
            value: str = getattr(spec, name)
            if not value:
                chosen = self._pick_port(taken)
                taken.add(chosen)
                value = f"tcp://127.0.0.1:{chosen}"
            specs[name] = value
        if spec.protocol not in ("tnetstring", "json"):
            raise Mongrel2Error(f"unknown handler protocol {spec.protocol!r}")
        return dataclasses.replace(spec, **specs)

    @property
    def handler(self) -> HandlerSpec:
        """The first handler: most tests configure exactly one."""
        return self.handlers[0]

    @property
    def connect_host(self) -> str:
        """Where to reach the listener: its address, or loopback for a wildcard one."""
        return "127.0.0.1" if self.bind_addr in ("", "0.0.0.0") else self.bind_addr

    @property
    def url(self) -> str:
        """Base URL of the HTTP listener, without trailing slash."""
        return f"http://{self.connect_host}:{self.port}"

    @property
    def conf_path(self) -> Path:
        """The m2sh source config written by :meth:`write_config`."""
        return self.workdir / "m2.conf"

    @property
    def db_path(self) -> Path:
        """The sqlite config database Mongrel2 actually reads."""
        return self.workdir / "config.sqlite"

    @property
    def upload_dir(self) -> Path:
        """Directory of ``upload.temp_store``, where Mongrel2 writes big bodies."""
        return Path(str(self.settings["upload.temp_store"])).parent

    @property
    def error_log(self) -> Path:
        """Mongrel2's own error log (most startup failures end up here)."""
        return self.workdir / "logs" / "error.log"

    @property
    def access_log(self) -> Path:
        """Mongrel2's access log."""
        return self.workdir / "logs" / "access.log"

    @property
    def output_log(self) -> Path:
        """Where the process's stdout and stderr go."""
        return self.workdir / "logs" / "mongrel2.out"

    @property
    def pid(self) -> int | None:
        """PID of the running Mongrel2, or None when stopped."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the Mongrel2 process is alive."""
        return self.pid is not None

    def render_config(self) -> str:
        """The m2.conf text: one Server, one Host, a Handler or Dir per spec, no chroot."""
        routes = []
        for spec in self.handlers:
            routes.append(
                f"        {_conf_string(spec.route)}: Handler("
                f"send_spec={_conf_string(spec.send_spec)}, "
                f"send_ident={_conf_string(spec.send_ident)}, "
                f"recv_spec={_conf_string(spec.recv_spec)}, recv_ident={_conf_string('')}, "
                f"protocol={_conf_string(spec.protocol)})"
            )
        for d in self.dirs:
            routes.append(
                f"        {_conf_string(d.route)}: Dir("
                f"base={_conf_string(d.base)}, "
                f"index_file={_conf_string(d.index_file)}, "
                f"default_ctype={_conf_string(d.default_ctype)})"
            )
        settings = ",\n    ".join(
            f"{_conf_string(key)}: {_conf_value(value)}" for key, value in self.settings.items()
        )
        # m2sh rejects trailing commas, hence the joins.
        return (
            f"main = Server(uuid={_conf_string(self.server_uuid)},\n"
            '    access_log="logs/access.log", error_log="logs/error.log",\n'
            '    pid_file="run/mongrel2.pid", control_port="ipc://run/control",\n'
            '    default_host="localhost", name="main",\n'
            f"    bind_addr={_conf_string(self.bind_addr)},\n"
            f"    port={self.port},\n"
            '    hosts=[Host(name="localhost", routes={\n' + ",\n".join(routes) + "\n    })]\n)\n\n"
            f"settings = {{\n    {settings}\n}}\n\n"
            "servers = [main]\n"
        )

    def write_config(self) -> None:
        """Create the working directories, write m2.conf and load it with m2sh."""
        for sub in ("logs", "run", "tmp"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.render_config(), encoding="utf-8")
        # m2sh load adds to an existing database; start from scratch each time.
        self.db_path.unlink(missing_ok=True)
        m2sh = shutil.which("m2sh")
        if m2sh is None:
            raise Mongrel2Error("m2sh not found on PATH (apt-get install mongrel2-core)")
        env = dict(os.environ)
        env.setdefault("LOGNAME", "m2gate")  # m2sh records the loader's name in its log
        result = subprocess.run(
            [m2sh, "load", "-config", self.conf_path.name, "-db", self.db_path.name],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0 or not self.db_path.exists():
            raise Mongrel2Error(
                f"m2sh load failed (exit {result.returncode}):\n"
                + result.stdout.decode(errors="replace")
                + result.stderr.decode(errors="replace")
            )

    # -- process lifecycle ---------------------------------------------------

    def start(self, wait: bool = True) -> Mongrel2:
        """Write and load the config, start Mongrel2 and wait for its HTTP port.

        On the very first start, a port picked by :func:`free_port` that someone
        else grabbed in the meantime is replaced and the start retried; after
        that, ports stay fixed so connected handlers keep working across restarts.

        ``wait=False`` returns as soon as Mongrel2 holds its ports (listener,
        handler and control sockets bound), without the half second Mongrel2
        1.12 sleeps before it accepts: a client that connects meanwhile waits
        in the listen backlog, so a caller can start its handler during it.
        """
        attempts = 3 if not self._ever_started and self._has_auto_ports else 1
        for attempt in range(1, attempts + 1):
            offsets = {path: _size(path) for path in (self.error_log, self.output_log)}
            try:
                self._start_once(wait)
            except Mongrel2Error:
                if attempt == attempts or not self._port_clash(offsets):
                    raise
                log.warning("mongrel2 port clash (attempt %s), picking new ports", attempt)
                self._assign_ports()
                continue
            self._ever_started = True
            break
        return self

    def _port_clash(self, offsets: Mapping[Path, int]) -> bool:
        """Whether the last failed start logged an address already in use.

        A ZeroMQ bind fails into the error log; the HTTP listener's bind, done
        before that log is open, into the process output.
        """
        text = b"".join(_read_from(path, offset) for path, offset in offsets.items())
        if self._fixed_port is not None and b"port %d\n" % self._fixed_port in text:
            return False  # the caller's own port: retrying cannot help
        return b"Address already in use" in text

    def _start_once(self, wait: bool = True) -> None:
        """One attempt: load the config, spawn Mongrel2, wait for it to answer."""
        with self._lock:
            if self.running:
                return
            self.write_config()
            binary = shutil.which("mongrel2")
            if binary is None:
                raise Mongrel2Error("mongrel2 not found on PATH (apt-get install mongrel2-core)")
            # A SIGKILLed Mongrel2 leaves its pid file behind and the next one
            # would refuse to start if that PID got reused.
            (self.workdir / "run" / "mongrel2.pid").unlink(missing_ok=True)
            log_offset = _size(self.error_log)
            in_main = threading.current_thread() is threading.main_thread()
            with self.output_log.open("ab") as out:
                proc = subprocess.Popen(
                    [binary, self.db_path.name, self.server_uuid],
                    cwd=self.workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    # Own session: a terminal Ctrl-C goes to our process, which then
                    # stops its app servers before Mongrel2, not all at once.
                    start_new_session=True,
                    # Parent death is tracked per thread: only safe from the main one.
                    preexec_fn=_die_with_parent if in_main and _PRCTL else None,
                )
            self._proc = proc
            with _LIVE_LOCK:
                _LIVE[proc.pid] = proc
        log.info("started mongrel2 pid %s on %s in %s", proc.pid, self.url, self.workdir)
        try:
            if wait:
                self._wait_listening(proc)
            else:
                self._wait_bound(proc, log_offset)
        except BaseException:
            self.stop()
            raise

    def _wait_bound(self, proc: subprocess.Popen[bytes], log_offset: int) -> None:
        """Wait for the error log line Mongrel2 writes once every port is bound.

        Its HTTP listener is bound (else it exits) before the handlers and the
        control port are set up, and those before it sleeps half a second and
        starts accepting; the line is its own, written in this start's part of
        the log, so no other process on the port can fake it.
        """
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if _CONTROL_UP in _read_from(self.error_log, log_offset):
                if proc.poll() is None:
                    return
            if proc.poll() is not None:
                break
            time.sleep(0.005)
        # No such line (another Mongrel2 version, a slow machine): the HTTP way.
        self._wait_listening(proc)

    def _wait_listening(self, proc: subprocess.Popen[bytes]) -> None:
        """Poll the HTTP port until Mongrel2 answers there, or fail with the logs."""
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = proc.poll()
            if code is not None:
                raise Mongrel2Error(
                    f"mongrel2 exited with status {code} during startup\n" + self._diagnostics()
                )
            if self._answers_as_mongrel2() and proc.poll() is None:
                return
            if time.monotonic() > deadline:
                raise Mongrel2Error(
                    f"mongrel2 (pid {proc.pid}) not listening on port {self.port} after "
                    f"{self.startup_timeout}s\n" + self._diagnostics()
                )
            time.sleep(0.05)

    def _answers_as_mongrel2(self) -> bool:
        """Send a malformed request and expect Mongrel2's own 400.

        A bare connect is not enough: another process may hold the port we
        picked, and then a dying Mongrel2 would look like a listening one. The
        bad request never reaches a handler, so it leaves no trace there.
        """
        try:
            with socket.create_connection((self.connect_host, self.port), timeout=1.0) as sock:
                sock.sendall(b"M2GATE-PROBE\r\n\r\n")
                reply = b""
                while b"\r\n\r\n" not in reply and len(reply) < 4096:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
        except OSError:
            return False
        if b"Server: Mongrel2" in reply:
            return True
        log.warning("port %s answered but not as Mongrel2: %r", self.port, reply[:200])
        return False

    def _diagnostics(self) -> str:
        """Tail of the error log and process output, for failure messages."""
        return (
            f"--- {self.error_log} (tail) ---\n{_tail(self.error_log)}\n"
            f"--- {self.output_log} (tail) ---\n{_tail(self.output_log)}"
        )

    def control(self, command: str, timeout: float = 2.0, **args: object) -> Any:
        """One command on Mongrel2's control port (``status``, ``kill``...): its answer.

        Raises Mongrel2Error when the port does not answer within ``timeout``.
        """
        path = str(self.workdir / "run" / "control")
        if len(path.encode()) > _IPC_PATH_MAX:
            raise Mongrel2Error("control socket path too long for ipc://: %s" % path)
        ctx: zmq.Context[Any] = zmq.Context()
        try:
            sock = ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect("ipc://" + path)
            sock.send(_tns([command, args]))
            if not sock.poll(int(timeout * 1000)):
                raise Mongrel2Error("mongrel2 control port %s did not answer" % path)
            reply: bytes = sock.recv()
        finally:
            ctx.destroy(linger=0)
        try:
            return _untns(reply)[0]
        except (ValueError, IndexError, TypeError) as exc:
            raise Mongrel2Error("unreadable control port answer %r" % reply[:200]) from exc

    def connections(self) -> list[int]:
        """Ids of the client connections Mongrel2 has open now (``status what=net``)."""
        table = self.control("status", what="net")
        rows: Sequence[Sequence[Any]] = table.get("rows", []) if isinstance(table, dict) else []
        return [int(row[0]) for row in rows if row and isinstance(row[0], int) and row[0] >= 0]

    def close_connections(self, rounds: int = 3) -> int:
        """Close every client connection through the control port; how many were closed.

        Mongrel2 1.12 crashes (SIGSEGV, "Task is already added, refusing to do
        it again" in its error log) when it is stopped with a client connection
        open, an idle keep-alive one included, once its handler has gone (the
        usual order: the app server stops first). Its shutdown signals every
        task; a connection's deliver task asleep on its rendezvous then seems
        to land on two task lists at once. A connection Mongrel2 closes itself
        (``kill``, as its idle-timeout ticker does) ends its tasks cleanly.
        """
        closed = 0
        for _ in range(rounds):  # a client may connect again meanwhile
            ids = self.connections()
            if not ids:
                break
            for conn_id in ids:
                self.control("kill", id=conn_id)
                closed += 1
        return closed

    def stop(self, grace: float = 5.0) -> None:
        """Close client connections, SIGINT our PID, SIGKILL after ``grace`` seconds.

        Safe to call repeatedly; the exit status is kept in :attr:`returncode`.
        """
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        closed: int | None = None
        try:
            if proc.poll() is None:
                try:
                    closed = self.close_connections()
                except Mongrel2Error as exc:  # stop it anyway; the crash is explained below
                    log.warning("could not close mongrel2's connections before stopping: %s", exc)
            _terminate(proc, grace)
        finally:
            with _LIVE_LOCK:
                _LIVE.pop(proc.pid, None)
        self.returncode = proc.returncode
        if closed:
            log.info("closed %d client connection(s) before stopping mongrel2", closed)
        if proc.returncode == -signal.SIGSEGV:
            log.warning(
                "mongrel2 pid %s crashed while stopping (SIGSEGV): Mongrel2 1.12 does when a"
                " client connection is still open at shutdown (see 'Task is already added' in"
                " %s); %s",
                proc.pid,
                self.error_log,
                "its connections could not be closed first"
                if closed is None
                else "a client connected after the others were closed",
            )
        log.info("stopped mongrel2 pid %s (status %s)", proc.pid, proc.returncode)

    def restart(self, settings: Mapping[str, object] | None = None) -> Mongrel2:
        """Stop, apply setting changes, reload the config and start again.

        Mongrel2 1.12 only reopens logs on SIGHUP, so any config change needs a
        full restart; ports and handler specs stay the same, connection ids reset.
        """
        self.stop()
        if settings:
            self.settings.update(settings)
        return self.start()

    def __enter__(self) -> Mongrel2:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Mongrel2 pid={self.pid} url={self.url} workdir={self.workdir}>"
