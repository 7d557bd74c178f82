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
wake it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import zmq

from m2gate import __version__, logs
from m2gate.config.settings import Config, ConfigError
from m2gate.loading import AppLoadError, load_app
from m2gate.ops.control import ControlServer
from m2gate.ops.pidfile import AlreadyRunning, PidFile, control_path_for
from m2gate.ops.stats import PROMETHEUS_TYPE, DocumentServer, render_metrics
from m2gate.protocol import replies
from m2gate.protocol.errors import ProtocolError
from m2gate.protocol.http import SERVER_HEADER, request_framing, simple_response
from m2gate.protocol.messages import Credits, Disconnect, Message, UnknownControl, parse_message
from m2gate.supervisor import child as workerproc
from m2gate.supervisor.child import (
    DONE,
    EXIT_APP_LOAD,
    FATAL,
    HEARTBEAT,
    HELLO,
    LOADED,
    READY,
    STOP,
    WorkerSpec,
    is_probe,
    probe_base,
    probe_slot,
)
from m2gate.supervisor.handoff import Dispatcher, Drop, Forward, Hold, InFlight, Reject, WorkerInfo

log = logging.getLogger("m2gate.master")

TICK = 0.1  # seconds between housekeeping passes when nothing happens
READY_TIMEOUT = 60.0  # a worker that cannot prove its reply path by then is replaced
HARAKIRI_GRACE = 0.5  # between SIGUSR2 (traceback) and SIGKILL
WATCH_INTERVAL = 1.0  # mtime polling for --touch-reload / --reload-on-change
BACKOFF_MIN = 0.1
BACKOFF_MAX = 10.0
BATCH = 256  # messages handled per socket before looking at the others


