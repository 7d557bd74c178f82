"""Adaptive workers (--workers-min/--workers-max) without processes: a fake clock, plain facts.

The life cycle (supervisor/lifecycle.py) decides; here each test tells a
short story of a pool under load and checks what it starts and retires.
Also the queue-wait figures they rest on (supervisor/waits.py) and the
settings' start-up checks.
"""

from __future__ import annotations

import pytest

from m2gate.config.declare import ConfigError
from m2gate.config.loader import load
from m2gate.config.settings import Config
from m2gate.protocol.peek import peek
from m2gate.supervisor.actions import Send
from m2gate.supervisor.handoff import Dispatcher, Forward, Hold
from m2gate.supervisor.lifecycle import Lifecycle
from m2gate.supervisor.serve import needs_master
from m2gate.supervisor.state import Worker, WorkerState
from m2gate.supervisor.status import document
from m2gate.supervisor.waits import WaitWindow
from m2gate.supervisor.wire import STOP

from .helpers import SENDER, message, request_headers
from .test_supervisor_lifecycle import spawned

S = WorkerState
CONN = SENDER.decode()


def make(**settings: object) -> Lifecycle:
    values: dict[str, object] = {
        "workers_min": 1,
        "workers_max": 3,
        "threads": 1,
        "workers_spawn_wait": 0.1,
        "workers_spawn_interval": 1.0,
        "workers_idle": 5.0,
        **settings,
    }
    return Lifecycle(Config(**values), Dispatcher(), pid=42)  # type: ignore[arg-type]


def boot(life: Lifecycle, now: float = 0.0) -> list[Worker]:
    workers = spawned(life.start(now))
    for w in workers:
        life.on_ready(w, now + 0.5)
    return workers


def arrive(life: Lifecycle, conn_id: int, now: float) -> Forward | Hold:
    raw = message(request_headers("GET", "/sleep"), conn_id=conn_id)
    decision = life.disp.assign(peek(raw), raw, now)
    assert isinstance(decision, (Forward, Hold))
    return decision


def finish(life: Lifecycle, conn_id: int, now: float) -> None:
    """The worker holding ``conn_id`` reports it done; the queue moves on."""
    key = (CONN, conn_id)
    wid = life.disp.owner[key]
    assert life.disp.on_done(wid, key, now)
    life.disp.dispatch_queued(now)


def serving(life: Lifecycle) -> list[Worker]:
    return [w for w in life.workers.values() if w.state is S.READY]


def grow_to_three(life: Lifecycle) -> float:
    """Sustained waiting until the pool reaches its maximum of three; returns the clock."""
    boot(life)
    now = 1.0
    for conn_id in range(1, 9):
        arrive(life, conn_id, now)
    while len(life.workers) < 3:
        now += 0.1
        for w in spawned(life.tick(now)):
            life.on_ready(w, now + 0.2)  # ready soon after the fork
            life.disp.dispatch_queued(now + 0.2)
    return now


# == growing =================================================================
def test_grows_one_at_a_time_under_sustained_waiting_and_never_above_max() -> None:
    life = make()
    (first,) = boot(life)
    assert isinstance(arrive(life, 1, 1.0), Forward)
    assert isinstance(arrive(life, 2, 1.0), Hold)
    assert life.tick(1.05) == []  # waited 0.05 s: below workers_spawn_wait
    (second,) = spawned(life.tick(1.1))
    assert life.size == 2 and life.spawned_for_load == 1
    assert life.tick(1.5) == []  # one starting: its capacity is on the way
    life.on_ready(second, 1.6)
    life.disp.dispatch_queued(1.6)
    assert [len(w.inflight) for w in (first, second)] == [1, 1]
    for conn_id in (3, 4, 5, 6):
        arrive(life, conn_id, 1.7)
    assert life.tick(1.9) == []  # waiting again, but within workers_spawn_interval
    (third,) = spawned(life.tick(2.1))
    life.on_ready(third, 2.2)
    life.disp.dispatch_queued(2.2)
    for t in (3.5, 5.0, 9.0, 30.0):  # still waiting, long after: the maximum holds
        assert not spawned(life.tick(t))
    assert len(life.workers) == 3 and life.size == 3 and life.spawned_for_load == 2


