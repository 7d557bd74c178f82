"""Every setting, declared once as a typed dataclass field.

The CLI flags, the ``M2GATE_<NAME>`` environment variables, the TOML config
keys and ``docs/settings.md`` are all generated from :class:`Config`, so a new
option is one field here and nothing else. Precedence: defaults < config
file < environment < command line.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin


class ConfigError(Exception):
    """A bad setting; the message is the one line the user sees."""


@dataclass(frozen=True)
class Meta:
    """What a setting needs beyond its type and default."""

    help: str
    section: str = "server"
    short: str | None = None
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    validate: Callable[[Any], Any] | None = None
    accepted: str = ""  # how to describe valid values in error messages
    positional: bool = False
    in_file: bool = True  # False: not accepted as a config-file key (e.g. config itself)
    env_separator: str = ","  # how list settings are split in M2GATE_<NAME>
    path: bool = False  # a file or directory: `m2gate init` writes it absolute


def setting(default: Any, help: str, **meta: Any) -> Any:
    """Declare one setting (a dataclass field carrying its :class:`Meta`)."""
    info = Meta(help=help, **meta)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"m2gate": info})
    return field(default=default, metadata={"m2gate": info})


_SPEC_RE = re.compile(r"(tcp://[^\s:/]+:\d{1,5}|ipc://\S+|inproc://\S+)\Z")
_IDENT_RE = re.compile(r"[A-Za-z0-9-]+\Z")
SPEC_ACCEPTED = "tcp://HOST:PORT, ipc://PATH or inproc://NAME, optionally IDENT@ before the address"


def split_spec(value: str) -> tuple[str, str | None]:
    """``proto://[IDENT@]endpoint`` (m2wsgi's syntax) -> ``(endpoint, ident)``."""
    proto, sep, rest = value.partition("://")
    ident = None
    if sep and "@" in rest.split("/", 1)[0]:
        ident, _, rest = rest.partition("@")
    spec = proto + sep + rest
    if not _SPEC_RE.match(spec) or (ident is not None and not _IDENT_RE.match(ident)):
        raise ValueError(value)
    if spec.startswith("tcp://") and not 0 < int(spec.rsplit(":", 1)[1]) < 65536:
        raise ValueError(value)
    return spec, ident


def _check_spec(value: str) -> str:
    if value:
        split_spec(value)
    return value


def _check_ident(value: str) -> str:
    if value and not _IDENT_RE.match(value):
        raise ValueError(value)
    return value


def _positive(value: int) -> int:
    if value < 1:
        raise ValueError(value)
    return value


def _non_negative(value: float) -> float:
    if not value >= 0:  # also rejects NaN
        raise ValueError(value)
    return value


def _check_listen_addr(value: str) -> str:
    """``HOST:PORT`` (tcp) or a path with a ``/`` (unix socket)."""
    if value and "/" not in value:
        _host, sep, port = value.rpartition(":")
        if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ValueError(value)
    return value


_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _check_env(value: str) -> str:
    key, sep, _ = value.partition("=")
    if not sep or not _ENV_KEY_RE.match(key):
        raise ValueError(value)
    return value


def _check_user(value: str) -> str:
    if value and not (value.isascii() and value.isdigit()):
        import pwd

        try:
            pwd.getpwnam(value)
        except KeyError:
            raise ValueError(value) from None
    return value


def _check_group(value: str) -> str:
    if value and not (value.isascii() and value.isdigit()):
        import grp

        try:
            grp.getgrnam(value)
        except KeyError:
            raise ValueError(value) from None
    return value


def _check_log_endpoint(value: str) -> str:
    if value and not re.match(r"(tcp://[^\s/]+:\d{1,5}|ipc://\S+)\Z", value):
        raise ValueError(value)
    return value


def _check_access_format(value: str) -> str:
    from m2gate.adapters.accesslog import check_format

    check_format(value)
    return value


def _check_paste(value: str) -> str:
    if value.startswith("egg:"):
        raise ValueError(value)
    return value


