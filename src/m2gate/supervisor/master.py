"""The master: the only connection to Mongrel2, worker processes under it.

Why a master owns the sockets (measured against Mongrel2 1.12): a PULL that
disconnects loses what Mongrel2 already pushed down its pipe, and disconnect
notices ride PUSH round-robin, so they rarely reach the process serving the
connection. So the master holds the only PULL on ``send_spec`` and hands each
message to a worker over its own ROUTER (the policy is
:class:`~m2gate.supervisor.handoff.Dispatcher`); workers reply to Mongrel2
directly on their own PUBs. The master knows, at every moment, which
connection each worker is serving: that is what makes reloads lose nothing,
and what lets it answer 504 for a request whose worker it had to kill.

One loop (``zmq.Poller`` on the PULL, the ROUTER and a wake-up socket) does
everything. Signal handlers and the control/stats threads only enqueue and
wake it. The parts it wires: :mod:`.router` (messages), :mod:`.lifecycle`
(decisions, sans-IO), :mod:`.workers` (fork, signal, reap), :mod:`.watch`,
:mod:`.status`, :mod:`.systemd`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import zmq

from m2gate import __version__, logs
from m2gate.config.declare import ConfigError
from m2gate.config.settings import Config
from m2gate.loading import load_app
from m2gate.ops.control import ControlServer
from m2gate.ops.pidfile import PidFile, control_path_for
from m2gate.ops.stats import DocumentServer, Render, require_metrics
from m2gate.supervisor import status, workers
from m2gate.supervisor.actions import Action, Dump, Fatal, Kill, Notify, Send, Spawn
from m2gate.supervisor.child import WorkerSpec
from m2gate.supervisor.handoff import Dispatcher, make_dispatcher
from m2gate.supervisor.lifecycle import Lifecycle
from m2gate.supervisor.router import Router
from m2gate.supervisor.state import Worker
from m2gate.supervisor.sticky import Sticky
from m2gate.supervisor.systemd import sd_notify
from m2gate.supervisor.watch import WATCH_INTERVAL, Watcher
from m2gate.supervisor.wire import EXIT_APP_LOAD, READY
from m2gate.transports.zmq_common import FrontendMonitor, open_pub, open_pull, pull_limit

log = logging.getLogger("m2gate.master")

TICK = 0.1  # seconds between housekeeping passes when nothing happens
HOUSEKEEPING = 0.01  # at most this often, however busy the sockets are


class _Call:
    """Work a thread hands to the loop, and the answer it waits for."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None