def test_a_queue_that_drains_quickly_starts_nothing() -> None:
    life = make()
    boot(life)
    now = 1.0
    for conn_id in range(1, 50):
        arrive(life, conn_id, now)
        arrive(life, conn_id + 1000, now)  # waits behind it, for less than 0.1 s
        assert life.tick(now + 0.05) == []
        finish(life, conn_id, now + 0.06)
        finish(life, conn_id + 1000, now + 0.07)
        now += 0.1
    assert len(life.workers) == 1 and life.spawned_for_load == 0


def test_a_fixed_pool_never_scales() -> None:
    life = Lifecycle(Config(processes=1, threads=1), Dispatcher(), pid=42)
    boot(life)
    arrive(life, 1, 1.0)
    arrive(life, 2, 1.0)
    assert all(life.tick(t) == [] for t in (2.0, 5.0, 60.0))
    assert len(life.workers) == 1


# == shrinking ===============================================================
def test_shrinks_to_min_after_idle_one_worker_per_idle_spell() -> None:
    life = make()
    now = grow_to_three(life)
    for conn_id in range(1, 9):
        finish(life, conn_id, now)
    assert not life.disp.queue and all(not w.inflight for w in life.workers.values())
    now += 1.0
    assert life.tick(now) == []  # the calm spell starts
    assert life.tick(now + 4.9) == []
    actions = life.tick(now + 5.0)
    (gone,) = [a.worker for a in actions if isinstance(a, Send)]
    assert actions == [Send(gone, STOP)] and gone.state is S.STOPPING  # idle: told at once
    assert gone.serial == 3  # the newest of the idle ones
    assert life.size == 2 and life.retired_idle == 1
    assert life.on_exit(gone, 0, now + 5.1) == []  # retired: not replaced
    assert life.tick(now + 5.2) == []  # a new spell starts: no second retire at once
    assert life.tick(now + 9.9) == []
    (last,) = [a.worker for a in life.tick(now + 10.3) if isinstance(a, Send)]
    life.on_exit(last, 0, now + 10.4)
    for t in (20.0, 40.0, 100.0):  # at the minimum: nothing more
        assert life.tick(now + t) == []
    assert len(life.workers) == 1 and life.size == 1 and life.retired_idle == 2
    assert life.restarts == 0


def test_a_busy_moment_restarts_the_calm_spell() -> None:
    life = make(workers_min=1, workers_max=2)
    boot(life)
    arrive(life, 1, 1.0)
    arrive(life, 2, 1.0)
    (w2,) = spawned(life.tick(1.2))
    life.on_ready(w2, 1.3)
    life.disp.dispatch_queued(1.3)
    finish(life, 1, 2.0)
    finish(life, 2, 2.0)
    life.tick(2.0)
    life.tick(6.0)
    arrive(life, 3, 6.5)
    arrive(life, 4, 6.5)  # both threads busy: no spare worker for a moment
    life.tick(6.6)
    finish(life, 3, 6.7)
    finish(life, 4, 6.7)
    life.tick(6.8)
    assert life.tick(11.0) == []  # 7 s since the spell began, but only 4.2 s since it restarted
    assert [a for a in life.tick(11.9) if isinstance(a, Send)]
    assert life.size == 1


