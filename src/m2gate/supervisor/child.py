"""One worker process under the master: the ThreadedRuntime fed by a DEALER.

After ``fork`` the worker makes its own ZeroMQ context (contexts never
survive a fork), connects a DEALER to the master's ROUTER for requests and a
PUB to Mongrel2's ``recv_spec`` for replies. It is not ``ready`` until its
reply path is proven: it publishes a close to a probe connection id that
Mongrel2 never uses, every 50 ms; Mongrel2 answers each reply to an unknown
id with a disconnect notice, which arrives at the master's PULL. Only then
does the master route requests here (ZeroMQ silently drops what a fresh PUB
sends before it has connected).

With ``--dispatch direct`` the worker pulls from Mongrel2 itself, on the
single-process transport (:class:`~m2gate.transports.zmq_sync.ZmqTransport`),
and :class:`DirectLink` is its request source: the DEALER then carries only
hello, heartbeats (with the request count), fatal, ready and stop. Probe
notices now reach whichever worker's PULL Mongrel2 picks, which passes them
to the master; a worker holds what it pulls until it is ready.

The wire (frames, probe ids) is :mod:`m2gate.supervisor.wire`.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import zmq

from m2gate import logs
from m2gate.adapters.asgi.base import resolve_interface
from m2gate.config.settings import Config
from m2gate.conn.connection import Connection
from m2gate.loading import AppLoadError, load_app
from m2gate.protocol import replies
from m2gate.runtime.options import transport_args, worker_options, wsgi_handler
from m2gate.runtime.threaded import ThreadedRuntime
from m2gate.supervisor.watch import app_source_files
from m2gate.supervisor.wire import (
    DONE,
    EPOCH,
    EXIT_APP_LOAD,
    FATAL,
    HEARTBEAT,
    HEARTBEAT_INTERVAL,
    HELLO,
    LOADED,
    PROBE,
    PROBE_INTERVAL,
    PROBE_SPAN,
    READY,
    STARTED,
    STOP,
    Report,
    encode_report,
    encode_reports,
    parse_probe_notice,
)
from m2gate.transports.frontends import FrontendSinks, tag
from m2gate.transports.zmq_common import PubSink, open_pub
from m2gate.transports.zmq_sync import ZmqTransport

log = logging.getLogger("m2gate.worker")

REPORT_BATCH = 64  # done reports the receiving thread holds at most before sending them
REPORT_DELAY = 0.005  # ... and for at most this long, while it keeps receiving


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def die_with_parent(signum: int) -> None:
    """Linux: have the kernel send ``signum`` when the master dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signum, 0, 0, 0)  # PR_SET_PDEATHSIG