def sd_notify(state: str) -> None:
    """Tell systemd (``Type=notify``) about our state; no-op without NOTIFY_SOCKET."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(addr)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)


@dataclass
class Proc:
    """Master-side record of one worker process (its routing state is ``info``)."""

    info: WorkerInfo
    serial: int
    probe: int
    started: float
    max_requests: int
    ready_at: float | None = None
    rss: int = 0
    exceptions: int = 0
    disconnects: int = 0  # clients gone while their request was in flight
    fatal: str = ""
    recycling: str = ""  # why a replacement was started for it
    replaces: bytes = b""  # the worker this one replaces once ready
    retire_deadline: float | None = None
    stop_sent: bool = False
    kill_at: float | None = None
    killed: bool = False
    answer_status: str = "502 Bad Gateway"  # for its requests in flight if it dies
    replaced: bool = False  # a replacement already exists: do not respawn
    files: list[str] = field(default_factory=list)

    @property
    def wid(self) -> bytes:
        return self.info.wid

    @property
    def pid(self) -> int:
        return self.info.pid

    @property
    def generation(self) -> int:
        return self.info.generation


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
        self.disp = dispatcher or Dispatcher(cfg.queue_size, cfg.prefetch)
        self.procs: dict[bytes, Proc] = {}
        self.by_pid: dict[int, bytes] = {}
        self.by_probe: dict[int, bytes] = {}
        self.serial = 0
        self.generation = 1  # serving now
        self.pending_gen: int | None = None  # being started by a reload
        self.last_gen = 1
        self.reload_started = 0.0
        self.reload_again = False
        self.reload_durations: list[float] = []
        self.initial_ready = False
        self.stopping = False
        self.stop_deadline = 0.0
        self.forced = False
        self.exit_code = 0
        self.failures = 0  # consecutive workers that died before being ready
        self.respawn_at: list[tuple[float, int]] = []
        self.started_at = time.time()
        self.served_by_gone = 0  # requests of workers that exited (totals survive them)
        self.rejected = 0
        self.harakiri_count = 0
        self.restarts = 0
        self.reloads = 0
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._queue_warned = 0.0
        self._recycle_after = 0.0
        self._next_tick = 0.0
        self._next_watch = 0.0
        self._watch_mtimes: dict[str, float] = {}
        self._pub_ready = False
        self._pub_ready_at = 0.0
        self._pub_probe = 0
        self._next_pub_probe = 0.0
        self.run_dir = ""
        self.endpoint = ""
        self.control: ControlServer | None = None
        self.servers: list[DocumentServer] = []

    # == set-up ==============================================================
    def run(self) -> int:
        cfg = self.cfg
        if cfg.preload:
            self.app = load_app(cfg.app, cfg.chdir, cfg.paste)  # AppLoadError: exit 3
            log.info("app %s preloaded in the master", cfg.app)
        self._open()
        try:
            log.info(
                "m2gate %s master pid %d: PULL %s, PUB %s, %d worker(s) x %d thread(s)",
                __version__,
                self.pid,
                cfg.send_spec,
                cfg.recv_spec,
                cfg.processes,
                cfg.threads,
            )
            for _ in range(cfg.processes):
                self.spawn(self.generation)
            self._loop()
        finally:
            self._close()
        return self.exit_code

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
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.SNDHWM, 0)
        self.router.setsockopt(zmq.RCVHWM, 0)
        self.router.bind(self.endpoint)
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, 0)
        self.pub.setsockopt(zmq.IDENTITY, ("%s-master" % cfg.send_ident).encode("ascii"))
        self.pub.connect(cfg.recv_spec)
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.IDENTITY, cfg.send_ident.encode("ascii"))
        self.pull.connect(cfg.send_spec)
        self.poller = zmq.Poller()
        self.poller.register(self.pull, zmq.POLLIN)
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(self._wake_r.fileno(), zmq.POLLIN)
        control_path = (
            control_path_for(self.pidfile.path)
            if self.pidfile is not None
            else os.path.join(self.run_dir, "control.sock")
        )
        self.control = ControlServer(control_path, self._control).start()
        log.info("control socket %s", control_path)
        for name, addr, render, http in (
            ("stats", cfg.stats, self._render_stats, False),
            ("metrics", cfg.metrics, self._render_metrics, True),
        ):
            if not addr:
                continue
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
        for server in self.servers:
            server.close()
        if self.control is not None:
            self.control.close()
        signal.set_wakeup_fd(-1)
        # Let the 503/504 answers we published leave before the context goes.
        self.pub.close(linger=1000)
        self.pull.close(linger=0)
        self.router.close(linger=0)
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

    # == workers ==============================================================
    def spawn(self, generation: int, replaces: bytes = b"") -> Proc:
        cfg = self.cfg
        self.serial += 1
        serial = self.serial
        wid = b"w%d" % serial
        limit = 0
        if cfg.max_requests:
            limit = cfg.max_requests + random.randint(0, cfg.max_requests_jitter)
        spec = WorkerSpec(
            cfg,
            wid,
            serial,
            generation,
            self.endpoint,
            self.pid,
            self.app,
            self._fds_for_children(),
        )
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the master's code
            code = 1
            try:
                code = workerproc.child_main(spec)
            finally:
                os._exit(code)
        info = WorkerInfo(wid, pid, generation, capacity=cfg.threads)
        proc = Proc(info, serial, probe_base(serial), time.monotonic(), limit, replaces=replaces)
        self.disp.add_worker(info)
        self.procs[wid] = proc
        self.by_pid[pid] = wid
        self.by_probe[proc.probe] = wid
        log.info("worker %s started: pid %d, generation %d", wid.decode(), pid, generation)
        return proc

    def _on_ready(self, proc: Proc, now: float) -> None:
        self.disp.mark_ready(proc.wid)
        proc.ready_at = now
        self._send(proc.wid, b"", READY)
        log.info(
            "worker %s (pid %d) ready in %.2fs: reply path proven",
            proc.wid.decode(),
            proc.pid,
            now - proc.started,
        )
        old = self.procs.get(proc.replaces)
        if old is not None:
            self._retire(old, now)
        if not self.initial_ready and all(
            p.ready_at is not None for p in self.procs.values() if p.generation == self.generation
        ):
            self.initial_ready = True
            self.failures = 0
            sd_notify("READY=1\nSTATUS=serving\nMAINPID=%d" % self.pid)
        self._check_reload(now)

    def _retire(self, proc: Proc, now: float) -> None:
        """No new requests for ``proc``; it exits once its requests in flight are done."""
        if proc.info.state == "retiring" and proc.retire_deadline is not None:
            return
        self.disp.retire(proc.wid)
        proc.retire_deadline = now + self.cfg.graceful_timeout
        proc.replaced = True
        log.info(
            "worker %s (pid %d) retiring with %d request(s) in flight",
            proc.wid.decode(),
            proc.pid,
            proc.info.pending,
        )

    def _recycle(self, proc: Proc, reason: str, now: float) -> None:
        """Start a replacement first, then retire ``proc`` when it is ready."""
        if proc.recycling or proc.info.state != "ready" or self.stopping:
            return
        if self.pending_gen is not None or now < self._recycle_after:
            return  # the reload replaces it anyway / a replacement just failed
        proc.recycling = reason
        log.info("worker %s (pid %d): %s, recycling", proc.wid.decode(), proc.pid, reason)
        self.restarts += 1
        self.spawn(proc.generation, replaces=proc.wid)

    def _kill(self, proc: Proc, status: str) -> None:
        if proc.killed:
            return
        proc.answer_status = status
        proc.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)

    def _harakiri(self, proc: Proc, entry: InFlight, now: float) -> None:
        self.harakiri_count += 1
        log.error(
            "harakiri: worker %s (pid %d) request on connection %s:%s running %.1fs"
            " (limit %ss); its traceback follows, then it is killed",
            proc.wid.decode(),
            proc.pid,
            entry.key[0],
            entry.key[1],
            now - entry.started,
            self.cfg.harakiri,
        )
        self.disp.retire(proc.wid)
        proc.kill_at = now + HARAKIRI_GRACE
        proc.answer_status = "504 Gateway Timeout"
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGUSR2)
        if (
            not self.stopping
            and not proc.replaced
            and not proc.recycling
            and proc.generation >= self.generation
        ):
            proc.replaced = True
            self.restarts += 1
            self.spawn(self.generation)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            wid = self.by_pid.pop(pid, None)
            proc = self.procs.pop(wid, None) if wid is not None else None
            if proc is not None:
                self._on_exit(proc, os.waitstatus_to_exitcode(status))

    def _on_exit(self, proc: Proc, code: int) -> None:
        now = time.monotonic()
        self.by_probe.pop(proc.probe, None)
        self.served_by_gone += proc.info.requests
        lost = self.disp.remove_worker(proc.wid)
        expected = proc.stop_sent and code == 0
        how = "exited with %d" % code if code >= 0 else "killed by signal %d" % -code
        if lost:
            keys = list(dict.fromkeys(e.key for e in lost))
            log.warning(
                "worker %s (pid %d) %s with %d request(s) in flight: answering %s",
                proc.wid.decode(),
                proc.pid,
                how,
                len(lost),
                proc.answer_status,
            )
            for key in keys:
                self._answer(key[0], key[1], proc.answer_status)
        elif expected:
            log.info(
                "worker %s (pid %d) exited after %d request(s)",
                proc.wid.decode(),
                proc.pid,
                proc.info.requests,
            )
        else:
            log_fn = log.info if proc.killed or proc.info.state == "retiring" else log.warning
            log_fn("worker %s (pid %d) %s", proc.wid.decode(), proc.pid, how)
        self._dispatch_queued(now)
        if self.stopping:
            return
        replacing = self.procs.get(proc.replaces)
        if replacing is not None and replacing.recycling:
            replacing.recycling = ""  # its replacement failed: allow another try later
        if proc.ready_at is None:
            self._died_unready(proc, code, now)
            return
        if proc.replaced or proc.recycling:
            return  # retired, or its replacement is already starting
        if self.pending_gen is not None and proc.generation < self.pending_gen:
            return  # the reload in progress replaces it
        self.restarts += 1
        self.spawn(self.generation)

    def _died_unready(self, proc: Proc, code: int, now: float) -> None:
        """A worker that never served: a broken app, a crash in start-up, or a kill."""
        if code == EXIT_APP_LOAD and not proc.fatal:
            proc.fatal = self._late_fatal(proc.wid)
        why = proc.fatal or (
            "exited with %d before it was ready" % code
            if code >= 0
            else "killed by signal %d before it was ready" % -code
        )
        if self.pending_gen is not None and proc.generation == self.pending_gen:
            self._abort_reload(why)
            return
        if proc.replaces:
            # A replacement (recycling) that failed: the old worker keeps serving.
            self.failures += 1
            self._recycle_after = now + min(BACKOFF_MAX, BACKOFF_MIN * 2**self.failures)
            log.error("replacement worker %s %s", proc.wid.decode(), why)
            return
        if proc.replaced:
            return
        serving = any(p.info.state == "ready" for p in self.procs.values())
        if code == EXIT_APP_LOAD and not serving:
            # Crash-loop guard: nothing serves and the app cannot even be loaded.
            print(
                "m2gate: error: %s" % (proc.fatal or "the app could not be loaded"),
                file=sys.stderr,
                flush=True,
            )
            self.exit_code = EXIT_APP_LOAD
            self._begin_stop("the app could not be loaded", now)
            return
        self.failures += 1
        delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (self.failures - 1))
        log.error("worker %s %s; starting another in %.1fs", proc.wid.decode(), why, delay)
        self.respawn_at.append((now + delay, proc.generation))

    def _late_fatal(self, wid: bytes) -> str:
        """The ``fatal`` frame of a worker that already exited, if it is still on its way."""
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            if not self.router.poll(50):
                continue
            frames = self.router.recv_multipart()
            if len(frames) > 2 and frames[0] == wid and frames[1] == FATAL:
                return frames[2].decode("utf-8", "replace")
            self._on_frames(frames, time.monotonic())
        return ""

    # == reload / stop ========================================================
    def reload(self, why: str) -> int:
        """Start a new generation; old workers retire once all of it is ready."""
        now = time.monotonic()
        if self.stopping:
            return self.generation
        if self.pending_gen is not None:
            self.reload_again = True
            log.info("reload (%s) queued behind the one in progress", why)
            return self.last_gen + 1
        self.pending_gen = self.last_gen = self.last_gen + 1  # never reused, even if aborted
        self.reload_started = now
        sd_notify("RELOADING=1")
        log.info("reload (%s): starting generation %d", why, self.pending_gen)
        for _ in range(self.cfg.processes):
            self.spawn(self.pending_gen)
        return self.pending_gen

    def _check_reload(self, now: float) -> None:
        gen = self.pending_gen
        if gen is None:
            return
        new = [p for p in self.procs.values() if p.generation == gen]
        if len(new) < self.cfg.processes or any(p.ready_at is None for p in new):
            return
        for p in list(self.procs.values()):
            if p.generation < gen:
                self._retire(p, now)
        self.generation = gen
        self.pending_gen = None
        self.reloads += 1
        took = now - self.reload_started
        self.reload_durations.append(took)
        log.info("reload done: generation %d serving after %.2fs", gen, took)
        sd_notify("READY=1\nSTATUS=serving generation %d" % gen)
        if self.reload_again:
            self.reload_again = False
            self.reload("queued reload")

    def _abort_reload(self, why: str) -> None:
        gen = self.pending_gen
        log.error(
            "reload to generation %s failed: %s; generation %d keeps serving",
            gen,
            why,
            self.generation,
        )
        now = time.monotonic()
        for p in list(self.procs.values()):
            if p.generation == gen:
                p.replaced = True
                if p.ready_at is not None:
                    self._retire(p, now)  # it may be serving already: let it finish
                else:
                    self._kill(p, "502 Bad Gateway")
        self.pending_gen = None
        self.reload_again = False
        sd_notify("READY=1\nSTATUS=reload failed")

    def _begin_stop(self, why: str, now: float) -> None:
        if self.stopping:
            return
        log.info(
            "stopping (%s): %d request(s) in flight get up to %ss",
            why,
            sum(p.info.pending for p in self.procs.values()),
            self.cfg.graceful_timeout,
        )
        sd_notify("STOPPING=1")
        self.stopping = True
        self.stop_deadline = now + self.cfg.graceful_timeout
        self.respawn_at.clear()
        if self.pending_gen is not None:
            self._abort_reload("stopping")
        # The PULL stays connected until the very end. Seen in tests: with it
        # disconnected at stop, replies published afterwards (a worker
        # finishing, our own 503) were sometimes never delivered while
        # Mongrel2 still owed disconnect notices for probe ids. New requests
        # get 503 instead (see _on_message).
        for p in list(self.procs.values()):
            if p.ready_at is None:
                self._kill(p, "503 Service Unavailable")

    def _force_stop(self, by_signal: bool) -> None:
        """Kill every worker now: a second signal (exit 1) or the graceful timeout."""
        log.warning("forced stop: killing %d worker(s)", len(self.procs))
        self.forced = True
        if by_signal and self.exit_code == 0:
            self.exit_code = 1
        for p in list(self.procs.values()):
            self._kill(p, "503 Service Unavailable")

    # == the loop =============================================================
    def _loop(self) -> None:
        while True:
            now = time.monotonic()
            self._tick(now)
            if self.stopping and not self.procs:
                break
            events = dict(self.poller.poll(self._timeout_ms(now)))
            if self._wake_r.fileno() in events:
                self._on_wake()
            if events.get(self.router):
                self._on_router()
            if events.get(self.pull):
                self._on_pull()
        for q in self.disp.expire_queued(time.monotonic(), -1.0):
            self._answer(q.msg.sender, q.msg.conn_id, "503 Service Unavailable", q.msg)
        total = self.served_by_gone
        log.info("master stopped after %d request(s)%s", total, " (forced)" if self.forced else "")

    def _timeout_ms(self, now: float) -> int:
        return int(TICK * 1000)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Only enqueue: the loop acts (set_wakeup_fd wakes it)."""
        self._signals.put_nowait(signum)

    def _on_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._wake_r.recv(4096):
                pass
        now = time.monotonic()
        while True:
            try:
                signum = self._signals.get_nowait()
            except queue.Empty:
                break
            self._handle_signal(signum, now)
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

    def _handle_signal(self, signum: int, now: float) -> None:
        if signum == signal.SIGCHLD:
            self._on_router()  # a dying worker's last frames (fatal, done) come first
            self._reap()
        elif signum in (signal.SIGTERM, signal.SIGINT):
            if self.stopping:
                self._force_stop(by_signal=True)
            else:
                self._begin_stop(signal.Signals(signum).name, now)
        elif signum == signal.SIGHUP:
            self.reload("SIGHUP")
        elif signum == signal.SIGUSR1:
            logs.reopen_logs()
            for p in self.procs.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGUSR1)

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn`` in the loop (from another thread) and return its result."""
        c = _Call(fn)
        self._calls.put(c)
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"c")
        if not c.done.wait(timeout):
            return {"ok": False, "error": "the master did not answer in %ss" % timeout}
        return c.result

    # -- Mongrel2 -> workers --------------------------------------------------
    def _on_pull(self) -> None:
        now = time.monotonic()
        for _ in range(BATCH):
            try:
                raw = self.pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._on_message(raw, now)

    def _on_message(self, raw: bytes, now: float) -> None:
        try:
            msg = parse_message(raw)
        except ProtocolError as exc:
            log.warning("dropped malformed message (%d bytes): %s", len(raw), exc)
            return
        if isinstance(msg, Disconnect) and is_probe(msg.conn_id):
            self._on_probe(msg.conn_id, now)
            return
        if (
            self.stopping
            and not isinstance(msg, (Disconnect, Credits, UnknownControl))
            and msg.key not in self.disp.owner
        ):
            self.rejected += 1
            self._answer(msg.sender, msg.conn_id, "503 Service Unavailable", msg)
            return
        decision = self.disp.assign(msg, raw, now)
        if isinstance(decision, Forward):
            if not self._send(decision.wid, raw):
                self.disp.unroute(decision.wid, msg.key)
                self.disp.retire(decision.wid)
                self._on_message(raw, now)  # to another worker, or the queue
        elif isinstance(decision, Hold):
            if now - self._queue_warned > 5.0:
                self._queue_warned = now
                log.warning(
                    "every worker thread is busy: %d request(s) wait in the master",
                    len(self.disp.queue),
                )
        elif isinstance(decision, Reject):
            self.rejected += 1
            log.error(
                "master queue full (%d): 503 for %s:%s",
                self.cfg.queue_size,
                msg.sender,
                msg.conn_id,
            )
            self._answer(msg.sender, msg.conn_id, "503 Service Unavailable", msg)
        else:
            assert isinstance(decision, Drop)

    def _on_probe(self, conn_id: int, now: float) -> None:
        slot = probe_slot(conn_id)
        if slot == probe_base(0):
            if not self._pub_ready:
                self._pub_ready = True
                self._pub_ready_at = now
                log.debug("master reply path proven")
            return
        wid = self.by_probe.get(slot)
        proc = self.procs.get(wid) if wid is not None else None
        if proc is not None and proc.ready_at is None and not proc.killed:
            self._on_ready(proc, now)
            self._dispatch_queued(now)

    def _send(self, wid: bytes, *frames: bytes) -> bool:
        try:
            self.router.send_multipart([wid, *frames], zmq.NOBLOCK)
            return True
        except zmq.ZMQError as exc:
            log.warning("worker %s unreachable: %s", wid.decode(), exc)
            return False

    def _dispatch_queued(self, now: float) -> None:
        for wid, item in self.disp.dispatch_queued(now):
            if not self._send(wid, item.raw):
                self.disp.unroute(wid, item.msg.key)
                self.disp.retire(wid)
                self._on_message(item.raw, now)

    def _answer(self, sender: str, conn_id: int, status: str, msg: Message | None = None) -> None:
        """Answer for a worker that cannot (killed, or none free), then close."""
        version = request_framing(msg)[0] if msg is not None else "HTTP/1.1"
        payload, _ = simple_response(
            status, status[4:].encode() + b"\n", version, False, SERVER_HEADER
        )
        uuid = (self.cfg.recv_ident or sender).encode("latin-1")
        try:
            self.pub.send_multipart([replies.reply(uuid, conn_id, payload)])
            for m in replies.close(uuid, [conn_id]):
                self.pub.send(m)
        except (zmq.ZMQError, ValueError) as exc:
            log.warning("could not answer %s to %s:%s: %s", status, sender, conn_id, exc)

    # -- workers -> master ----------------------------------------------------
    def _on_router(self) -> None:
        now = time.monotonic()
        freed = False
        for _ in range(BATCH * 4):
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            freed = self._on_frames(frames, now) or freed
        if freed:
            self._dispatch_queued(now)

    def _on_frames(self, frames: list[bytes], now: float) -> bool:
        """One message from a worker; True if it freed a thread."""
        if len(frames) < 2:
            return False
        wid, kind = frames[0], frames[1]
        if b"." in wid:  # an app thread's own socket: WID.N
            wid = wid.split(b".", 1)[0]
        proc = self.procs.get(wid)
        if proc is None:
            return False
        if kind == DONE:
            sender, _, conn_id = frames[2].rpartition(b" ") if len(frames) > 2 else (b"", b"", b"")
            if not conn_id.isdigit() or not self.disp.on_done(
                wid, (sender.decode("latin-1"), int(conn_id)), now
            ):
                return False
            if proc.max_requests and proc.info.requests >= proc.max_requests:
                self._recycle(proc, "max-requests %d reached" % proc.max_requests, now)
            return True
        if kind == HEARTBEAT:
            self._on_heartbeat(proc, frames[2] if len(frames) > 2 else b"{}", now)
        elif kind == FATAL:
            proc.fatal = frames[2].decode("utf-8", "replace") if len(frames) > 2 else ""
        elif kind == LOADED and len(frames) > 2:
            self._watch_files(frames[2])
        elif kind != HELLO:
            log.debug("unknown frame %r from worker %s", kind[:20], wid.decode())
        return False

    def _on_heartbeat(self, proc: Proc, data: bytes, now: float) -> None:
        import json

        try:
            beat = json.loads(data)
            proc.rss = int(beat.get("rss", 0))
            proc.exceptions = int(beat.get("exceptions", 0))
            proc.disconnects = int(beat.get("disconnects", 0))
        except (ValueError, TypeError, AttributeError):
            return
        limit = self.cfg.reload_on_rss * 1024 * 1024
        if limit and proc.rss > limit:
            self._recycle(
                proc, "rss %.1f MB over %d MB" % (proc.rss / 1e6, self.cfg.reload_on_rss), now
            )

    def _watch_files(self, data: bytes) -> None:
        import json

        try:
            files = json.loads(data)
        except ValueError:
            return
        for path in files:
            if isinstance(path, str) and path not in self._watch_mtimes:
                self._watch_mtimes[path] = _mtime(path)

    # -- housekeeping ---------------------------------------------------------
    def _tick(self, now: float) -> None:
        if now < self._next_tick:
            return
        self._next_tick = now + 0.01
        cfg = self.cfg
        if not self._pub_ready and now >= self._next_pub_probe:
            self._next_pub_probe = now + 0.05
            probe = probe_base(0) + self._pub_probe % workerproc.PROBE_SPAN
            self._pub_probe += 1
            with contextlib.suppress(zmq.ZMQError):
                self.pub.send(replies.close(workerproc.reply_uuid(cfg), [probe])[0])
        if cfg.harakiri:
            for info, entry in self.disp.overdue(now, cfg.harakiri):
                proc = self.procs.get(info.wid)
                if proc is not None and proc.kill_at is None:
                    self._harakiri(proc, entry, now)
        for proc in list(self.procs.values()):
            if proc.kill_at is not None and now >= proc.kill_at:
                self._kill(proc, proc.answer_status)
            elif (
                proc.ready_at is None
                and self._pub_ready  # Mongrel2 answers us: the worker itself is stuck
                and now - max(proc.started, self._pub_ready_at) > READY_TIMEOUT
                and not proc.killed
            ):
                log.error(
                    "worker %s (pid %d) not ready after %ss: killing it",
                    proc.wid.decode(),
                    proc.pid,
                    READY_TIMEOUT,
                )
                self._kill(proc, "502 Bad Gateway")
            elif (
                proc.retire_deadline is not None and now > proc.retire_deadline and not proc.killed
            ):
                log.warning(
                    "worker %s (pid %d) still busy after the graceful timeout (%ss): killing it",
                    proc.wid.decode(),
                    proc.pid,
                    cfg.graceful_timeout,
                )
                self._kill(proc, "503 Service Unavailable")
        for q in self.disp.expire_queued(now, cfg.queue_timeout):
            self.rejected += 1
            log.error(
                "no worker took %s:%s for %ss: 503", q.msg.sender, q.msg.conn_id, cfg.queue_timeout
            )
            self._answer(q.msg.sender, q.msg.conn_id, "503 Service Unavailable", q.msg)
        if self.respawn_at:
            due = [g for t, g in self.respawn_at if t <= now]
            self.respawn_at = [(t, g) for t, g in self.respawn_at if t > now]
            for gen in due:
                if not self.stopping:
                    self.restarts += 1
                    self.spawn(max(gen, self.generation))
        if self.stopping:
            if not self.disp.queue:
                for proc in list(self.procs.values()):
                    if proc.info.state == "ready":
                        self._retire(proc, now)
            if now > self.stop_deadline and not self.forced:
                self._force_stop(by_signal=False)
        for info in self.disp.idle_retiring():
            proc = self.procs.get(info.wid)
            if proc is not None and not proc.stop_sent and proc.kill_at is None:
                proc.stop_sent = True
                self._send(proc.wid, b"", STOP)
        if now >= self._next_watch:
            self._next_watch = now + WATCH_INTERVAL
            self._watch(now)
            self._reap()  # in case a SIGCHLD was coalesced away

    def _watch(self, now: float) -> None:
        cfg = self.cfg
        if self.stopping:
            return
        changed = ""
        if cfg.touch_reload:
            m = _mtime(cfg.touch_reload)
            old = self._watch_mtimes.setdefault("touch:" + cfg.touch_reload, m)
            if m != old:
                self._watch_mtimes["touch:" + cfg.touch_reload] = m
                changed = "touched %s" % cfg.touch_reload
        if cfg.reload_on_change and not changed:
            if cfg.preload and not self._watch_mtimes:
                for path in workerproc.app_source_files():
                    self._watch_mtimes[path] = _mtime(path)
            for path, old in list(self._watch_mtimes.items()):
                if path.startswith("touch:"):
                    continue
                m = _mtime(path)
                if m != old:
                    self._watch_mtimes[path] = m
                    changed = "%s changed" % path
        if changed:
            if cfg.preload:
                log.warning("%s: with --preload new workers reuse the master's code", changed)
            self.reload(changed)

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
            if self.stopping:
                return {"ok": False, "error": "stopping", "pid": self.pid}
            return {"ok": True, "pid": self.pid, "generation": gen}
        if command == "stop":
            self.call(lambda: self._begin_stop("m2gate stop", time.monotonic()))
            return {"ok": True, "pid": self.pid}
        return {"ok": False, "error": "unknown command %r" % command}

    def stats(self) -> dict[str, Any]:
        """The stats document (runs in the loop)."""
        now = time.monotonic()
        workers = []
        served = self.served_by_gone
        for p in sorted(self.procs.values(), key=lambda p: p.serial):
            info = p.info
            served += info.requests
            if p.ready_at is None:
                status = "starting"
            elif info.state == "retiring":
                status = "retiring"
            else:
                status = "busy" if info.inflight else "idle"
            workers.append(
                {
                    "id": p.wid.decode(),
                    "pid": p.pid,
                    "generation": p.generation,
                    "status": status,
                    "threads": info.capacity,
                    "busy": info.load,
                    "requests": info.requests,
                    "exceptions": p.exceptions,
                    "disconnects": p.disconnects,
                    "avg_request_time": info.busy_time / info.requests if info.requests else 0.0,
                    "last_request_time": info.last_time,
                    "rss": p.rss,
                    "max_requests": p.max_requests,
                    "in_flight": [
                        {
                            "sender": e.key[0],
                            "conn_id": e.key[1],
                            "age": round(now - e.started, 3),
                            "pipelined": e.pipelined,
                            "request": e.what,
                        }
                        for e in info.entries()
                    ],
                }
            )
        return {
            "ok": True,
            "version": __version__,
            "pid": self.pid,
            "uptime": round(time.time() - self.started_at, 3),
            "generation": self.generation,
            "reloading_to": self.pending_gen,
            "stopping": self.stopping,
            "processes": self.cfg.processes,
            "threads": self.cfg.threads,
            "queued": len(self.disp.queue),
            "requests": served,
            "rejected": self.rejected,
            "harakiri": self.harakiri_count,
            "restarts": self.restarts,
            "reloads": self.reloads,
            "reload_durations": [round(d, 3) for d in self.reload_durations],
            "workers": workers,
        }

    def _render_stats(self) -> tuple[bytes, str]:
        import json

        doc = self.call(self.stats, timeout=5.0)
        return json.dumps(doc, indent=1).encode() + b"\n", "application/json"

    def _render_metrics(self) -> tuple[bytes, str]:
        doc = self.call(self.stats, timeout=5.0)
        if not doc.get("ok"):
            return b"", PROMETHEUS_TYPE
        return render_metrics(doc).encode(), PROMETHEUS_TYPE


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def needs_master(cfg: Config) -> bool:
    """Whether ``cfg`` asks for anything only the master provides."""
    return bool(
        cfg.processes > 1
        or cfg.preload
        or cfg.pidfile
        or cfg.harakiri
        or cfg.max_requests
        or cfg.reload_on_rss
        or cfg.touch_reload
        or cfg.reload_on_change
        or cfg.stats
        or cfg.metrics
    )


def serve(cfg: Config) -> int:
    """``m2gate serve``: the master with its workers, or one process.

    One process when nothing needs a master (no ``-p``, pidfile, reload
    triggers, worker hygiene, stats): measured on 2 CPUs it serves about 2.5x
    the requests of a master with one worker, each request crossing two
    processes there (docs/operations.md).
    """
    from m2gate.ops import confine as service

    if not needs_master(cfg):
        from m2gate.runtime.single import serve as serve_single

        service.start_single(cfg)  # chroot, user, app environment, SIGUSR1
        return serve_single(cfg)
    if cfg.worker_class != "threads" or cfg.interface == "asgi":
        raise ConfigError(
            "processes: worker processes run threaded WSGI apps only for now;"
            " drop --processes and the master options for worker_class=%s/interface=%s"
            % (cfg.worker_class, cfg.interface)
        )
    pidfile = None
    if cfg.pidfile:
        try:
            pidfile = PidFile(cfg.pidfile).acquire()
        except AlreadyRunning as exc:
            raise ConfigError(str(exc)) from None
    try:
        # after the pidfile lock, before any app code: chroot, user, app environment
        service.confine(cfg, chown=[cfg.pidfile])
        if pidfile is not None:
            pidfile.path = os.path.abspath(cfg.pidfile)  # as seen after a chroot
        return Master(cfg, pidfile).run()
    except AlreadyRunning as exc:
        raise ConfigError(str(exc)) from None
    finally:
        if pidfile is not None:
            pidfile.release()


__all__ = ["AppLoadError", "Master", "needs_master", "sd_notify", "serve"]