def test_only_an_idle_worker_is_retired_so_no_request_outlives_its_grace() -> None:
    life = make(workers_min=1, workers_max=2, threads=2)
    boot(life)
    for conn_id in (1, 2, 3):
        arrive(life, conn_id, 1.0)  # two threads busy, the third waits
    (w2,) = spawned(life.tick(1.2))
    life.on_ready(w2, 1.3)
    life.disp.dispatch_queued(1.3)
    # One request on each worker: 2 busy threads fit one worker of 2 threads.
    for w in serving(life):
        for key in list(w.inflight)[1:]:
            finish(life, key[1], 1.5)
    assert sorted(len(w.inflight) for w in serving(life)) == [1, 1]
    life.tick(2.0)  # the calm spell starts
    for t in (7.0, 20.0, 60.0):  # long past workers_idle, but both are busy
        assert life.tick(t) == []
    assert all(w.state is S.READY for w in life.workers.values())
    stays, goes = sorted(serving(life), key=lambda w: w.serial)
    (conn_id,) = [k[1] for k in goes.inflight]
    finish(life, conn_id, 61.0)  # the newest is idle now: it goes at once
    assert life.tick(61.0) == [Send(goes, STOP)]
    assert life.size == 1 and stays.state is S.READY and stays.inflight


def test_no_flapping_when_the_load_fits_one_worker_fewer() -> None:
    life = make()
    now = grow_to_three(life)
    for conn_id in range(3, 9):
        finish(life, conn_id, now)  # two long requests stay: 2 of 3 threads busy
    assert len([w for w in serving(life) if w.inflight]) == 2
    retired = 0
    t = now
    while t < now + 120.0:
        t += 0.25
        actions = life.tick(t)
        assert not spawned(actions)
        retired += sum(isinstance(a, Send) for a in actions)
        for a in actions:
            if isinstance(a, Send):
                life.on_exit(a.worker, 0, t)
    # One retire (the spare worker), then the load exactly fills the rest: steady.
    assert retired == 1 and life.size == 2 and life.spawned_for_load == 2


def test_a_steady_trickle_over_round_robin_still_shrinks() -> None:
    """The dispatcher spreads requests over every worker: the pool is measured as a whole."""
    life = make()
    now = grow_to_three(life)
    for conn_id in range(1, 9):
        finish(life, conn_id, now)
    conn_id = 100
    while now < 60.0 and life.size > 1:
        now += 0.5
        conn_id += 1
        arrive(life, conn_id, now)  # one short request at a time, to whoever is next
        for a in life.tick(now + 0.01):
            if isinstance(a, Send):
                life.on_exit(a.worker, 0, now)
        finish(life, conn_id, now + 0.02)
    assert life.size == 1 and life.retired_idle == 2


# == with the rest of the life cycle ===========================================
def test_a_reload_keeps_the_current_count() -> None:
    life = make()
    now = grow_to_three(life)
    _, actions = life.reload("SIGHUP", now + 1.0)
    new = spawned(actions)
    assert len(new) == 3 and {w.generation for w in new} == {2}
    for w in new[:2]:
        life.on_ready(w, now + 2.0)
    assert life.generation == 1  # all three are needed first
    life.on_ready(new[2], now + 2.1)
    assert life.generation == 2 and life.size == 3


def test_no_scaling_during_a_reload_or_while_stopping() -> None:
    life = make()
    boot(life)
    arrive(life, 1, 1.0)
    arrive(life, 2, 1.0)
    _, actions = life.reload("x", 1.05)
    (new,) = spawned(actions)
    assert not spawned(life.tick(2.0))  # the reload's worker is coming
    life.on_ready(new, 2.5)
    life.begin_stop("SIGTERM", 3.0)
    assert not spawned(life.tick(4.0))
    assert life.spawned_for_load == 0


def test_a_crashed_worker_is_replaced_and_the_count_kept() -> None:
    life = make()
    grow_to_three(life)
    victim = serving(life)[0]
    (replacement,) = spawned(life.on_exit(victim, -9, 10.0))
    assert replacement.generation == 1 and life.size == 3
    life.on_ready(replacement, 10.5)
    assert len(serving(life)) == 3


def test_requests_waiting_for_a_crashed_worker_start_no_extra_one() -> None:
    life = make(workers_spawn_interval=0.0)
    boot(life)
    arrive(life, 1, 1.0)
    arrive(life, 2, 1.0)
    (second,) = spawned(life.tick(1.2))
    assert life.size == 2
    life.on_exit(second, 1, 1.5)  # died before it was ready: retried after 0.1 s
    assert life.tick(1.55) == []  # requests wait, but the retry covers them
    (retry,) = spawned(life.tick(1.65))
    assert life.size == 2 and life.spawned_for_load == 1 and life.restarts == 1
    assert retry.generation == 1 and len(life.workers) == 2


