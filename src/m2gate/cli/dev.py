"""``m2gate dev APP``: the app behind a Mongrel2 of its own, reloaded on code changes.

One command instead of a hand-written m2.conf, ``m2sh load``, ``mongrel2`` and
``m2gate serve`` in three terminals. The Mongrel2 side is the harness of
:mod:`m2gate.testing.mongrel2` (config written and loaded into the run
directory, the server started and stopped by its PID); the app runs in a
child ``m2gate serve`` with the serve options the user gave, so dev serves
exactly as serve does. Reloads: with worker processes the master's own
``--reload-on-change`` (zero downtime); in one process, this module watches
the project's sources and restarts the child.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import ipaddress
import logging
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, Final, get_origin

from m2gate.cli.devargs import DEFAULT_RUN_DIR
from m2gate.cli.devstatic import (
    child_environ,
    django_static,
    find_django,
    parse_statics,
    read_static_settings,
)
from m2gate.config.declare import ConfigError, env_var, flag
from m2gate.config.resolve import configure
from m2gate.config.settings import Config, settings
from m2gate.supervisor.child import die_with_parent
from m2gate.supervisor.serve import needs_master
from m2gate.supervisor.watch import WATCH_INTERVAL
from m2gate.testing.mongrel2 import DirSpec, HandlerSpec, Mongrel2, Mongrel2Error

log = logging.getLogger("m2gate.dev")

EXIT_CONFIG: Final = 2
EXIT_FAILED: Final = 1
RUN_DIR_MARKER: Final = ".m2gate-dev"  # proves a non-empty run directory is ours
MISSING_MONGREL2: Final = (
    "m2gate dev: mongrel2 and m2sh are not on PATH; install Mongrel2"
    " (Debian/Ubuntu: apt-get install mongrel2-core)"
)

# Where dev's defaults differ from serve's, when no source sets the setting:
# requests show in the terminal, and a reload does not wait 30 s for a stream.
DEV_DEFAULTS: Final[Mapping[str, str]] = {"access_log": "-", "graceful_timeout": "5"}
SOURCE_SUFFIXES: Final = (".py",)
DJANGO_SUFFIXES: Final = (".py", ".html")  # the cached template loader needs a restart
MAX_SCANNED: Final = 20000  # directory entries per scan; beyond, the tree is watched in part
SKIP_DIRS: Final = frozenset({"__pycache__", "node_modules", "site-packages", "dist-packages"})
PROBE_TIMEOUT: Final = 2.0  # seconds one readiness GET may take
STOP_MARGIN: Final = 5.0  # seconds past graceful_timeout before a child is killed


@dataclass
class DevOptions:
    """dev's own options, checked; ``serve`` holds the serve settings as given."""

    host: str = "127.0.0.1"
    port: int | None = None
    run_dir: Path = field(default_factory=lambda: Path(DEFAULT_RUN_DIR).absolute())
    static: list[DirSpec] = field(default_factory=list)
    reload: bool = True
    serve: dict[str, Any] = field(default_factory=dict)


def parse_host(raw: str) -> str:
    try:
        return str(ipaddress.IPv4Address(raw))
    except ValueError:
        raise ConfigError(
            "host: invalid value %r; accepted: an IPv4 address such as 127.0.0.1 or 0.0.0.0" % raw
        ) from None


def parse_port(raw: str) -> int | None:
    if raw in ("", "0"):
        return None
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 65535:
        raise ConfigError(
            "port: invalid value %r; accepted: a TCP port 1-65535 (default: a free one)" % raw
        )
    return int(raw)


def parse_options(values: Mapping[str, Any], cwd: str | None = None) -> DevOptions:
    """The parsed command line -> DevOptions; ConfigError names the bad option."""
    cwd = cwd or os.getcwd()
    names = {f.name for f, _, _ in settings()}
    return DevOptions(
        host=parse_host(str(values.get("dev_host", "127.0.0.1"))),
        port=parse_port(str(values.get("dev_port", ""))),
        run_dir=Path(os.path.abspath(os.path.join(cwd, values.get("dev_run_dir") or "."))),
        static=parse_statics(list(values.get("dev_static") or []), cwd),
        reload=bool(values.get("dev_reload", True)),
        serve={k: v for k, v in values.items() if k in names},
    )


def serve_argv(cli: Mapping[str, Any]) -> list[str]:
    """The ``m2gate serve`` arguments that mean what ``cli`` (parsed settings) means.

    ``--flag=value`` keeps a value that starts with ``-`` a value.
    """
    table = {f.name: (meta, kind) for f, meta, kind in settings()}
    head: list[str] = []
    argv: list[str] = []
    for name, value in cli.items():
        meta, kind = table[name]
        if meta.positional:
            head.append(str(value))
        elif kind is bool:
            argv.append(flag(name) if value else "--no-" + flag(name)[2:])
        elif get_origin(kind) is list:
            argv.extend("%s=%s" % (flag(name), item) for item in value)
        else:
            argv.append("%s=%s" % (flag(name), value))
    return head + argv