class ExceptionCounter(logging.Filter):
    """Counts app exceptions the WSGI adapter logs (for stats), never filters."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.exc_info:
            self.count += 1
        return True


class MasterLink:
    """The worker's side of the hand-off: a :class:`RequestSource` over a DEALER.

    Only the thread in :meth:`recv` touches the main DEALER. Done reports
    are batched where that costs no latency: a report made on the thread
    that called :meth:`recv` last (it serves what it received, then comes
    back for more) waits in a list, and all of them go in one frame when
    :meth:`recv` is about to block, or at :data:`REPORT_BATCH` reports, or
    once the oldest is :data:`REPORT_DELAY` old when :meth:`recv` returns a
    message. A report made on any other thread goes at once, with whatever
    was waiting, on that thread's own DEALER (identity ``WID.N``), so it
    never has to wake the receiving loop. ``started`` reports always go at
    once: the master must know before the worker could die mid-stream.
    """

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, wid: bytes, master_pid: int) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.wid = wid
        self.master_pid = master_pid
        self.dealer = self._dealer(wid)
        self.dealer.setsockopt(zmq.RCVHWM, 0)
        self._tls = threading.local()
        self._lock = threading.Lock()
        self._done_socks: list[zmq.Socket[Any]] = []
        self._closed = False
        # Batched done reports: the receiving thread's, guarded by _reports_lock
        # (so is _receiver: a thread that stopped receiving must see it at once).
        self._reports_lock = threading.Lock()
        self._receiver = 0  # threading.get_ident() of the thread that called recv last
        self._reports: list[Report] = []
        self._reports_since = 0.0
        self.worker: ThreadedRuntime | None = None
        self.sink: PubSink | FrontendSinks | None = None
        # Several front-ends: the runtime keys connections by tagged senders,
        # and each front-end's PUB is probed (its tag in front of the uuid).
        self.tagged = False
        self.probe_tags: list[bytes] = [b""]
        self.exceptions: ExceptionCounter | None = None
        self.ready = False
        self.reopen_requested = False
        self._probe_uuid = b""
        self._probe_base = 0
        self._probe_attempt = 0
        self._next_probe = 0.0
        self._next_heartbeat = 0.0
        self._next_housekeeping = 0.0

    def _dealer(self, identity: bytes) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, identity)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(self.endpoint)
        return sock

    def send(self, *frames: bytes) -> None:
        self.dealer.send_multipart(frames)

    def attach(
        self,
        worker: ThreadedRuntime,
        sink: PubSink | FrontendSinks,
        probe_uuid: bytes,
        base: int,
        exceptions: ExceptionCounter,
    ) -> None:
        self.worker = worker
        self.sink = sink
        self._probe_uuid = probe_uuid
        self._probe_base = base
        self.exceptions = exceptions

    # -- called from app threads (and the receiving and flusher threads) ---
    def done(self, conn: Connection) -> None:
        """One request accepted is served or dropped: tell the master (now, or batched)."""
        report = (conn.sender, conn.conn_id, conn.epoch)
        with self._reports_lock:
            if threading.get_ident() == self._receiver:
                reports = self._reports
                if not reports:
                    self._reports_since = time.monotonic()
                reports.append(report)
                if len(reports) < REPORT_BATCH:
                    return  # sent when recv is about to block
                self._reports = []
            elif self._reports:
                reports, self._reports = self._reports, []
                reports.append(report)
            else:
                reports = []
        sock = self._thread_socket()
        if sock is not None:
            payload = encode_reports(reports) if reports else encode_report(*report)
            sock.send_multipart((DONE, payload))

    def started(self, conn: Connection) -> None:
        """A response's first part leaves before its end: the master must not answer for it."""
        sock = self._thread_socket()
        if sock is not None:
            sock.send_multipart((STARTED, encode_report(conn.sender, conn.conn_id, conn.epoch)))

    def _flush_reports(self) -> None:
        """From :meth:`recv` (its thread owns the main DEALER): send the batched reports."""
        with self._reports_lock:
            reports, self._reports = self._reports, []
        if reports:
            self.dealer.send_multipart((DONE, encode_reports(reports)))

    def _thread_socket(self) -> zmq.Socket[Any] | None:
        """This thread's own DEALER (None once closed: nobody listens any more)."""
        sock: zmq.Socket[Any] | None = getattr(self._tls, "sock", None)
        if sock is None:
            with self._lock:
                if self._closed:
                    return None  # a thread outliving the graceful timeout
                sock = self._dealer(b"%s.%d" % (self.wid, len(self._done_socks)))
                self._done_socks.append(sock)
            self._tls.sock = sock
        return sock

    # -- RequestSource -----------------------------------------------------
    def recv(self, timeout_ms: int) -> bytes | None:
        me = threading.get_ident()
        if self._receiver != me:
            with self._reports_lock:
                self._receiver = me
        deadline = time.monotonic() + timeout_ms / 1000
        dealer = self.dealer
        while True:
            now = time.monotonic()
            if now >= self._next_housekeeping:
                self._housekeeping(now)
            if int(dealer.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                data = self._handle(dealer.recv_multipart())
                if data is not None or self._stopping():
                    if self._reports and now - self._reports_since >= REPORT_DELAY:
                        self._flush_reports()
                    return data
                continue
            if self._reports:
                self._flush_reports()  # about to block (or return empty-handed)
            if now >= deadline or self._stopping():
                return None
            wait = min(deadline, self._next_housekeeping)
            dealer.poll(int(max(0.0, wait - now) * 1000) + 1)

    def stop_receiving(self) -> None:
        """Nothing to do: the master stopped sending before it said ``stop``."""

    def close(self, linger_s: float) -> None:
        """After the app threads are done: flush every socket's last reports."""
        with contextlib.suppress(zmq.ZMQError):
            self._flush_reports()
        with self._lock:
            self._closed = True
            for sock in self._done_socks:
                sock.close(linger=int(linger_s * 1000))
            self._done_socks.clear()
        self.dealer.close(linger=int(linger_s * 1000))

    # -- internals ---------------------------------------------------------
    def _stopping(self) -> bool:
        return self.worker is not None and self.worker.stopping.is_set()

    def _handle(self, frames: list[bytes]) -> bytes | None:
        if len(frames) == 1:
            return frames[0]  # a Mongrel2 message
        kind = frames[1]
        if kind == READY:
            self.ready = True
            self._next_housekeeping = self._next_heartbeat
        elif kind == STOP:
            if self.worker is not None:
                self.worker.stop()
        elif kind == EPOCH:
            # Mongrel2 went away: before any request of its next incarnation,
            # forget (and stop writing to) every connection of the old one.
            if self.worker is not None and len(frames) > 2 and frames[2].isdigit():
                self.worker.reset_frontend(int(frames[2]))
            elif self.worker is not None and len(frames) > 2:  # one of several: "EPOCH TAG"
                epoch, _, tag = frames[2].partition(b" ")
                if epoch.isdigit() and tag:
                    self.worker.reset_frontend(int(epoch), (tag.decode("ascii"),))
        else:
            log.warning("unknown frame from the master: %r", kind[:20])
        return None

    def _housekeeping(self, now: float) -> None:
        """Probes (until ready), heartbeats, the master-alive check, log reopening."""
        if not self.ready and now >= self._next_probe and self.sink is not None:
            probe = self._probe_base + self._probe_attempt % PROBE_SPAN
            self._probe_attempt += 1
            for tag in self.probe_tags:
                self.sink.send(replies.close(tag + self._probe_uuid, [probe]))
            self._next_probe = now + PROBE_INTERVAL
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + HEARTBEAT_INTERVAL
            if os.getppid() != self.master_pid:
                log.warning("master %d is gone: stopping", self.master_pid)
                if self.worker is not None:
                    self.worker.stop()
            else:
                self.send(HEARTBEAT, json.dumps(self.heartbeat()).encode())
        if self.reopen_requested:
            self.reopen_requested = False
            logs.reopen_logs()
        self._next_housekeeping = self._next_heartbeat
        if not self.ready:
            self._next_housekeeping = min(self._next_housekeeping, self._next_probe)

    def heartbeat(self) -> dict[str, Any]:
        return {
            "rss": rss_bytes(),
            "requests": self.worker.requests if self.worker is not None else 0,
            "exceptions": self.exceptions.count if self.exceptions is not None else 0,
            "disconnects": self.worker.disconnects if self.worker is not None else 0,
        }


class DirectLink(MasterLink):
    """``--dispatch direct``: requests come from this worker's own PULL on Mongrel2.

    The :class:`RequestSource` is the transport's PULL; the DEALER to the
    master is read between messages, for ``ready`` and ``stop`` only. No
    request is reported to the master (it tracks none in this mode): the
    heartbeat carries the count, for stats and max-requests. Two rules keep
    readiness working without the master's PULL: a probe notice (a negative
    connection id, which only probes have) that arrives here is passed to
    the master, whoever's probe it is; and until the master says ``ready``
    (this worker's own probe came back: its PUB is connected) what the PULL
    brings is held here, at most ``hold`` messages, so no early reply is
    dropped by ZeroMQ's slow joiner.
    """

    def __init__(
        self, ctx: zmq.Context[Any], endpoint: str, wid: bytes, master_pid: int, hold: int = 1000
    ) -> None:
        super().__init__(ctx, endpoint, wid, master_pid)
        self.transport: ZmqTransport | None = None
        self.hold = hold
        self._held: deque[bytes] = deque()
        self._poller = zmq.Poller()
        self._poller.register(self.dealer, zmq.POLLIN)

    def connect(self, transport: ZmqTransport) -> None:
        """Pull from ``transport`` (connected to Mongrel2) from now on."""
        self.transport = transport
        self._poller.register(transport.pull, zmq.POLLIN)

    def done(self, conn: Connection) -> None:
        """Nothing to report: the master does not see this worker's requests."""

    def started(self, conn: Connection) -> None:
        """Nothing to report (see :meth:`done`)."""

    def frontend_changed(self) -> bool:
        """Mongrel2 went away (this worker's own PULL saw it): see ``FrontendMonitor``."""
        return self.transport is not None and self.transport.frontend_changed()

    def recv(self, timeout_ms: int) -> bytes | None:
        transport = self.transport
        assert transport is not None, "connect() first"
        pull, dealer, held = transport.pull, self.dealer, self._held
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            now = time.monotonic()
            if now >= self._next_housekeeping:
                self._housekeeping(now)
            if int(dealer.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                self._handle(dealer.recv_multipart())  # ready, stop: never a request
                continue
            stopping = self._stopping()
            if held and (self.ready or stopping):
                return held.popleft()
            try:
                data: bytes = pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                pass
            else:
                sp = data.find(b" ")
                if data[sp + 1 : sp + 2] == b"-" and self._forward_probe(data):
                    continue
                if not self.ready and not stopping and len(held) < self.hold:
                    held.append(data)
                    continue
                return data
            if now >= deadline or stopping:
                return None
            wait = min(deadline, self._next_housekeeping)
            self._poller.poll(int(max(0.0, wait - now) * 1000) + 1)

    def _forward_probe(self, data: bytes) -> bool:
        """A probe notice (anyone's) goes to the master; True if ``data`` was one."""
        probe = parse_probe_notice(data)
        if probe is None:
            return False  # a malformed message: the runtime logs and drops it
        self.dealer.send_multipart((PROBE, b"%d" % probe))
        return True

    def stop_receiving(self) -> None:
        """Disconnect the PULL: Mongrel2 pushes new requests to the other workers."""
        if self.transport is not None:
            self.transport.stop_receiving()

    def close(self, linger_s: float) -> None:
        """A last heartbeat (the final request count), then the DEALER."""
        with contextlib.suppress(zmq.ZMQError):
            self.send(HEARTBEAT, json.dumps(self.heartbeat()).encode())
        super().close(linger_s)


@dataclass
class WorkerSpec:
    """Everything a forked worker needs from the master."""

    cfg: Config
    wid: bytes
    serial: int
    generation: int
    endpoint: str  # the master's ROUTER
    master_pid: int
    app: Any = None  # preloaded by the master, else imported here
    close_fds: Sequence[int] = ()
    probe: int = 0  # its first probe id (wire.probe_base in the master's block)


def child_main(spec: WorkerSpec) -> int:
    """Entry point in the forked child; returns the exit code for ``os._exit``."""
    try:
        return _run(spec)
    except BaseException:
        log.exception("worker %s crashed", spec.wid.decode())
        return 1
    finally:
        logging.shutdown()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()


def _child_signals(link_holder: list[MasterLink]) -> None:
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads are the master's business
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the master stops us

    def on_term(signum: int, frame: FrameType | None) -> None:
        if link_holder and link_holder[0].worker is not None:
            link_holder[0].worker.stop()
        else:
            os._exit(0)  # nothing loaded yet: nothing to finish

    def on_usr1(signum: int, frame: FrameType | None) -> None:
        if link_holder:
            link_holder[0].reopen_requested = True  # reopened by the receiving loop

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGUSR1, on_usr1)
    # harakiri: the master asks for every thread's traceback before it kills us.
    faulthandler.register(signal.SIGUSR2, file=sys.stderr, all_threads=True)


def _run(spec: WorkerSpec) -> int:
    cfg = spec.cfg
    holder: list[MasterLink] = []
    _child_signals(holder)
    die_with_parent(signal.SIGTERM)
    if os.getppid() != spec.master_pid:
        return 0  # the master died before we could ask to follow it
    for fd in spec.close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    ctx: zmq.Context[Any] = zmq.Context()
    link: MasterLink
    if cfg.dispatch == "direct":
        link = DirectLink(ctx, spec.endpoint, spec.wid, spec.master_pid, cfg.backlog)
    else:
        link = MasterLink(ctx, spec.endpoint, spec.wid, spec.master_pid)
    holder.append(link)
    link.send(HELLO, json.dumps({"pid": os.getpid(), "generation": spec.generation}).encode())
    try:
        app = spec.app if spec.app is not None else load_app(cfg.app, cfg.chdir, cfg.paste)
        logs.after_app_import()
        _check_supported(cfg, app)
    except Exception as exc:
        if isinstance(exc, AppLoadError):
            text = str(exc)
        else:
            log.exception("loading app %s failed", cfg.app)
            text = "app %s: %s: %s" % (cfg.app, type(exc).__name__, exc)
        link.send(FATAL, text.encode("utf-8", "replace"))
        link.close(linger_s=2.0)
        ctx.term()
        return EXIT_APP_LOAD
    if cfg.interface == "asgi":  # an event loop, not threads (imported by serve, as root)
        from m2gate.supervisor.child_asgi import serve_asgi_worker

        return serve_asgi_worker(spec, ctx, link, app, ExceptionCounter(), rss_bytes)
    counter = ExceptionCounter()
    logging.getLogger("m2gate.wsgi").addFilter(counter)
    handler = wsgi_handler(
        cfg, app, multithread=cfg.threads > 1, multiprocess=max(cfg.processes, cfg.workers_max) > 1
    )
    transport: ZmqTransport | None = None
    sinks: list[PubSink] = []
    sink: PubSink | FrontendSinks
    if isinstance(link, DirectLink):
        # Pulls from Mongrel2 as one process does; its PUB is the reply path.
        transport = ZmqTransport(*transport_args(cfg))
        link.connect(transport)
        sink = transport.sink
        worker = ThreadedRuntime(link, sink, handler, **worker_options(cfg))
    else:
        identity = b"%s-%s" % (cfg.send_ident.encode("ascii"), spec.wid)
        sinks = [
            PubSink(open_pub(ctx, recv_spec, identity, hwm=cfg.send_hwm), cfg.send_timeout)
            for recv_spec in cfg.recv_spec
        ]
        sink = sinks[0]
        if len(sinks) > 1:  # several front-ends: one PUB each, replies routed by sender tag
            sink = FrontendSinks(sinks)
            link.tagged = True
            link.probe_tags = [tag(i) for i in range(len(sinks))]
        worker = ThreadedRuntime(
            link, sink, handler, on_done=link.done, on_started=link.started, **worker_options(cfg)
        )
    probe_uuid = replies.reply_uuid(cfg.recv_ident, cfg.send_ident)
    link.attach(worker, sink, probe_uuid, spec.probe, counter)
    if cfg.reload_on_change:
        link.send(LOADED, json.dumps(app_source_files()).encode())
    clean = worker.run(cfg.graceful_timeout)
    if transport is not None:
        transport.close(linger_s=min(cfg.graceful_timeout, 5.0))
    for pub_sink in sinks:
        pub_sink.close(linger_s=min(cfg.graceful_timeout, 5.0))
    link.close(linger_s=1.0)
    if clean:
        ctx.term()  # waits for the replies and reports still queued (linger)
    else:
        ctx.destroy(linger=1000)  # a stuck thread may still hold a socket
    log.debug("worker %s exits after %d request(s)", spec.wid.decode(), worker.requests)
    return 0 if clean else 1


def _check_supported(cfg: Config, app: Any) -> None:
    """An ASGI app needs ``--interface asgi`` under the master (its capacity is asgi_connections).

    ``resolve_interface`` is imported with this module, in the master, before
    ``--user`` drops privileges: the unprivileged worker may not be able to
    read the standard library (or the venv) any more.
    """
    if cfg.interface == "auto" and resolve_interface(cfg.interface, app) == "asgi":
        raise AppLoadError(
            "app %s is an ASGI app: under a master (--processes, --pidfile, --app-dir, ...)"
            ' give --interface asgi (interface = "asgi" in a config file)' % cfg.app
        )