@dataclass
class Config:
    """The validated settings of one m2gate run."""

    app: str = setting(
        "",
        "The application: module:attr, module:factory() (called), module (then `application`,"
        " `app`, `create_app()`), or a Django project directory holding manage.py.",
        section="app",
        positional=True,
        metavar="APP",
    )
    interface: Literal["auto", "wsgi", "asgi"] = setting(
        "auto",
        "How APP is called: WSGI, ASGI 3 (asyncio), or auto (ASGI when APP is a coroutine"
        " function or has an async __call__).",
        section="app",
    )
    config: str = setting(
        "",
        "TOML config file whose keys are these settings.",
        short="-c",
        metavar="FILE",
        in_file=False,
        path=True,
    )
    paste: str = setting(
        "",
        "Paste Deploy config to load the app from (FILE.ini or config:URI, optional #name).",
        section="app",
        metavar="INI",
        validate=_check_paste,
        accepted="FILE.ini, config:FILE.ini or either with #APPNAME",
        path=True,
    )
    pythonpath: list[str] = setting(  # noqa: RUF009 (setting() makes a default_factory)
        [],
        "Directory put in front of sys.path before the app is imported (repeatable).",
        section="app",
        metavar="DIR",
        env_separator=":",
        path=True,
    )
    virtualenv: str = setting(
        "",
        "Virtualenv whose site-packages the app is imported from.",
        section="app",
        metavar="DIR",
        path=True,
    )
    env: list[str] = setting(  # noqa: RUF009
        [],
        "Environment variable set before the app is imported (repeatable).",
        section="app",
        metavar="KEY=VALUE",
        validate=_check_env,
        accepted="KEY=VALUE with KEY a shell variable name",
        env_separator="\n",
    )
    send_spec: str = setting(
        "",
        "Mongrel2's send_spec, where m2gate PULLs requests from.",
        section="mongrel2",
        metavar="SPEC",
        validate=_check_spec,
        accepted=SPEC_ACCEPTED,
    )
    recv_spec: str = setting(
        "",
        "Mongrel2's recv_spec, where m2gate PUBlishes replies; default: send port - 1.",
        section="mongrel2",
        metavar="SPEC",
        validate=_check_spec,
        accepted=SPEC_ACCEPTED,
    )
    zeromq: str = setting(
        "",
        "SEND_SPEC,RECV_SPEC in one value, as uWSGI's --zeromq takes them.",
        section="mongrel2",
        aliases=("--zmq", "--zeromq-socket", "--zmq-socket"),
        metavar="SEND,RECV",
    )
    send_ident: str = setting(
        "",
        "ZeroMQ identity of this handler's sockets (default: a fresh UUID).",
        section="mongrel2",
        metavar="UUID",
        validate=_check_ident,
        accepted="letters, digits and '-'",
    )
    recv_ident: str = setting(
        "",
        "Prefix of replies, when Mongrel2's recv_ident is set (default: the request's sender).",
        section="mongrel2",
        metavar="UUID",
        validate=_check_ident,
        accepted="letters, digits and '-'",
    )
    send_hwm: int = setting(
        64,
        "Reply messages held for a Mongrel2 that stopped reading (stalled, stopped,"
        " restarting); then writers wait. Memory held for it is at most this x max_message.",
        section="mongrel2",
        metavar="MESSAGES",
        validate=_positive,
        accepted="an integer >= 1",
    )
    send_timeout: float = setting(
        30.0,
        "Seconds a writer waits for room when Mongrel2 reads no replies; then that reply is"
        " dropped, logged and counted, and its connection given up (never silently cut).",
        section="mongrel2",
        validate=_non_negative,
        accepted="a number of seconds >= 0",
    )
    credits_timeout: float = setting(
        60.0,
        "Seconds a response waits for Mongrel2's flow-control credits (download.flow_control:"
        " a client that reads nothing acks none); then its connection is closed and the app"
        " stops as for a client gone, so no thread waits forever. 0: no limit.",
        section="mongrel2",
        validate=_non_negative,
        accepted="a number of seconds >= 0",
    )
    mongrel2_content_length: int = setting(
        20480,
        "Mongrel2's limits.content_length in bytes (keep them equal): a request message"
        " larger than it plus 64 KiB for the headers is refused by ZeroMQ (MAXMSGSIZE on"
        " every PULL), whoever sent it; bigger bodies reach us as upload files. Websocket"
        " frames are not bounded by Mongrel2: raise it above the largest frame you accept."
        " 0: no limit.",
        section="mongrel2",
        metavar="BYTES",
        validate=_non_negative,
        accepted="a number of bytes >= 0",
    )
    threads: int = setting(
        1,
        "Worker threads per process.",
        section="workers",
        validate=_positive,
        accepted="an integer >= 1",
    )
    worker_class: Literal["threads", "gevent"] = setting(
        "threads",
        "How requests run: app threads, or one greenlet per request (gevent, monkey-patched).",
        section="workers",
    )
    gevent_connections: int = setting(
        1000,
        "With --worker-class gevent: most requests served at once per process.",
        section="workers",
        validate=_positive,
        accepted="an integer >= 1",
    )
    backlog: int = setting(
        1000,
        "Requests one process holds waiting for a free thread (or greenlet) beyond those it"
        " serves; beyond it clients get 503 at once, so overload never grows memory.",
        section="workers",
        validate=_positive,
        accepted="an integer >= 1",
    )
    max_pipelined: int = setting(
        16,
        "Pipelined requests one client connection may have waiting behind the one in"
        " flight; the next one is answered 503 in its turn and the connection closed.",
        section="workers",
        validate=_positive,
        accepted="an integer >= 1",
    )
    graceful_timeout: float = setting(
        30.0,
        "Seconds in-flight requests get to finish on stop or reload.",
        section="workers",
        validate=_non_negative,
        accepted="a number of seconds >= 0",
    )
    processes: int = setting(
        1,
        "Worker processes; the master owns the Mongrel2 sockets and hands requests to them.",
        section="workers",
        short="-p",
        validate=_positive,
        accepted="an integer >= 1",
    )
    preload: bool = setting(
        False,
        "Import the app once in the master before forking (fast forks, shared memory);"
        " default: each worker imports it after fork, so reloads pick up new code.",
        section="workers",
    )
    harakiri: float = setting(
        0.0,
        "Kill and replace a worker whose request runs longer than this many seconds"
        " (its traceback is logged, the client gets 504); 0: off.",
        section="workers",
        validate=_non_negative,
        accepted="a number of seconds >= 0",
    )
    max_requests: int = setting(
        0,
        "Replace a worker after it served this many requests; 0: never.",
        section="workers",
        validate=_non_negative,
        accepted="an integer >= 0",
    )
    max_requests_jitter: int = setting(
        0,
        "Add a random 0..N to each worker's max_requests so they do not all recycle at once.",
        section="workers",
        validate=_non_negative,
        accepted="an integer >= 0",
    )
    reload_on_rss: int = setting(
        0,
        "Replace a worker whose resident memory exceeds this many megabytes; 0: never.",
        section="workers",
        metavar="MB",
        validate=_non_negative,
        accepted="a number of megabytes >= 0",
    )
    touch_reload: str = setting(
        "",
        "Reload gracefully when this file's modification time changes.",
        section="workers",
        metavar="FILE",
        path=True,
    )
    reload_on_change: bool = setting(
        False,
        "Reload gracefully when a source file of the app changes (development).",
        section="workers",
    )
    queue_size: int = setting(
        10000,
        "Requests the master holds while every worker is busy; beyond it clients get 503.",
        section="workers",
        validate=_positive,
        accepted="an integer >= 1",
    )
    queue_timeout: float = setting(
        30.0,
        "Seconds a request may wait in the master for a free worker before it gets 503.",
        section="workers",
        validate=_non_negative,
        accepted="a number of seconds >= 0",
    )
    prefetch: int = setting(
        1,
        "Requests the master hands a worker beyond its free threads (queued in it), hiding"
        " the master round trip; 0: only to free threads.",
        section="workers",
        validate=_non_negative,
        accepted="an integer >= 0",
    )
    stats: str = setting(
        "",
        "Serve a JSON stats document (uWSGI stats-server style, it lists request paths and"
        " pids) on HOST:PORT or a unix socket path; :PORT means 127.0.0.1:PORT, give"
        " 0.0.0.0:PORT or [::]:PORT to listen on every interface.",
        section="observability",
        metavar="ADDR",
        validate=_check_listen_addr,
        accepted="HOST:PORT, :PORT (loopback) or a unix socket path (containing '/')",
    )
    metrics: str = setting(
        "",
        "Serve Prometheus metrics over HTTP on HOST:PORT or a unix socket path; :PORT means"
        " 127.0.0.1:PORT, give 0.0.0.0:PORT or [::]:PORT to listen on every interface.",
        section="observability",
        metavar="ADDR",
        validate=_check_listen_addr,
        accepted="HOST:PORT, :PORT (loopback) or a unix socket path (containing '/')",
    )
    chdir: str = setting(
        "", "Change to this directory before loading the app.", section="app", path=True
    )
    server_name: str = setting(
        "localhost", "SERVER_NAME when the request has no Host header.", section="wsgi"
    )
    server_port: str = setting(
        "", "SERVER_PORT when Host has no port (default: 80 or 443 by scheme).", section="wsgi"
    )
    trust_x_forwarded_for: bool = setting(
        False,
        "Take REMOTE_ADDR from X-Forwarded-For (only behind a proxy you trust).",
        section="wsgi",
    )
    max_message: int = setting(
        4 * 1024 * 1024,
        "Largest reply message in bytes; streamed chunks are coalesced up to this.",
        section="wsgi",
        validate=_positive,
        accepted="a number of bytes >= 1",
    )
    flush_interval: float = setting(
        0.005,
        "Seconds a streamed chunk may wait to be merged with the next one.",
        section="wsgi",
        validate=_non_negative,
        accepted="a number of seconds >= 0",
    )
    idle_keepalive: float = setting(
        30.0,
        "ASGI: seconds between Mongrel2 keep-alives for connections waiting on the app (open"
        " websockets, long polls, quiet streams), so they outlive its limits.min_ping"
        " (120 s by default); 0 turns them off.",
        section="asgi",
        validate=_non_negative,
        accepted="a number of seconds >= 0",
    )
    websocket_queue: int = setting(
        16 * 1024 * 1024,
        "ASGI: bytes of websocket messages received but not yet read by the app; beyond it"
        " the websocket is closed with 1013 (try again later): Mongrel2 cannot slow one"
        " client down, so a client sending faster than the app reads must not fill memory.",
        section="asgi",
        validate=_positive,
        accepted="a number of bytes >= 1",
    )
    upload_dir: str = setting(
        "",
        "Directory of Mongrel2's upload.temp_store; large bodies are only read from files in it.",
        section="uploads",
        metavar="DIR",
        path=True,
    )
    mongrel2_chroot: str = setting(
        "",
        "Mongrel2's chroot: upload paths it announces are relative to it.",
        section="uploads",
        metavar="DIR",
        path=True,
    )
    upload_timeout: float = setting(
        300.0,
        "Seconds a client may take to send a large body (from Mongrel2's upload-start to"
        " upload-done); past it the client gets 408 and the temp file is removed; 0: no limit.",
        section="uploads",
        validate=_non_negative,
        accepted="a number of seconds >= 0",
    )
    stream_uploads: bool = setting(
        False,
        "Call the app as soon as a large body starts arriving and let it read while Mongrel2"
        " writes (a slow client then holds an app thread); default: the app is called once"
        " the upload is complete.",
        section="uploads",
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = setting(
        "info", "Logging level.", section="logging"
    )
    log_file: str = setting(
        "",
        "Write the log to this file instead of stderr; reopened on SIGUSR1 (logrotate).",
        section="logging",
        metavar="FILE",
        path=True,
    )
    log_zeromq: str = setting(
        "",
        "Also PUSH every log line to a ZeroMQ PULL collector, as uWSGI's zeromq logger.",
        section="logging",
        metavar="ENDPOINT",
        validate=_check_log_endpoint,
        accepted="tcp://HOST:PORT or ipc://PATH",
    )
    access_log: str = setting(
        "",
        "Access log file, one line per request ('-' for stderr; default: none).",
        section="logging",
        metavar="FILE",
        path=True,
    )
    access_log_format: str = setting(
        '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s',
        "Access log line: %(NAME)s atoms h l u t r m U q H s b B f a T M D p"
        " (default: the common log format).",
        section="logging",
        metavar="FORMAT",
        validate=_check_access_format,
        accepted="a %-format using only the atoms h l u t r m U q H s b B f a T M D p",
    )
    app_dir: str = setting(
        "",
        "App folder made by `m2gate init`: reads DIR/m2gate.toml, runs in DIR/app,"
        " pidfile DIR/run/m2gate.pid, log DIR/logs/m2gate.log.",
        section="service",
        metavar="DIR",
        in_file=False,
        path=True,
    )
    daemon: bool = setting(
        False, "Detach from the terminal and run in the background.", section="service"
    )
    pidfile: str = setting(
        "",
        "Write the master's PID to this file.",
        section="service",
        metavar="FILE",
        path=True,
    )
    user: str = setting(
        "",
        "Drop privileges to this user (name or uid) after start-up.",
        section="service",
        validate=_check_user,
        accepted="an existing user name or a numeric uid",
    )
    group: str = setting(
        "",
        "Drop privileges to this group (name or gid; default: the user's group).",
        section="service",
        validate=_check_group,
        accepted="an existing group name or a numeric gid",
    )
    chroot: str = setting(
        "",
        "chroot() into this directory before dropping privileges (needs root).",
        section="service",
        metavar="DIR",
        path=True,
    )
    mongrel2_db: str = setting(
        "",
        "Mongrel2's config.sqlite: take send/recv specs and idents from the selected handler.",
        section="mongrel2",
        metavar="FILE",
        path=True,
    )
    route: str = setting(
        "",
        "With --mongrel2-db: the handler serving this route path.",
        section="mongrel2",
        metavar="PATH",
    )
    handler_ident: str = setting(
        "",
        "With --mongrel2-db: the handler whose send_ident is UUID.",
        section="mongrel2",
        metavar="UUID",
    )
    host: str = setting(
        "",
        "With --mongrel2-db: handlers routed under this Mongrel2 host name.",
        section="mongrel2",
        metavar="NAME",
    )


def settings() -> list[tuple[dataclasses.Field[Any], Meta, Any]]:
    """``(field, meta, resolved type)`` for every setting, in declaration order."""
    hints = typing.get_type_hints(Config)
    return [(f, f.metadata["m2gate"], hints[f.name]) for f in dataclasses.fields(Config)]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_var(name: str) -> str:
    return "M2GATE_" + name.upper()


def describe_type(kind: Any, meta: Meta) -> str:
    """The accepted values, for errors and docs."""
    if meta.accepted:
        return meta.accepted
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(kind))
    if kind is bool:
        return "true or false"
    if kind is int:
        return "an integer"
    if kind is float:
        return "a number"
    if get_origin(kind) is list:
        return "a list of strings"
    return "a string"


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def convert(name: str, kind: Any, meta: Meta, raw: Any, source: str) -> Any:
    """Turn a raw value (text from CLI/env, or a TOML value) into the setting's type."""

    def fail() -> ConfigError:
        return ConfigError(
            "%s: invalid value %r for %s; accepted: %s"
            % (source, raw, name, describe_type(kind, meta))
        )

    try:
        if get_origin(kind) is Literal:
            value: Any = str(raw).lower() if isinstance(raw, str) else raw
            if value not in get_args(kind):
                raise fail()
        elif kind is bool:
            if isinstance(raw, bool):
                value = raw
            elif isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
                value = raw.lower() in _TRUE
            else:
                raise fail()
        elif kind is int:
            if isinstance(raw, bool) or not isinstance(raw, (int, str)):
                raise fail()
            value = int(raw)
        elif kind is float:
            if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
                raise fail()
            value = float(raw)
        elif get_origin(kind) is list:
            if isinstance(raw, str):
                value = [raw]
            elif isinstance(raw, list) and all(isinstance(v, str) for v in raw):
                value = list(raw)
            else:
                raise fail()
        else:
            if isinstance(raw, int) and not isinstance(raw, bool):
                raw = str(raw)  # `server_port = 8080` in TOML means "8080"
            if not isinstance(raw, str):
                raise fail()
            value = raw
        if meta.validate is not None:
            if isinstance(value, list):
                value = [meta.validate(v) for v in value]
            else:
                value = meta.validate(value)
    except ValueError:
        raise fail() from None
    return value