def dev_defaults(cli: Mapping[str, Any], cfg: Config, environ: Mapping[str, str]) -> dict[str, str]:
    """DEV_DEFAULTS for the settings no source (CLI, env, config file) has set."""
    default = Config()
    return {
        name: value
        for name, value in DEV_DEFAULTS.items()
        if name not in cli
        and env_var(name) not in environ
        and getattr(cfg, name) == getattr(default, name)
    }


def check_port_free(host: str, port: int) -> None:
    """A given port someone else holds: one line now, not Mongrel2's log tail later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    "port: %s:%d is in use; pick another --port or leave it out for a free one"
                    % (host, port)
                ) from None
            raise ConfigError(
                "host: cannot listen on %s:%d: %s" % (host, port, exc.strerror or exc)
            ) from None


def prepare_run_dir(path: Path) -> Path:
    """Create the run directory, or prove an existing one is ours (its marker file).

    The harness rewrites m2.conf and deletes config.sqlite there: a directory
    holding other files must not be taken for ours.
    """
    marker = path / RUN_DIR_MARKER
    if path.exists() and not path.is_dir():
        raise ConfigError("run_dir: %s is not a directory; pick another --run-dir" % path)
    if path.is_dir() and any(path.iterdir()):
        try:
            st = marker.lstat()
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise ConfigError(
                "run_dir: %s holds files m2gate dev did not make (no %s in it);"
                " pick a new or empty --run-dir" % (path, RUN_DIR_MARKER)
            )
    path.mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        marker.write_text("made by `m2gate dev`: its Mongrel2 config, logs and uploads\n")
    return path


class SourceTree:
    """The app's source files and their mtimes: a change, addition or removal is a reload.

    Polled (once a second, like the master's watcher) over the project's
    directories, skipping hidden ones, virtualenvs, caches and ``skip`` paths.
    """

    def __init__(
        self, roots: Iterable[str], skip: Iterable[str] = (), suffixes: Sequence[str] = (".py",)
    ) -> None:
        self.roots = sorted({os.path.abspath(r) for r in roots})
        self.skip = {os.path.abspath(s).rstrip("/") for s in skip}
        self.suffixes = tuple(suffixes)
        self.truncated = False
        self.files = self.scan()

    def _walk(self) -> Iterable[str]:
        """Matching files, depth first; stops after MAX_SCANNED entries (a home directory)."""
        seen = 0
        for root in self.roots:
            for directory, dirs, files in os.walk(root):
                seen += len(dirs) + len(files)
                if seen > MAX_SCANNED:
                    if not self.truncated:
                        log.warning(
                            "more than %d files and directories under %s: watching part of them",
                            MAX_SCANNED,
                            ", ".join(self.roots),
                        )
                    self.truncated = True
                    return
                dirs[:] = sorted(
                    d
                    for d in dirs
                    if not d.startswith(".")
                    and d not in SKIP_DIRS
                    and os.path.join(directory, d) not in self.skip
                    and not os.path.exists(os.path.join(directory, d, "pyvenv.cfg"))
                )
                for name in sorted(files):
                    if name.endswith(self.suffixes):
                        yield os.path.join(directory, name)

    def scan(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for path in self._walk():
            with contextlib.suppress(OSError):
                found[path] = os.stat(path).st_mtime
        return found

    def changed(self) -> str:
        """Why to reload ('' if nothing changed since the last call)."""
        now = self.scan()
        old, self.files = self.files, now
        for path in sorted(now.keys() | old.keys()):
            if now.get(path) != old.get(path):
                return "%s %s" % (
                    path,
                    "added" if path not in old else "removed" if path not in now else "changed",
                )
        return ""


def watch_roots(cfg: Config, django_dir: str = "") -> list[str]:
    """Directories whose sources are the app's: its file's, the project's, or chdir/cwd."""
    base = os.path.abspath(cfg.chdir or os.getcwd())
    module = cfg.app.partition(":")[0]
    if django_dir:
        return [django_dir]
    if cfg.paste:
        ini = cfg.paste.partition("#")[0].removeprefix("config:")
        return [os.path.dirname(os.path.abspath(os.path.join(base, ini)))]
    if module.endswith(".py") or (module and os.path.isdir(os.path.join(base, module))):
        path = os.path.abspath(os.path.join(base, module))
        return [path if os.path.isdir(path) else os.path.dirname(path)]
    return [base]


def answered(m2: Mongrel2) -> bool:
    """True once GET / came back from the app, not as a Mongrel2 error page.

    Short, repeated probes: a reply published before the app's PUB has
    connected to Mongrel2 is lost, and a long wait on it would stall the start.
    """
    conn = http.client.HTTPConnection(m2.connect_host, m2.port, timeout=PROBE_TIMEOUT)
    try:
        conn.request("GET", "/", headers={"Connection": "close", "User-Agent": "m2gate-dev"})
        resp = conn.getresponse()
        return not (resp.getheader("Server") or "").startswith("Mongrel2")
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class DevServer:
    """Mongrel2 plus one ``m2gate serve`` child; restarts the child, stops both by PID."""

    def __init__(
        self,
        m2: Mongrel2,
        argv: list[str],
        cfg: Config,
        *,
        master: bool,
        tree: SourceTree | None,
        out: Any = None,
    ) -> None:
        self.m2 = m2
        self.argv = argv
        self.cfg = cfg
        self.master = master
        self.tree = tree
        self.out = out if out is not None else sys.stdout
        self.child: subprocess.Popen[bytes] | None = None
        self.signals = 0
        self.announced = False

    def say(self, text: str) -> None:
        print("m2gate dev: " + text, file=self.out, flush=True)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals > 1 and self.child is not None and self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child.pid, signal.SIGKILL)  # a second Ctrl-C: no more waiting

    def start_child(self) -> None:
        # Own session: a terminal Ctrl-C reaches only us, and we stop the child
        # once (a second signal would force its stop). It dies with us.
        self.child = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=partial(die_with_parent, signal.SIGTERM),
        )
        log.info("started m2gate pid %s", self.child.pid)

    def stop_child(self) -> int | None:
        """SIGTERM the child by PID, SIGKILL it past its graceful timeout; its status.

        ``self.child`` stays set while it stops, so that a second Ctrl-C kills it.
        """
        proc = self.child
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=self.cfg.graceful_timeout + STOP_MARGIN)
                except subprocess.TimeoutExpired:
                    log.warning("m2gate pid %s did not stop, killing it", proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
        finally:
            self.child = None
        return proc.returncode

    def banner(self) -> None:
        m2 = self.m2
        self.say(
            "serving %s at %s/  (Ctrl-C stops both)" % (self.cfg.app or self.cfg.paste, m2.url)
        )
        for d in m2.dirs:
            self.say("static %s -> %s" % (d.route, d.base))
        self.say("mongrel2 pid %s, m2gate pid %s" % (m2.pid, self.child.pid if self.child else "-"))
        self.say(
            "the Mongrel2 config: %s, loaded into %s (logs in %s)"
            % (m2.conf_path, m2.db_path, m2.error_log.parent)
        )
        self.say("the app server: %s" % shlex.join(["m2gate", *self.argv[3:]]))
        if self.tree is not None and not self.master:
            self.say(
                "restarts when a %s file under %s changes"
                % ("/".join(self.tree.suffixes), ", ".join(self.tree.roots))
            )
        elif self.tree is not None:
            self.say("the master reloads its workers when the app's modules change")

    def run(self) -> int:
        """Serve until SIGINT/SIGTERM; the exit status of dev."""
        if self.signals:
            return 0
        self.start_child()
        next_watch = time.monotonic() + WATCH_INTERVAL
        ready = False
        while not self.signals:
            child = self.child
            if child is not None and child.poll() is not None:
                code = child.returncode
                self.child = None
                if code == EXIT_CONFIG or self.tree is None:
                    self.say("m2gate exited with status %s" % code)
                    return code if code >= 0 else EXIT_FAILED
                self.say(
                    "m2gate exited with status %s; it restarts on the next change"
                    " of the sources (Ctrl-C to quit)" % code
                )
            if not self.m2.running:
                self.say("mongrel2 exited; see %s" % self.m2.error_log)
                return EXIT_FAILED
            if self.child is not None and not ready:
                # A master that could not load the app answers 503 on its way out.
                ready = answered(self.m2) and self.child.poll() is None
                if ready and not self.announced:
                    self.announced = True
                    self.banner()
                elif ready:
                    self.say("m2gate pid %s serves again" % self.child.pid)
            now = time.monotonic()
            if self.tree is not None and now >= next_watch:
                next_watch = now + WATCH_INTERVAL
                why = self.tree.changed()
                if why and (self.child is None or not self.master):
                    self.say("%s: restarting m2gate" % why)
                    self.stop_child()
                    if self.signals:
                        break
                    self.start_child()
                    ready = False
            time.sleep(0.1 if ready else 0.05)
        return 0

    def shutdown(self) -> None:
        """Stop the child, then Mongrel2 (the app first: its in-flight replies still go out)."""
        code = self.stop_child()
        if code is not None:
            log.info("m2gate stopped (status %s)", code)
        self.m2.stop()


@dataclass
class Plan:
    """Everything dev decided before starting anything: checked options, routes, hints."""

    opts: DevOptions
    cfg: Config
    master: bool  # the child is a master with worker processes (it reloads itself)
    statics: list[DirSpec]
    hints: list[str]
    django_dir: str  # the Django project's import root, '' when not a Django app


def make_plan(values: Mapping[str, Any], environ: Mapping[str, str]) -> Plan:
    """Check the command line as serve would, and find the static routes; ConfigError."""
    opts = parse_options(values)
    if opts.port is not None:
        check_port_free(opts.host, opts.port)
    placeholder = {"send_spec": "tcp://127.0.0.1:1", "recv_spec": "tcp://127.0.0.1:2"}
    cfg = configure({**opts.serve, **placeholder})  # the specs are Mongrel2's, chosen later
    if not cfg.app and not cfg.paste:
        raise ConfigError(
            "app: missing; pass APP (module:attr, path/to/file.py:attr or a Django project"
            " directory) or --paste FILE.ini"
        )
    statics = list(opts.static)
    hints: list[str] = []
    env = child_environ(cfg, environ)
    django = find_django(cfg, env)
    if django is not None:
        found = django_static(django, read_static_settings(django, env))
        if found.route is not None and all(s.route != found.route.route for s in statics):
            statics.append(found.route)
        if found.hint:
            hints.append(found.hint)
    return Plan(
        opts=opts,
        cfg=cfg,
        master=needs_master(cfg),
        statics=statics,
        hints=hints,
        django_dir=django.directory if django is not None else "",
    )


def child_argv(plan: Plan, m2: Mongrel2, environ: Mapping[str, str]) -> list[str]:
    """``python -m m2gate serve``: the user's options plus the specs of this Mongrel2."""
    spec = m2.handler
    generated: dict[str, Any] = {
        "send_spec": [spec.send_spec],
        "recv_spec": [spec.recv_spec],
        "send_ident": spec.send_ident,
        "upload_dir": str(m2.upload_dir),
        **dev_defaults(plan.opts.serve, plan.cfg, environ),
    }
    if plan.master and plan.opts.reload:
        generated["reload_on_change"] = True
    return [sys.executable, "-m", "m2gate", "serve", *serve_argv({**plan.opts.serve, **generated})]


def make_mongrel2(plan: Plan) -> Mongrel2:
    """The harness for this plan, in its run directory (created, or proven ours)."""
    limits: dict[str, object] = {}
    if plan.cfg.mongrel2_content_length:  # the two must agree (the setting's help)
        limits["limits.content_length"] = plan.cfg.mongrel2_content_length
    return Mongrel2(
        prepare_run_dir(plan.opts.run_dir),
        handlers=[HandlerSpec(route="/")],
        settings=limits,
        port=plan.opts.port,
        bind_addr=plan.opts.host,
        dirs=plan.statics,
    )


def make_tree(plan: Plan, m2: Mongrel2) -> SourceTree | None:
    if not plan.opts.reload:
        return None
    return SourceTree(
        watch_roots(plan.cfg, plan.django_dir),
        skip=[str(m2.workdir), *(d.base for d in plan.statics)],
        suffixes=DJANGO_SUFFIXES if plan.django_dir else SOURCE_SUFFIXES,
    )


def run_dev(values: Mapping[str, Any]) -> int:
    """``m2gate dev``: the parsed command line in, the exit status out."""
    if shutil.which("mongrel2") is None or shutil.which("m2sh") is None:
        print(MISSING_MONGREL2, file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(level=logging.INFO, format="m2gate dev: %(message)s", stream=sys.stderr)
    try:
        plan = make_plan(values, os.environ)
        for hint in plan.hints:
            print("m2gate dev: " + hint, file=sys.stderr, flush=True)
        m2 = make_mongrel2(plan)
        tree = make_tree(plan, m2)
    except (ConfigError, Mongrel2Error) as exc:
        print("m2gate: error: %s" % exc, file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:  # nothing started yet
        return 130
    server = DevServer(m2, [], plan.cfg, master=plan.master, tree=tree)
    signal.signal(signal.SIGINT, server.on_signal)
    signal.signal(signal.SIGTERM, server.on_signal)
    try:
        try:
            m2.start()
        except Mongrel2Error as exc:
            print("m2gate dev: mongrel2 did not start: %s" % exc, file=sys.stderr)
            return EXIT_FAILED
        server.argv = child_argv(plan, m2, os.environ)
        return server.run()
    finally:
        server.shutdown()
        if server.signals:
            print("m2gate dev: stopped", file=sys.stderr, flush=True)
