"""When workers start, are replaced, retire and die: the master's decisions, sans-IO.

:class:`Lifecycle` owns the workers' states and the generation counters. It
is fed facts (a worker's reply path is proven, it finished a request, it
exited with a code, the clock moved on) and returns :data:`Action` values
for the master to carry out: fork, signal, send a frame, tell systemd. No
sockets, no ``os.kill``, no clock of its own, so each rule is unit-tested
with plain objects (tests/unit/test_supervisor_lifecycle.py).

The rules it keeps:

- graceful reload: a new generation starts in full, and the old one retires
  only once every new worker's reply path is proven; a new worker that dies
  unready aborts the reload and the old generation keeps serving;
- recycling (max-requests, RSS): the replacement starts first, the old
  worker retires when it is ready; a failed replacement backs off;
- harakiri: traceback first (SIGUSR2), SIGKILL after ``HARAKIRI_GRACE``,
  its requests in flight answered 504, a replacement started at once;
- crash back-off: workers dying before they are ready restart with an
  exponential delay; an app that cannot be loaded while nothing serves stops
  the master with exit code 3;
- stop: no new requests, the busy finish within the graceful timeout, then
  everything left is killed;
- adaptive workers (``workers_max``): one more worker when the oldest
  request queued in the master waited ``workers_spawn_wait`` (at most one
  per ``workers_spawn_interval``, none while one is starting, never above
  the maximum); one fewer when for ``workers_idle`` seconds nothing waited
  and the busy threads fitted in one worker fewer (never below the
  minimum), the newest idle worker exits. The pool as a whole is measured,
  not each worker: the dispatcher spreads work over every worker, so none
  of them alone would look idle for long.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence

from m2gate.config.settings import Config
from m2gate.supervisor.actions import Action, Dump, Fatal, Kill, Notify, Send, Spawn
from m2gate.supervisor.handoff import Dispatcher
from m2gate.supervisor.state import LEAVING, InFlight, Worker, WorkerState
from m2gate.supervisor.wire import EXIT_APP_LOAD, READY, STOP, new_probe_block, probe_base

log = logging.getLogger("m2gate.master")

S = WorkerState
READY_TIMEOUT = 60.0  # a worker that cannot prove its reply path by then is replaced
HARAKIRI_GRACE = 0.5  # between SIGUSR2 (traceback) and SIGKILL
BACKOFF_MIN = 0.1
BACKOFF_MAX = 10.0


def backoff(failures: int) -> float:
    """Seconds before the next try after ``failures`` consecutive failures (>= 1)."""
    return min(BACKOFF_MAX, BACKOFF_MIN * 2.0 ** (failures - 1))


class Lifecycle:
    """The workers' states and the reload / recycle / stop decisions."""

    def __init__(
        self,
        cfg: Config,
        disp: Dispatcher,
        pid: int = 0,
        rand: Callable[[int, int], int] = random.randint,
    ) -> None:
        self.cfg = cfg
        self.disp = disp
        self.pid = pid  # the master's, for systemd's MAINPID
        self.rand = rand  # for max_requests_jitter
        self.workers: dict[bytes, Worker] = {}
        self.serial = 0
        # This master's own probe ids (random per start: see supervisor/wire.py).
        self.probe_block = new_probe_block()
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
        self.recycle_after = 0.0
        self.served_by_gone = 0  # requests of workers that exited (totals survive them)
        self.restarts = 0
        self.reloads = 0
        self.harakiri_count = 0
        # Adaptive workers: how many the serving generation should have now.
        self.size = cfg.workers
        self.reload_size = self.size  # what the reload in progress starts
        self.spawned_for_load = 0
        self.retired_idle = 0
        self.last_scale_spawn = float("-inf")
        self.calm_since: float | None = None  # spare capacity, nothing waiting, since then
        self._out: list[Action] = []

    # == facts in, actions out ================================================
    def start(self, now: float) -> list[Action]:
        """The first generation."""
        for _ in range(self.cfg.workers):
            self._spawn(self.generation, now)
        return self._take()

    def on_ready(self, w: Worker, now: float) -> list[Action]:
        """The reply path of ``w`` is proven (its probe came back through Mongrel2)."""
        if w.ready_at is not None or w.state in (S.KILLED, S.GONE):
            return []
        self.disp.mark_ready(w.wid)
        w.ready_at = now
        self._out.append(Send(w, READY))
        log.info(
            "worker %s (pid %d) ready in %.2fs: reply path proven",
            w.wid.decode(),
            w.pid,
            now - w.started,
        )
        old = self.workers.get(w.replaces)
        if old is not None:
            self._retire(old, now)
        if not self.initial_ready and all(
            p.ready_at is not None for p in self.workers.values() if p.generation == self.generation
        ):
            self.initial_ready = True
            self.failures = 0
            self._out.append(Notify("READY=1\nSTATUS=serving\nMAINPID=%d" % self.pid))
        self._check_reload(now)
        return self._take()

    def on_done(self, w: Worker, now: float) -> list[Action]:
        """``w`` finished a request: recycle it at its max-requests."""
        if w.max_requests and w.requests >= w.max_requests:
            self._recycle(w, "max-requests %d reached" % w.max_requests, now)
        return self._take()

    def on_heartbeat(self, w: Worker, now: float) -> list[Action]:
        """``w`` reported its RSS: recycle it over ``reload_on_rss``."""
        limit = self.cfg.reload_on_rss * 1024 * 1024
        if limit and w.rss > limit:
            self._recycle(w, "rss %.1f MB over %d MB" % (w.rss / 1e6, self.cfg.reload_on_rss), now)
        return self._take()

    def on_exit(self, w: Worker, code: int, now: float) -> list[Action]:
        """``w`` was reaped (``code`` as ``os.waitstatus_to_exitcode``): replace it or not."""
        self.workers.pop(w.wid, None)
        if w.state is not S.GONE:
            w.to(S.GONE)
        self.served_by_gone += w.requests
        if self.stopping:
            return self._take()
        replacing = self.workers.get(w.replaces)
        if replacing is not None and replacing.recycling:
            replacing.recycling = ""  # its replacement failed: allow another try later
        if w.ready_at is None:
            self._died_unready(w, code, now)
        elif w.replaced or w.recycling:
            pass  # retired, or its replacement is already starting
        elif self.pending_gen is not None and w.generation < self.pending_gen:
            pass  # the reload in progress replaces it
        else:
            self.restarts += 1
            self._spawn(self.generation, now)
        return self._take()

    def reload(self, why: str, now: float) -> tuple[int, list[Action]]:
        """Start a new generation; old workers retire once all of it is ready.

        Returns the generation that will serve (the current one when stopping).
        """
        gen = self._reload(why, now)
        return gen, self._take()

    def begin_stop(self, why: str, now: float) -> list[Action]:
        self._begin_stop(why, now)
        return self._take()

    def force_stop(self, by_signal: bool) -> list[Action]:
        """Kill every worker now: a second signal (exit 1) or the graceful timeout."""
        self._force_stop(by_signal)
        return self._take()

    def tick(
        self,
        now: float,
        pub_ready_at: float | None = None,
        overdue: Sequence[tuple[Worker, InFlight]] = (),
    ) -> list[Action]:
        """Deadlines: harakiri, kills, respawns after back-off, stop, idle retirees.

        ``pub_ready_at``: when the master's own reply path was proven (None:
        not yet; until then a slow worker is not to blame). ``overdue``: the
        requests past the harakiri limit (``Dispatcher.overdue``).
        """
        for w, entry in overdue:
            if w.state in (S.READY, S.RETIRING, S.STOPPING):  # not dumped or killed yet
                self._harakiri(w, entry, now)
        for w in list(self.workers.values()):
            self._check_deadlines(w, now, pub_ready_at)
        self._respawn_due(now)
        if self.cfg.adaptive and not self.stopping:
            self._scale(now)
        if self.stopping:
            if not self.disp.queue and not self.disp.waiting.count:
                for w in list(self.workers.values()):
                    if w.state is S.READY:
                        self._retire(w, now)
            if now > self.stop_deadline and not self.forced:
                self._force_stop(by_signal=False)
        for w in self.disp.idle_retiring():
            w.to(S.STOPPING)
            self._out.append(Send(w, STOP))
        return self._take()

    @property
    def done(self) -> bool:
        """Stopping, and every worker is gone: the loop may end."""
        return self.stopping and not self.workers

    # == decisions ============================================================
    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _spawn(
        self, generation: int, now: float, replaces: bytes = b"", slot: int | None = None
    ) -> Worker:
        cfg = self.cfg
        if slot is None:
            slot = self._free_slot(generation)
        self.serial += 1
        limit = 0
        if cfg.max_requests:
            limit = cfg.max_requests + self.rand(0, cfg.max_requests_jitter)
        w = Worker(
            b"w%d" % self.serial,
            0,
            generation,
            cfg.worker_capacity,
            serial=self.serial,
            probe=probe_base(self.serial, self.probe_block),
            started=now,
            max_requests=limit,
            replaces=replaces,
            slot=slot,
        )
        self.workers[w.wid] = w
        self.disp.add_worker(w)
        self._out.append(Spawn(w))
        return w

    def _free_slot(self, generation: int) -> int:
        """The lowest slot no staying worker of ``generation`` holds.

        So a generation fills 0..N-1, and a worker that died or is leaving
        (harakiri) hands its slot to the worker started for it.
        """
        taken = {
            w.slot
            for w in self.workers.values()
            if w.generation == generation and w.state not in LEAVING
        }
        slot = 0
        while slot in taken:
            slot += 1
        return slot

    def _check_deadlines(self, w: Worker, now: float, pub_ready_at: float | None) -> None:
        """SIGKILL after the harakiri grace, the ready timeout or the graceful timeout."""
        if w.state is S.DUMPING:
            if w.deadline is not None and now >= w.deadline:
                self._kill(w, w.answer)
        elif (
            w.ready_at is None
            and pub_ready_at is not None  # Mongrel2 answers us: the worker itself is stuck
            and now - max(w.started, pub_ready_at) > READY_TIMEOUT
            and w.state is not S.KILLED
        ):
            log.error(
                "worker %s (pid %d) not ready after %ss: killing it",
                w.wid.decode(),
                w.pid,
                READY_TIMEOUT,
            )
            self._kill(w, "502 Bad Gateway")
        elif w.state in (S.RETIRING, S.STOPPING) and w.deadline is not None and now > w.deadline:
            log.warning(
                "worker %s (pid %d) still busy after the graceful timeout (%ss): killing it",
                w.wid.decode(),
                w.pid,
                self.cfg.graceful_timeout,
            )
            self._kill(w, "503 Service Unavailable")

    def _respawn_due(self, now: float) -> None:
        """Start the workers whose crash back-off is over."""
        if not self.respawn_at:
            return
        due = [g for t, g in self.respawn_at if t <= now]
        self.respawn_at = [(t, g) for t, g in self.respawn_at if t > now]
        for gen in due:
            if not self.stopping:
                self.restarts += 1
                self._spawn(max(gen, self.generation), now)

    def _retire(self, w: Worker, now: float) -> None:
        """No new requests for ``w``; it exits once its requests in flight are done."""
        if w.state in (S.STARTING, S.READY):
            w.to(S.RETIRING)
        if w.state in (S.RETIRING, S.STOPPING) and w.deadline is None:
            w.deadline = now + self.cfg.graceful_timeout
            log.info(
                "worker %s (pid %d) retiring with %d request(s) in flight",
                w.wid.decode(),
                w.pid,
                w.pending,
            )
        w.replaced = True

    def _recycle(self, w: Worker, reason: str, now: float) -> None:
        """Start a replacement first, then retire ``w`` when it is ready."""
        if w.recycling or w.state is not S.READY or self.stopping:
            return
        if self.pending_gen is not None or now < self.recycle_after:
            return  # the reload replaces it anyway / a replacement just failed
        w.recycling = reason
        log.info("worker %s (pid %d): %s, recycling", w.wid.decode(), w.pid, reason)
        self.restarts += 1
        self._spawn(w.generation, now, replaces=w.wid, slot=w.slot)

    def _kill(self, w: Worker, status: str) -> None:
        if w.state in (S.KILLED, S.GONE):
            return
        w.answer = status
        w.to(S.KILLED)
        self._out.append(Kill(w))

    def _harakiri(self, w: Worker, entry: InFlight, now: float) -> None:
        self.harakiri_count += 1
        log.error(
            "harakiri: worker %s (pid %d) request on connection %s:%s running %.1fs"
            " (limit %ss); its traceback follows, then it is killed",
            w.wid.decode(),
            w.pid,
            entry.key[0],
            entry.key[1],
            now - entry.started,
            self.cfg.harakiri,
        )
        w.to(S.DUMPING)
        w.deadline = now + HARAKIRI_GRACE
        w.answer = "504 Gateway Timeout"
        self._out.append(Dump(w))
        if (
            not self.stopping
            and not w.replaced
            and not w.recycling
            and w.generation >= self.generation
        ):
            w.replaced = True
            self.restarts += 1
            self._spawn(self.generation, now)

    def _died_unready(self, w: Worker, code: int, now: float) -> None:
        """A worker that never served: a broken app, a crash in start-up, or a kill."""
        why = w.fatal or (
            "exited with %d before it was ready" % code
            if code >= 0
            else "killed by signal %d before it was ready" % -code
        )
        if self.pending_gen is not None and w.generation == self.pending_gen:
            self._abort_reload(why, now)
            return
        if w.replaces:
            # A replacement (recycling) that failed: the old worker keeps serving.
            self.failures += 1
            self.recycle_after = now + backoff(self.failures + 1)
            log.error("replacement worker %s %s", w.wid.decode(), why)
            return
        if w.replaced:
            return
        serving = any(p.state is S.READY for p in self.workers.values())
        if code == EXIT_APP_LOAD and not serving:
            # Crash-loop guard: nothing serves and the app cannot even be loaded.
            self._out.append(Fatal(w.fatal or "the app could not be loaded"))
            self.exit_code = EXIT_APP_LOAD
            self._begin_stop("the app could not be loaded", now)
            return
        self.failures += 1
        delay = backoff(self.failures)
        log.error("worker %s %s; starting another in %.1fs", w.wid.decode(), why, delay)
        self.respawn_at.append((now + delay, w.generation))

    def _scale(self, now: float) -> None:
        """Adaptive workers: one more when requests wait, one fewer after a calm spell."""
        cfg = self.cfg
        ready: list[Worker] = []
        starting = False
        busy = 0
        for w in self.workers.values():
            if w.state is S.READY:
                ready.append(w)
                busy += len(w.inflight)
            elif w.state is S.STARTING:
                starting = True
        if self.pending_gen is not None or not self.initial_ready or starting or self.respawn_at:
            # Workers coming (a reload, a start, a crash's back-off): measure once they serve.
            self.calm_since = None
            return
        waited = self.disp.oldest_wait(now)
        if self.disp.queue and waited >= cfg.workers_spawn_wait:
            self.calm_since = None
            if self.size < cfg.workers_max and now - self.last_scale_spawn >= (
                cfg.workers_spawn_interval
            ):
                self.last_scale_spawn = now
                self.size += 1
                self.spawned_for_load += 1
                log.info(
                    "%d request(s) waiting, the oldest for %.3fs: starting a worker (%d of at"
                    " most %d)",
                    len(self.disp.queue),
                    waited,
                    self.size,
                    cfg.workers_max,
                )
                self._spawn(self.generation, now)
            return
        spare = (
            not self.disp.queue
            and len(ready) == self.size  # none crashed and waiting for its back-off
            and busy <= (len(ready) - 1) * cfg.threads
        )
        if not spare or self.size <= cfg.fewest_workers:
            self.calm_since = None
            return
        if self.calm_since is None:
            self.calm_since = now
            return
        if now - self.calm_since < cfg.workers_idle:
            return
        # Only an idle one (the newest): a busy one could hold a request that outlives
        # the graceful timeout and be killed for it. None idle yet: the next tick.
        candidates = [w for w in ready if not w.inflight and not w.recycling and not w.replaced]
        if not candidates:
            return
        w = max(candidates, key=lambda p: p.serial)
        self.size -= 1
        self.retired_idle += 1
        self.calm_since = None
        log.info(
            "a worker's threads spare for %ss: retiring worker %s (pid %d), %d left (min %d)",
            cfg.workers_idle,
            w.wid.decode(),
            w.pid,
            self.size,
            cfg.fewest_workers,
        )
        self._retire(w, now)

    def _reload(self, why: str, now: float) -> int:
        if self.stopping:
            return self.generation
        if self.pending_gen is not None:
            self.reload_again = True
            log.info("reload (%s) queued behind the one in progress", why)
            return self.last_gen + 1
        self.pending_gen = self.last_gen = self.last_gen + 1  # never reused, even if aborted
        self.reload_started = now
        self._out.append(Notify("RELOADING=1"))
        log.info("reload (%s): starting generation %d", why, self.pending_gen)
        self.reload_size = self.size  # adaptive: as many as serve now, not the start count
        for _ in range(self.reload_size):
            self._spawn(self.pending_gen, now)
        return self.pending_gen

    def _check_reload(self, now: float) -> None:
        gen = self.pending_gen
        if gen is None:
            return
        new = [p for p in self.workers.values() if p.generation == gen]
        if len(new) < self.reload_size or any(p.ready_at is None for p in new):
            return
        for p in list(self.workers.values()):
            if p.generation < gen:
                self._retire(p, now)
        self.generation = gen
        self.pending_gen = None
        self.reloads += 1
        took = now - self.reload_started
        self.reload_durations.append(took)
        log.info("reload done: generation %d serving after %.2fs", gen, took)
        self._out.append(Notify("READY=1\nSTATUS=serving generation %d" % gen))
        if self.reload_again:
            self.reload_again = False
            self._reload("queued reload", now)

    def _abort_reload(self, why: str, now: float) -> None:
        gen = self.pending_gen
        log.error(
            "reload to generation %s failed: %s; generation %d keeps serving",
            gen,
            why,
            self.generation,
        )
        for p in list(self.workers.values()):
            if p.generation == gen:
                p.replaced = True
                if p.ready_at is not None:
                    self._retire(p, now)  # it may be serving already: let it finish
                else:
                    self._kill(p, "502 Bad Gateway")
        self.pending_gen = None
        self.reload_again = False
        self._out.append(Notify("READY=1\nSTATUS=reload failed"))

    def _begin_stop(self, why: str, now: float) -> None:
        if self.stopping:
            return
        log.info(
            "stopping (%s): %d request(s) in flight get up to %ss",
            why,
            sum(p.pending for p in self.workers.values()),
            self.cfg.graceful_timeout,
        )
        self._out.append(Notify("STOPPING=1"))
        self.stopping = True
        self.stop_deadline = now + self.cfg.graceful_timeout
        self.respawn_at.clear()
        if self.pending_gen is not None:
            self._abort_reload("stopping", now)
        for p in list(self.workers.values()):
            if p.ready_at is None:
                self._kill(p, "503 Service Unavailable")

    def _force_stop(self, by_signal: bool) -> None:
        log.warning("forced stop: killing %d worker(s)", len(self.workers))
        self.forced = True
        if by_signal and self.exit_code == 0:
            self.exit_code = 1
        for p in list(self.workers.values()):
            self._kill(p, "503 Service Unavailable")