class Master:
    """Forks and supervises the workers; routes Mongrel2's messages to them."""

    def __init__(
        self,
        cfg: Config,
        pidfile: PidFile | None = None,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.cfg = cfg
        self.pidfile = pidfile
        self.pid = os.getpid()
        self.app: Any = None
        # The hand-off policy is replaceable (e.g. idle-aware or sticky routing).
        self.disp = dispatcher or make_dispatcher(cfg.dispatch, cfg.queue_size, cfg.prefetch)
        self.disp.sticky = self.disp.sticky or Sticky.from_config(cfg)
        self.life = Lifecycle(cfg, self.disp, self.pid)
        self.watcher = Watcher(cfg, inotify=True, wake=self._poke_watch)
        self.by_pid: dict[int, Worker] = {}
        self.started_at = time.time()
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._next_tick = 0.0
        self._next_watch = 0.0
        self.run_dir = ""
        self.endpoint = ""
        self.control: ControlServer | None = None
        self.servers: list[DocumentServer] = []

    # == set-up ==============================================================
    def run(self) -> int:
        cfg = self.cfg
        if cfg.dispatch == "direct" and cfg.harakiri:
            raise ConfigError(
                "harakiri: not available with --dispatch direct (the master does not see the"
                " requests it would time); accepted: 0, or --dispatch idle or round-robin"
            )
        if len(cfg.frontends) > 1 and (cfg.dispatch == "direct" or cfg.interface == "asgi"):
            raise ConfigError(
                "send_spec: several Mongrel2 front-ends under a master need threaded WSGI"
                " workers and --dispatch idle or round-robin for now; accepted: one"
                " --send-spec/--recv-spec pair, or one process (no --processes)"
            )
        if cfg.dispatch == "direct" and (cfg.sticky != "none" or cfg.sticky_cookie):
            raise ConfigError(
                "sticky: not available with --dispatch direct (Mongrel2, not the master,"
                " picks the worker); accepted: none, or --dispatch idle or round-robin"
            )
        if cfg.preload:
            self.app = load_app(cfg.app, cfg.chdir, cfg.paste)  # AppLoadError: exit 3
            logs.after_app_import()
            log.info("app %s preloaded in the master", cfg.app)
        self._open()
        try:
            log.info(
                "m2gate %s master pid %d: %s %s, PUB %s, %d worker(s)%s x %d thread(s),"
                " dispatch %s",
                __version__,
                self.pid,
                "workers PULL" if cfg.dispatch == "direct" else "PULL",
                " ".join(cfg.send_spec),
                " ".join(cfg.recv_spec),
                cfg.workers,
                " (adaptive: %d to %d)" % (cfg.fewest_workers, cfg.workers_max)
                if cfg.adaptive
                else "",
                cfg.threads,
                cfg.dispatch,
            )
            self.execute(self.life.start(time.monotonic()))
            self._loop()
        finally:
            self._close()
        return self.life.exit_code

    def _open(self) -> None:
        cfg = self.cfg
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        self.run_dir = tempfile.mkdtemp(prefix="m2gate-")
        self.endpoint = "ipc://%s/workers-%d.sock" % (self.run_dir, self.pid)
        self.ctx: zmq.Context[Any] = zmq.Context()
        router = self.ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.SNDHWM, 0)
        router.setsockopt(zmq.RCVHWM, 0)
        router.bind(self.endpoint)
        pulls, pubs = [], []
        self.frontends: list[FrontendMonitor] = []
        for send_spec, recv_spec in cfg.frontends:  # a PULL and a PUB per Mongrel2
            pubs.append(
                open_pub(self.ctx, recv_spec, ("%s-master" % cfg.send_ident).encode("ascii"))
            )
            pull = open_pull(
                self.ctx, cfg.send_ident.encode("ascii"), pull_limit(cfg.mongrel2_content_length)
            )
            if cfg.dispatch != "direct":
                pull.connect(send_spec)  # direct: each worker pulls; this one stays unconnected
            pulls.append(pull)
            # Mongrel2's restarts: its connection ids start again at 1.
            self.frontends.append(FrontendMonitor(pull, send_spec))
        self.frontend = self.frontends[0]
        self.router = Router(
            cfg, self.disp, self.life, self.watcher, (pulls[0], router, pubs[0]), self.execute
        )
        if len(pulls) > 1:
            self.router.serve_frontends(pulls, pubs)
        self.poller = zmq.Poller()
        for pull in pulls:
            self.poller.register(pull, zmq.POLLIN)
        self.poller.register(router, zmq.POLLIN)
        for monitor in self.frontends:
            self.poller.register(monitor.socket, zmq.POLLIN)
        self.poller.register(self._wake_r.fileno(), zmq.POLLIN)
        control_path = (
            control_path_for(self.pidfile.path)
            if self.pidfile is not None
            else os.path.join(self.run_dir, "control.sock")
        )
        self.control = ControlServer(control_path, self._control).start()
        log.info("control socket %s", control_path)
        sides: list[tuple[str, str, Render, bool]] = []
        if cfg.stats:
            sides.append(("stats", cfg.stats, self._render_stats, False))
        if cfg.metrics:
            require_metrics()  # one line naming the setting if prometheus-client is missing
            from m2gate.ops.metrics import Exposition  # imported only when asked for

            sides.append(("metrics", cfg.metrics, Exposition(self._snapshot).render, True))
        for name, addr, render, http in sides:
            try:
                self.servers.append(DocumentServer(addr, render, http, name))
            except OSError as exc:
                raise ConfigError(
                    "%s: cannot listen on %s: %s" % (name, addr, exc.strerror or exc)
                ) from None
            log.info("%s on %s", name, addr)
        for server in self.servers:
            server.start()

    def _close(self) -> None:
        self.watcher.close()
        for server in self.servers:
            server.close()
        if self.control is not None:
            self.control.close()
        signal.set_wakeup_fd(-1)
        # Let the 503/504 answers we published leave before the context goes.
        self.router.pub.close(linger=1000)
        for monitor in self.frontends:
            monitor.close()
        for pull in self.router.pulls:
            pull.close(linger=0)
        self.router.router.close(linger=0)
        self.ctx.term()
        self._wake_r.close()
        self._wake_w.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def _fds_for_children(self) -> list[int]:
        fds = [self._wake_r.fileno(), self._wake_w.fileno()]
        if self.control is not None:
            fds.append(self.control.fileno())
        fds.extend(s.fileno() for s in self.servers)
        if self.pidfile is not None and self.pidfile.fd is not None:
            fds.append(self.pidfile.fd)
        return fds

    # == carrying out the life cycle's actions ================================
    def execute(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Spawn):
                self._fork(a.worker)
            elif isinstance(a, Kill):
                workers.signal_worker(a.worker, signal.SIGKILL)
            elif isinstance(a, Dump):
                workers.signal_worker(a.worker, signal.SIGUSR2)
            elif isinstance(a, Send):
                if a.frame == READY and self.disp.epoch:
                    self.router.send_epoch(a.worker.wid)  # before its first request
                self.router.send(a.worker.wid, b"", a.frame)
            elif isinstance(a, Notify):
                sd_notify(a.state)
            else:
                assert isinstance(a, Fatal)
                print("m2gate: error: %s" % a.message, file=sys.stderr, flush=True)

    def _fork(self, w: Worker) -> None:
        spec = WorkerSpec(
            self.cfg,
            w.wid,
            w.serial,
            w.generation,
            self.endpoint,
            self.pid,
            self.app,
            self._fds_for_children(),
            w.probe,
        )
        w.pid = workers.fork(spec)
        self.by_pid[w.pid] = w
        self.router.by_probe[w.probe] = w.wid
        log.info("worker %s started: pid %d, generation %d", w.wid.decode(), w.pid, w.generation)

    def _reap(self) -> None:
        for pid, code in workers.reap():
            w = self.by_pid.pop(pid, None)
            if w is None:
                continue
            now = time.monotonic()
            if (
                code == EXIT_APP_LOAD
                and w.ready_at is None
                and not w.fatal
                and not self.life.stopping
            ):
                w.fatal = self.router.late_fatal(w.wid, time.monotonic)
            self.router.worker_gone(w, code, now)
            self.execute(self.life.on_exit(w, code, now))

    def reload(self, why: str) -> int:
        gen, actions = self.life.reload(why, time.monotonic())
        self.execute(actions)
        return gen

    def _begin_stop(self, why: str) -> None:
        self.execute(self.life.begin_stop(why, time.monotonic()))

    # == the loop =============================================================
    def _frontends_changed(self, events: dict[Any, int]) -> None:
        """Several front-ends: void the connections of each that went away, only its."""
        for i, monitor in enumerate(self.frontends):
            if events.get(monitor.socket) and monitor.changed():
                self.router.frontend_gone_at(i)  # before any message of its next incarnation

    def _loop(self) -> None:
        pull, router = self.router.pull, self.router.router
        several = len(self.frontends) > 1
        while True:
            now = time.monotonic()
            self._tick(now)
            if self.life.done:
                break
            events = dict(self.poller.poll(int(TICK * 1000)))
            if several:
                self._frontends_changed(events)
            elif events.get(self.frontend.socket) and self.frontend.changed():
                self.router.frontend_gone()  # before any message of the next incarnation
            if self._wake_r.fileno() in events:
                self._on_wake()
            if events.get(router):
                self.router.on_router(time.monotonic())
            if several:
                for i, p in enumerate(self.router.pulls):
                    if events.get(p):
                        self.router.on_pull_tagged(time.monotonic(), i)
            elif events.get(pull):
                self.router.on_pull(time.monotonic())
        self.router.expire_queued(time.monotonic(), -1.0)
        log.info(
            "master stopped after %d request(s)%s",
            self.life.served_by_gone,
            " (forced)" if self.life.forced else "",
        )

    def _tick(self, now: float) -> None:
        """Housekeeping: probes, timeouts and deadlines, file watching, reaping."""
        if now < self._next_tick:
            return
        self._next_tick = now + HOUSEKEEPING
        cfg = self.cfg
        self.router.probe_pub(now)
        self.router.expire_queued(now, cfg.queue_timeout)
        overdue = self.disp.overdue(now, cfg.harakiri) if cfg.harakiri else []
        self.execute(self.life.tick(now, self.router.pub_ready_at, overdue))
        if now >= self._next_watch:
            self._next_watch = now + WATCH_INTERVAL
            self._watch()
            self._reap()  # in case a SIGCHLD was coalesced away

    def _poke_watch(self) -> None:
        """From the watch thread: a file changed, look at the loop's next pass."""
        self._next_watch = 0.0
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"w")

    def _watch(self) -> None:
        if self.life.stopping:
            return
        changed = self.watcher.changed()
        if changed:
            if self.cfg.preload:
                log.warning("%s: with --preload new workers reuse the master's code", changed)
            self.reload(changed)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Only enqueue: the loop acts (set_wakeup_fd wakes it)."""
        self._signals.put_nowait(signum)

    def _on_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._wake_r.recv(4096):
                pass
        while True:
            try:
                signum = self._signals.get_nowait()
            except queue.Empty:
                break
            self._handle_signal(signum)
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                break
            try:
                call.result = call.fn()
            except Exception as exc:
                log.exception("control call failed")
                call.result = {"ok": False, "error": str(exc)}
            call.done.set()

    def _handle_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            self.router.on_router(time.monotonic())  # a dying worker's last frames come first
            self._reap()
        elif signum in (signal.SIGTERM, signal.SIGINT):
            if self.life.stopping:
                self.execute(self.life.force_stop(by_signal=True))
            else:
                self._begin_stop(signal.Signals(signum).name)
        elif signum == signal.SIGHUP:
            self.reload("SIGHUP")
        elif signum == signal.SIGUSR1:
            logs.reopen_logs()
            for w in self.life.workers.values():
                workers.signal_worker(w, signal.SIGUSR1)

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn`` in the loop (from another thread) and return its result."""
        c = _Call(fn)
        self._calls.put(c)
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"c")
        if not c.done.wait(timeout):
            return {"ok": False, "error": "the master did not answer in %ss" % timeout}
        return c.result

    # == control, stats =======================================================
    def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("command")
        if command == "status":
            result: dict[str, Any] = self.call(self.stats)
            return result
        if command == "reload":
            gen = self.call(lambda: self.reload("m2gate reload"))
            if isinstance(gen, dict):
                return gen
            if self.life.stopping:
                return {"ok": False, "error": "stopping", "pid": self.pid}
            return {"ok": True, "pid": self.pid, "generation": gen}
        if command == "stop":
            self.call(lambda: self._begin_stop("m2gate stop"))
            return {"ok": True, "pid": self.pid}
        return {"ok": False, "error": "unknown command %r" % command}

    def stats(self) -> dict[str, Any]:
        """The stats document (runs in the loop)."""
        return status.document(
            self.cfg,
            self.life,
            pid=self.pid,
            uptime=time.time() - self.started_at,
            queued=len(self.disp.queue) + self.disp.waiting.count,
            rejected=self.router.rejected,
            now=time.monotonic(),
        )

    def _snapshot(self) -> dict[str, Any]:
        """The stats document, from a listener's thread (it waits for the loop)."""
        doc: dict[str, Any] = self.call(self.stats, timeout=5.0)
        return doc

    def _render_stats(self, accept: str) -> tuple[bytes, str]:
        return json.dumps(self._snapshot(), indent=1).encode() + b"\n", "application/json"
