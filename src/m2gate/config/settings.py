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
    check_cookie_name,
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
    positive_seconds,
)
from m2gate.config.declare import ConfigError, Meta, setting


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
    workers_min: int = setting(
        0,
        "Adaptive workers: the fewest worker processes the master keeps; it retires idle ones"
        " down to this. Needs --workers-max; default (0): 1.",
        section="workers",
        metavar="N",
        validate=non_negative,
        accepted="an integer from 1 to workers_max",
    )
    workers_max: int = setting(
        0,
        "Adaptive workers: the most worker processes the master runs; it starts more while"
        " requests wait for a free thread (implies a master; -p is then the starting count,"
        " default workers_min). 0: a fixed -p count.",
        section="workers",
        metavar="M",
        validate=non_negative,
        accepted="an integer >= workers_min (0: off)",
    )
    workers_spawn_wait: float = setting(
        0.1,
        "Adaptive workers: start one more worker once the oldest request queued in the master"
        " has waited this many seconds (every thread busy).",
        section="workers",
        validate=non_negative,
        accepted="a number of seconds >= 0",
    )
    workers_spawn_interval: float = setting(
        1.0,
        "Adaptive workers: at least this many seconds between two starts (and none while a"
        " started one is not ready yet), so a burst does not fork the whole range at once.",
        section="workers",
        validate=non_negative,
        accepted="a number of seconds >= 0",
    )
    workers_idle: float = setting(
        30.0,
        "Adaptive workers: retire one worker once, for this many seconds, nothing waited and"
        " the busy threads would have fitted in one worker fewer; it finishes its requests"
        " first.",
        section="workers",
        validate=positive_seconds,
        accepted="a number of seconds > 0",
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
    sticky: Literal["none", "conn", "cookie"] = setting(
        "none",
        "Sticky routing under a master: conn keeps every request of a client connection"
        " (keep-alive, uploads, websockets) on one worker; cookie sends requests carrying"
        " the cookie --sticky-cookie to the worker its value hashes to (consistent hashing"
        " over worker slots); none: any free worker.",
        section="workers",
    )
    sticky_cookie: str = setting(
        "",
        "Cookie whose value picks the worker (implies --sticky cookie; requests without"
        " it go to any free worker).",
        section="workers",
        metavar="NAME",
        validate=check_cookie_name,
        accepted="a cookie name (RFC 6265 token characters, at most 128)",
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
        16,
        "Most requests the master hands a busy worker beyond its threads (queued in it),"
        " hiding the master round trip: as many as it serves in 5 ms at its recent pace,"
        " and none while its oldest request runs long (so no request waits behind a slow"
        " one while another worker could take it); 0: only to free threads.",
        section="workers",
        validate=non_negative,
        accepted="an integer >= 0",
    )
    dispatch: Literal["idle", "round-robin", "direct"] = setting(
        "idle",
        "With worker processes, how requests reach them: idle (the master hands each to a"
        " worker with a free thread, queueing when all are busy), round-robin (the master"
        " hands each to the next ready worker in turn, whatever its load), or direct (every"
        " worker pulls from Mongrel2 itself, as uWSGI does; lossy on reload and worker exit:"
        " what Mongrel2 queued to a leaving worker is lost). See docs/operations.md.",
        section="workers",
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
    busy_keepalive: float = setting(
        30.0,
        "WSGI (threaded, gevent): seconds between Mongrel2 keep-alives for each request a"
        " worker serves or holds (its upload arriving), so a long request, stream or upload"
        " outlives Mongrel2's idle reaper (limits.min_ping: with the dead-host settings of"
        " docs/deploying.md, at most a third of it); 0 turns them off.",
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
    asgi_connections: int = setting(
        1000,
        "ASGI under a master (-p, --interface asgi): requests (and open websockets) one"
        " worker process serves at once; the master hands it no more (plus --prefetch) and"
        " holds the rest in its queue for the next worker with room. One process without a"
        " master has no such limit.",
        section="asgi",
        validate=positive,
        accepted="an integer >= 1",
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

    def __post_init__(self) -> None:
        """Settings decided together (each alone is checked already): sticky and its
        cookie, the adaptive worker range, and what adaptive workers cannot go with."""
        if self.sticky_cookie and self.sticky == "none":
            self.sticky = "cookie"  # naming the cookie is asking for cookie stickiness
        elif self.sticky_cookie and self.sticky != "cookie":
            raise ConfigError(
                "sticky_cookie: given with sticky=%s; accepted: sticky=cookie (or none,"
                " which --sticky-cookie then implies)" % self.sticky
            )
        elif self.sticky == "cookie" and not self.sticky_cookie:
            raise ConfigError(
                "sticky: cookie needs the cookie's name; accepted: --sticky-cookie NAME"
                " (or sticky=none or conn)"
            )
        check_worker_range(self.processes, self.workers_min, self.workers_max)
        if self.workers_max and self.dispatch == "direct":
            raise ConfigError(
                "workers_max: adaptive workers measure the master's queue, which dispatch=direct"
                " bypasses; accepted: --dispatch idle or round-robin with --workers-max"
            )
        if self.workers_max and self.sticky != "none":
            raise ConfigError(
                "workers_max: sticky routing keeps keys on a fixed set of worker slots;"
                " accepted: --sticky none with --workers-max (or a fixed -p with --sticky)"
            )

    @property
    def workers(self) -> int:
        """Worker processes a master starts with: ``processes`` (or ``workers_min``), >= 1."""
        return max(1, self.processes or self.workers_min)

    @property
    def adaptive(self) -> bool:
        """Whether the master starts and retires workers by load (``workers_max`` given)."""
        return self.workers_max > 0

    @property
    def fewest_workers(self) -> int:
        """The count adaptive workers shrink to (``workers_min``, at least one)."""
        return max(1, self.workers_min)

    @property
    def worker_capacity(self) -> int:
        """Requests one worker process serves at once: its threads, or asgi_connections.

        The master's dispatch counts a worker free while it holds fewer; an
        ASGI worker runs them all on its event loop.
        """
        return self.asgi_connections if self.interface == "asgi" else self.threads

    @property
    def frontends(self) -> list[tuple[str, str]]:
        """``(send_spec, recv_spec)`` of each Mongrel2 front-end, in order (once resolved)."""
        return list(zip(self.send_spec, self.recv_spec, strict=True))


def check_worker_range(processes: int, low: int, high: int) -> None:
    """``1 <= workers_min <= workers_max``, and ``-p`` (the starting count) between them.

    Checked when a :class:`Config` is made, so a bad combination fails at
    start-up in one line, whichever sources the values came from.
    """
    if not high:
        if low:
            raise ConfigError(
                "workers_min: %d given without workers_max; accepted: --workers-min N with"
                " --workers-max M, 1 <= N <= M" % low
            )
        return
    if low > high:
        raise ConfigError(
            "workers_min: %d is above workers_max %d; accepted: an integer from 1 to %d"
            % (low, high, high)
        )
    low = max(1, low)
    if processes and not low <= processes <= high:
        raise ConfigError(
            "processes: %d is outside workers_min..workers_max (%d..%d); accepted: the starting"
            " count, an integer from %d to %d, or 0 to start at workers_min"
            % (processes, low, high, low, high)
        )


def settings() -> list[tuple[dataclasses.Field[Any], Meta, Any]]:
    """``(field, meta, resolved type)`` for every setting, in declaration order."""
    hints = typing.get_type_hints(Config)
    return [(f, f.metadata["m2gate"], hints[f.name]) for f in dataclasses.fields(Config)]