def test_the_stats_document_shows_the_queue_and_the_scaling() -> None:
    life = make()
    boot(life)
    arrive(life, 1, 1.0)
    arrive(life, 2, 1.0)
    (w2,) = spawned(life.tick(1.25))
    doc = document(
        life.cfg, life, pid=42, uptime=2.0, queued=len(life.disp.queue), rejected=0, now=1.5
    )
    assert doc["queued"] == 1 and doc["queue_oldest_wait"] == 0.5
    assert (doc["processes"], doc["workers_min"], doc["workers_max"]) == (2, 1, 3)
    assert doc["workers_spawned"] == 1 and doc["queue_waited"] == 0
    life.on_ready(w2, 1.75)
    life.disp.dispatch_queued(1.75)
    doc = document(life.cfg, life, pid=42, uptime=2.0, queued=0, rejected=0, now=2.0)
    assert doc["queue_oldest_wait"] == 0.0
    assert doc["queue_waited"] == 1 and doc["queue_wait_seconds"] == 0.75
    assert doc["queue_wait_recent"] == 1 and doc["queue_wait_max"] == 0.75
    assert doc["queue_wait_avg"] == 0.75 and doc["queue_wait_window"] == 10


# == the wait figures ========================================================
def test_wait_window_keeps_totals_and_forgets_old_seconds() -> None:
    waits = WaitWindow(window=10)
    waits.add(0.5, 100.2)
    waits.add(0.1, 100.7)
    waits.add(-1.0, 101.0)  # a clock that stepped back counts as no wait
    recent = waits.recent(101.5)
    assert (recent.count, recent.max) == (3, 0.5)
    assert recent.avg == pytest.approx(0.2)
    assert waits.recent(109.9).count == 3
    assert waits.recent(110.0).count == 1  # second 100 left the window
    assert waits.recent(500.0).count == 0 and waits.recent(500.0).avg == 0.0
    for i in range(1000):
        waits.add(0.01, 200.0 + i)
    assert len(waits._buckets) <= 11  # bounded, however long it runs
    assert waits.count == 1003 and waits.total == pytest.approx(10.6)


def test_expired_requests_count_as_waits() -> None:
    life = make()
    boot(life)
    arrive(life, 1, 1.0)
    arrive(life, 2, 1.0)
    assert len(life.disp.expire_queued(31.5, 30.0)) == 1
    assert life.disp.waits.count == 1 and life.disp.waits.total == 30.5


# == settings ================================================================
@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"workers_min": 2}, "workers_min: 2 given without workers_max"),
        ({"workers_min": 5, "workers_max": 4}, "workers_min: 5 is above workers_max 4"),
        ({"processes": 6, "workers_max": 4}, "processes: 6 is outside workers_min..workers_max"),
        ({"processes": 1, "workers_min": 2, "workers_max": 4}, "an integer from 2 to 4"),
        ({"workers_max": 4, "dispatch": "direct"}, "workers_max: adaptive workers measure"),
        ({"workers_max": 4, "sticky": "conn"}, "workers_max: sticky routing keeps keys"),
    ],
)
def test_bad_worker_ranges_fail_in_one_line(values: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({k: str(v) for k, v in values.items()}, {})
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_the_range_and_the_starting_count() -> None:
    cfg = load({"workers_max": "4"}, {})
    assert cfg.adaptive and cfg.workers == 1 and cfg.fewest_workers == 1
    cfg = load({"workers_min": "2", "workers_max": "4", "processes": "3"}, {})
    assert cfg.workers == 3 and cfg.fewest_workers == 2
    assert load({"workers_min": "2", "workers_max": "4"}, {}).workers == 2
    assert needs_master(cfg) and not Config(processes=0).adaptive
    with pytest.raises(ConfigError) as info:
        load({"workers_idle": "0"}, {})
    assert "for workers_idle; accepted: a number of seconds > 0" in str(info.value)
