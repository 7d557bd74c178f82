"""Every setting, declared once as a typed dataclass field.

The CLI flags, the ``M2GATE_<NAME>`` environment variables, the TOML config
keys and ``docs/settings.md`` are all generated from :class:`Config`, so a new
option is one field here and nothing else. Precedence: defaults < config
file < environment < command line.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal

from m2gate.config.checks import (
    SPEC_ACCEPTED,
    check_access_format,
    check_env,
    check_group,
    check_ident,
    check_listen_addr,
    check_log_endpoint,
    check_paste,
    check_spec,
    check_user,
    non_negative,
    positive,
)
from m2gate.config.declare import Meta, setting


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
        validate=check_paste,
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
        validate=check_env,
        accepted="KEY=VALUE with KEY a shell variable name",
        env_separator="\n",
    )
    send_spec: list[str] = setting(  # noqa: RUF009
        [],
        "Mongrel2's send_spec, where m2gate PULLs requests from; repeat it (with --recv-spec,"
        " pairs in order) to serve several Mongrel2 front-ends from one m2gate.",
        section="mongrel2",
        metavar="SPEC",
        validate=check_spec,
        accepted=SPEC_ACCEPTED,
    )
    recv_spec: list[str] = setting(  # noqa: RUF009
        [],
        "Mongrel2's recv_spec, where m2gate PUBlishes replies; default: send port - 1."
        " Repeated: one per --send-spec, in the same order.",
        section="mongrel2",
        metavar="SPEC",
        validate=check_spec,
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
        validate=check_ident,
        accepted="letters, digits and '-'",
    )
    recv_ident: str = setting(
        "",
        "Prefix of replies, when Mongrel2's recv_ident is set (default: the request's sender).",
        section="mongrel2",
        metavar="UUID",
        validate=check_ident,
        accepted="letters, digits and '-'",
    )
    send_hwm: int = setting(
        64,
        "Reply messages held for a Mongrel2 that stopped reading (stalled, stopped,"
        " restarting); then writers wait. Memory held for it is at most this x max_message.",
        section="mongrel2",
        metavar="MESSAGES",
        validate=positive,
        accepted="an integer >= 1",
    )
    send_timeout: float = setting(
        30.0,
        "Seconds a writer waits for room when Mongrel2 reads no replies; then that reply is"
        " dropped, logged and counted, and its connection given up (never silently cut).",
        section="mongrel2",
        validate=non_negative,
        accepted="a number of seconds >= 0",
    )
    credits_timeout: float = setting(
        60.0,
        "Seconds a response waits for Mongrel2's flow-control credits (download.flow_control:"
        " a client that reads nothing acks none); then its connection is closed and the app"
        " stops as for a client gone, so no thread waits forever. 0: no limit.",
        section="mongrel2",
        validate=non_negative,
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
        validate=non_negative,
        accepted="a number of bytes >= 0",
    )
    threads: int = setting(
        1,
        "Worker threads per process.",
        section="workers",
        validate=positive,
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
        validate=positive,
        accepted="an integer >= 1",
    )
    backlog: int = setting(
        1000,
        "Requests one process holds waiting for a free thread (or greenlet) beyond those it"
        " serves; beyond it clients get 503 at once, so overload never grows memory.",
        section="workers",
        validate=positive,
        accepted="an integer >= 1",
    )
    max_pipelined: int = setting(
        16,
        "Pipelined requests one client connection may have waiting behind the one in"
        " flight; the next one is answered 503 in its turn and the connection closed.",
        section="workers",
        validate=positive,
        accepted="an integer >= 1",
    )
    graceful_timeout: float = setting(
        30.0,
        "Seconds in-flight requests get to finish on stop or reload.",
        section="workers",
        validate=non_negative,
        accepted="a number of seconds >= 0",
    )
    processes: int = setting(
        0,
        "Worker processes under a master, which owns the Mongrel2 sockets and hands requests"
        " to them (reloads, recycling, harakiri); 0: one process, no master, unless an option"
        " that needs the master is given (then one worker).",
        section="workers",
        short="-p",
        validate=non_negative,
        accepted="an integer >= 0",
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
        validate=non_negative,
        accepted="a number of seconds >= 0",
    )
    max_requests: int = setting(
        0,
        "Replace a worker after it served this many requests; 0: never.",
        section="workers",
        validate=non_negative,
        accepted="an integer >= 0",
    )
    max_requests_jitter: int = setting(
        0,
        "Add a random 0..N to each worker's max_requests so they do not all recycle at once.",
        section="workers",
        validate=non_negative,
        accepted="an integer >= 0",
    )
    reload_on_rss: int = setting(
        0,
        "Replace a worker whose resident memory exceeds this many megabytes; 0: never.",
        section="workers",
        metavar="MB",
        validate=non_negative,
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
        "Reload gracefully when a source file of the app changes (development); inotify"
        " with watchfiles (pip install 'm2gate[reload]'), else mtime polling every second.",
        section="workers",
    )
    queue_size: int = setting(
        10000,
        "Requests the master holds while every worker is busy; beyond it clients get 503.",
        section="workers",
        validate=positive,
        accepted="an integer >= 1",
    )
    queue_timeout: float = setting(
        30.0,
        "Seconds a request may wait in the master for a free worker before it gets 503.",
        section="workers",
        validate=non_negative,
        accepted="a number of seconds >= 0",
    )
    prefetch: int = setting(
        1,
        "Requests the master hands a worker beyond its free threads (queued in it), hiding"
        " the master round trip; 0: only to free threads.",
        section="workers",
        validate=non_negative,
        accepted="an integer >= 0",
    )
    stats: str = setting(
        "",
        "Serve a JSON stats document (uWSGI stats-server style, it lists request paths and"
        " pids) on HOST:PORT or a unix socket path; :PORT means 127.0.0.1:PORT, give"
        " 0.0.0.0:PORT or [::]:PORT to listen on every interface.",
        section="observability",
        metavar="ADDR",
        validate=check_listen_addr,
        accepted="HOST:PORT, :PORT (loopback) or a unix socket path (containing '/')",
    )
    metrics: str = setting(
        "",
        "Serve Prometheus metrics over HTTP on HOST:PORT or a unix socket path; :PORT means"
        " 127.0.0.1:PORT, give 0.0.0.0:PORT or [::]:PORT to listen on every interface."
        " Needs prometheus-client (pip install 'm2gate[metrics]').",
        section="observability",
        metavar="ADDR",
        validate=check_listen_addr,
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
        validate=positive,
        accepted="a number of bytes >= 1",
    )
    flush_interval: float = setting(
        0.005,
        "Seconds a streamed chunk may wait to be merged with the next one.",
        section="wsgi",
        validate=non_negative,
        accepted="a number of seconds >= 0",
    )
    idle_keepalive: float = setting(
        30.0,
        "ASGI: seconds between Mongrel2 keep-alives for connections waiting on the app (open"
        " websockets, long polls, quiet streams), so they outlive its limits.min_ping"
        " (120 s by default); 0 turns them off.",
        section="asgi",
        validate=non_negative,
        accepted="a number of seconds >= 0",
    )
    websocket_queue: int = setting(
        16 * 1024 * 1024,
        "ASGI: bytes of websocket messages received but not yet read by the app; beyond it"
        " the websocket is closed with 1013 (try again later): Mongrel2 cannot slow one"
        " client down, so a client sending faster than the app reads must not fill memory.",
        section="asgi",
        validate=positive,
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
        validate=non_negative,
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
        validate=check_log_endpoint,
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
        validate=check_access_format,
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
        validate=check_user,
        accepted="an existing user name or a numeric uid",
    )
    group: str = setting(
        "",
        "Drop privileges to this group (name or gid; default: the user's group).",
        section="service",
        validate=check_group,
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

    @property
    def workers(self) -> int:
        """Worker processes a master runs: ``processes``, at least one."""
        return max(1, self.processes)

    @property
    def frontends(self) -> list[tuple[str, str]]:
        """``(send_spec, recv_spec)`` of each Mongrel2 front-end, in order (once resolved)."""
        return list(zip(self.send_spec, self.recv_spec, strict=True))


def settings() -> list[tuple[dataclasses.Field[Any], Meta, Any]]:
    """``(field, meta, resolved type)`` for every setting, in declaration order."""
    hints = typing.get_type_hints(Config)
    return [(f, f.metadata["m2gate"], hints[f.name]) for f in dataclasses.fields(Config)]
