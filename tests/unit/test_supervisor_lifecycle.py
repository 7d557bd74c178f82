"""The master's decisions without processes or sockets (supervisor/lifecycle.py).

Facts go in (ready, done, exited, the clock), actions come out; each test
reads like a short story of a few workers.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from m2gate.config.settings import Config
from m2gate.protocol.peek import peek
from m2gate.supervisor.actions import Action, Dump, Fatal, Kill, Notify, Send, Spawn
from m2gate.supervisor.handoff import Dispatcher, Forward
from m2gate.supervisor.lifecycle import (
    BACKOFF_MAX,
    HARAKIRI_GRACE,
    READY_TIMEOUT,
    Lifecycle,
    backoff,
)
from m2gate.supervisor.state import Worker, WorkerState
from m2gate.supervisor.wire import EXIT_APP_LOAD, READY, STOP

from .helpers import SENDER, message, request_headers

S = WorkerState


def make(**settings: object) -> Lifecycle:
    cfg = Config(**{"processes": 2, "threads": 2, "graceful_timeout": 30.0, **settings})  # type: ignore[arg-type]
    return Lifecycle(cfg, Dispatcher(), pid=42, rand=lambda lo, hi: hi)


def spawned(actions: Sequence[Action]) -> list[Worker]:
    out = []
    for a in actions:
        if isinstance(a, Spawn):
            a.worker.pid = 1000 + a.worker.serial  # what the master's fork does
            out.append(a.worker)
    return out


def kinds(actions: Sequence[Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def notified(actions: Sequence[Action]) -> list[str]:
    return [a.state for a in actions if isinstance(a, Notify)]


def started(life: Lifecycle, now: float = 0.0) -> list[Worker]:
    """The first generation, every worker ready."""
    workers = spawned(life.start(now))
    for w in workers:
        life.on_ready(w, now + 1.0)
    return workers


def give_request(life: Lifecycle, conn_id: int, now: float = 2.0) -> Worker:
    raw = message(request_headers("GET", "/x"), conn_id=conn_id)
    decision = life.disp.assign(peek(raw), raw, now)
    assert isinstance(decision, Forward)
    return life.workers[decision.wid]


# == start-up ================================================================
def test_start_spawns_the_first_generation_starting() -> None:
    life = make(processes=3)
    workers = spawned(life.start(0.0))
    assert [w.wid for w in workers] == [b"w1", b"w2", b"w3"]
    assert {w.generation for w in workers} == {1}
    assert all(w.state is S.STARTING and w.capacity == 2 for w in workers)
    assert set(life.disp.workers) == {b"w1", b"w2", b"w3"}


def test_systemd_hears_ready_once_every_first_worker_is_proven() -> None:
    life = make()
    a, b = spawned(life.start(0.0))
    first = life.on_ready(a, 1.0)
    assert first == [Send(a, READY)]
    assert a.state is S.READY and a.ready_at == 1.0
    second = life.on_ready(b, 2.0)
    assert notified(second) == ["READY=1\nSTATUS=serving\nMAINPID=42"]
    assert life.on_ready(b, 3.0) == []  # a second probe answer changes nothing


def test_max_requests_gets_its_jitter() -> None:
    life = make(max_requests=100, max_requests_jitter=10)
    assert {w.max_requests for w in spawned(life.start(0.0))} == {110}


# == reload ==================================================================
def test_reload_retires_the_old_generation_only_when_all_new_workers_are_ready() -> None:
    life = make()
    old = started(life)
    gen, actions = life.reload("SIGHUP", 10.0)
    new = spawned(actions)
    assert gen == 2 and [w.generation for w in new] == [2, 2]
    assert notified(actions) == ["RELOADING=1"]
    life.on_ready(new[0], 11.0)
    assert all(w.state is S.READY for w in old)  # still serving
    actions = life.on_ready(new[1], 12.5)
    assert all(w.state is S.RETIRING and w.deadline == 42.5 for w in old)
    assert life.generation == 2 and life.pending_gen is None
    assert life.reload_durations == [2.5] and life.reloads == 1
    assert notified(actions) == ["READY=1\nSTATUS=serving generation 2"]


def test_idle_retirees_are_told_to_stop_busy_ones_finish_first() -> None:
    life = make()
    old = started(life)
    busy = give_request(life, 7)
    _, actions = life.reload("x", 10.0)
    for w in spawned(actions):
        life.on_ready(w, 11.0)
    idle = next(w for w in old if w is not busy)
    actions = life.tick(11.0)
    assert actions == [Send(idle, STOP)]
    assert idle.state is S.STOPPING and busy.state is S.RETIRING
    assert life.disp.on_done(busy.wid, (SENDER.decode(), 7), 12.0)
    assert life.tick(12.0) == [Send(busy, STOP)]


def test_a_reload_during_a_reload_runs_after_it() -> None:
    life = make(processes=1)
    started(life)
    gen, first = life.reload("one", 10.0)
    again, nothing = life.reload("two", 10.5)
    assert (gen, again, nothing) == (2, 3, [])
    actions = life.on_ready(spawned(first)[0], 11.0)
    assert life.generation == 2 and life.pending_gen == 3
    assert [w.generation for w in spawned(actions)] == [3]


def test_a_new_worker_dying_unready_aborts_the_reload() -> None:
    life = make()
    old = started(life)
    _, actions = life.reload("x", 10.0)
    good, bad = spawned(actions)
    life.on_ready(good, 11.0)
    actions = life.on_exit(bad, EXIT_APP_LOAD, 12.0)
    assert life.pending_gen is None and life.generation == 1
    assert good.state is S.RETIRING  # it may have served already: it finishes
    assert notified(actions) == ["READY=1\nSTATUS=reload failed"]
    assert all(w.state is S.READY for w in old)
    assert not spawned(actions)
    gen, _ = life.reload("again", 13.0)
    assert gen == 3  # an aborted generation's number is never reused


def test_aborting_kills_new_workers_that_are_not_ready_yet() -> None:
    life = make()
    started(life)
    _, actions = life.reload("x", 10.0)
    first, second = spawned(actions)
    actions = life.on_exit(first, 1, 11.0)
    assert actions[0] == Kill(second) and second.answer == "502 Bad Gateway"
    assert second.state is S.KILLED


def test_reload_while_stopping_does_nothing() -> None:
    life = make()
    started(life)
    life.begin_stop("SIGTERM", 5.0)
    assert life.reload("x", 6.0) == (1, [])


# == recycling ===============================================================
def test_max_requests_starts_the_replacement_first() -> None:
    life = make(processes=1, max_requests=1)
    (old,) = started(life)
    old.requests = 1
    (new,) = spawned(life.on_done(old, 5.0))
    assert new.replaces == old.wid and old.recycling and old.state is S.READY
    assert life.on_done(old, 5.1) == []  # one replacement at a time
    life.on_ready(new, 6.0)
    assert old.state is S.RETIRING and old.replaced
    assert life.restarts == 1
    assert spawned(life.on_exit(old, 0, 7.0)) == []  # retired: not respawned


def test_a_failed_replacement_backs_off_and_the_old_worker_keeps_serving() -> None:
    life = make(processes=1, reload_on_rss=100)
    (old,) = started(life)
    old.rss = 200 * 1024 * 1024
    (new,) = spawned(life.on_heartbeat(old, 5.0))
    assert life.on_exit(new, 1, 6.0) == []
    assert old.state is S.READY and old.recycling == ""
    assert life.recycle_after == 6.0 + backoff(2)
    assert life.on_heartbeat(old, 6.1) == []  # too soon
    assert len(spawned(life.on_heartbeat(old, 6.0 + backoff(2)))) == 1


def test_rss_under_the_limit_changes_nothing() -> None:
    life = make(processes=1, reload_on_rss=100)
    (w,) = started(life)
    w.rss = 99 * 1024 * 1024
    assert life.on_heartbeat(w, 5.0) == []


def test_no_recycling_during_a_reload() -> None:
    life = make(processes=1, max_requests=1)
    (w,) = started(life)
    life.reload("x", 5.0)
    w.requests = 1
    assert life.on_done(w, 5.5) == []


# == harakiri and timeouts ===================================================
def test_harakiri_dumps_tracebacks_then_kills_with_504() -> None:
    life = make(processes=1, harakiri=5.0)
    (w,) = started(life)
    give_request(life, 3, now=2.0)
    overdue = life.disp.overdue(8.0, 5.0)
    actions = life.tick(8.0, overdue=overdue)
    assert isinstance(actions[0], Dump) and actions[0].worker is w
    assert len(spawned(actions)) == 1  # a replacement at once
    assert w.state is S.DUMPING and w.answer == "504 Gateway Timeout"
    assert life.harakiri_count == 1
    assert not any(isinstance(a, Kill) for a in life.tick(8.0 + HARAKIRI_GRACE / 2))
    assert Kill(w) in life.tick(8.0 + HARAKIRI_GRACE)
    assert w.state is S.KILLED and w.answer == "504 Gateway Timeout"
    assert spawned(life.on_exit(w, -9, 9.0)) == []  # its replacement exists already


def test_a_dumping_worker_is_not_dumped_again() -> None:
    life = make(processes=1, harakiri=5.0)
    started(life)
    give_request(life, 3, now=2.0)
    life.tick(8.0, overdue=life.disp.overdue(8.0, 5.0))
    again = life.tick(8.1, overdue=life.disp.overdue(8.1, 5.0))
    assert not any(isinstance(a, Dump) for a in again) and life.harakiri_count == 1


def test_a_retiree_still_busy_after_the_graceful_timeout_is_killed_with_503() -> None:
    life = make(processes=1, graceful_timeout=3.0)
    (old,) = started(life)
    give_request(life, 3)
    _, actions = life.reload("x", 10.0)
    life.on_ready(spawned(actions)[0], 11.0)
    assert life.tick(14.0) == []
    assert life.tick(14.01) == [Kill(old)]
    assert old.answer == "503 Service Unavailable"


def test_an_unready_worker_is_killed_only_once_mongrel2_answers_the_master() -> None:
    life = make(processes=1)
    (w,) = spawned(life.start(0.0))
    assert life.tick(READY_TIMEOUT + 1, pub_ready_at=None) == []
    assert life.tick(READY_TIMEOUT + 1, pub_ready_at=5.0) == []  # counted from 5.0
    assert life.tick(READY_TIMEOUT + 5.1, pub_ready_at=5.0) == [Kill(w)]
    assert w.answer == "502 Bad Gateway"


# == crashes =================================================================
def test_a_ready_worker_that_crashes_is_replaced_at_once() -> None:
    life = make()
    a, _ = started(life)
    (new,) = spawned(life.on_exit(a, -11, 5.0))
    assert new.generation == 1 and life.restarts == 1 and a.state is S.GONE
    assert a.wid not in life.workers


def test_workers_dying_unready_restart_with_exponential_back_off() -> None:
    life = make(processes=1)
    (w,) = spawned(life.start(0.0))
    now = 1.0
    for failures in (1, 2, 3):
        assert life.on_exit(w, 1, now) == []
        delay = backoff(failures)
        assert life.tick(now + delay - 0.01) == []
        (w,) = spawned(life.tick(now + delay))
        now += delay + 1.0
    assert [backoff(n) for n in (1, 2, 3)] == [0.1, 0.2, 0.4]
    assert backoff(100) == BACKOFF_MAX
    life.on_ready(w, now)
    assert life.failures == 0  # reset once the first generation serves


def test_an_app_that_cannot_load_while_nothing_serves_stops_the_master() -> None:
    life = make(processes=1)
    (w,) = spawned(life.start(0.0))
    w.fatal = "app x: ImportError: no module y"
    actions = life.on_exit(w, EXIT_APP_LOAD, 1.0)
    assert Fatal("app x: ImportError: no module y") in actions
    assert life.exit_code == EXIT_APP_LOAD and life.stopping
    assert life.done


def test_an_app_load_failure_while_others_serve_only_backs_off() -> None:
    life = make()
    a, _ = started(life)
    (new,) = spawned(life.on_exit(a, -9, 5.0))
    assert life.on_exit(new, EXIT_APP_LOAD, 6.0) == []
    assert not life.stopping and life.respawn_at == [(6.0 + backoff(1), 1)]


# == stop ====================================================================
def test_stop_kills_the_unready_retires_the_idle_and_waits_for_the_busy() -> None:
    life = make(processes=3, graceful_timeout=10.0)
    workers = spawned(life.start(0.0))
    first, second, unready = workers
    life.on_ready(first, 1.0)
    life.on_ready(second, 1.0)
    busy = give_request(life, 5)
    idle = second if busy is first else first
    actions = life.begin_stop("SIGTERM", 2.0)
    assert notified(actions) == ["STOPPING=1"] and Kill(unready) in actions
    assert unready.answer == "503 Service Unavailable"
    assert life.begin_stop("again", 2.5) == []
    actions = life.tick(3.0)
    assert actions == [Send(idle, STOP)]
    assert busy.state is S.RETIRING and idle.state is S.STOPPING
    for w in workers:
        assert spawned(life.on_exit(w, 0, 4.0)) == []  # nothing restarts while stopping
    assert life.done


def test_the_graceful_timeout_forces_the_stop() -> None:
    life = make(processes=1, graceful_timeout=10.0)
    (w,) = started(life)
    give_request(life, 5)
    life.begin_stop("SIGTERM", 2.0)
    life.tick(3.0)
    actions = life.tick(12.5)
    assert Kill(w) in actions and life.forced and life.exit_code == 0


def test_a_second_signal_forces_the_stop_with_exit_code_1() -> None:
    life = make(processes=1)
    (w,) = started(life)
    life.begin_stop("SIGTERM", 2.0)
    assert life.force_stop(by_signal=True) == [Kill(w)]
    assert life.exit_code == 1 and w.state is S.KILLED
    assert life.force_stop(by_signal=True) == []  # killed once


def test_stop_cancels_pending_respawns() -> None:
    life = make(processes=1)
    (w,) = spawned(life.start(0.0))
    life.on_exit(w, 1, 1.0)
    assert life.respawn_at
    life.begin_stop("SIGTERM", 1.01)
    assert spawned(life.tick(5.0)) == []


@pytest.mark.parametrize("code", [0, 1, -9])
def test_every_exit_leaves_the_worker_gone(code: int) -> None:
    life = make(processes=1)
    (w,) = started(life)
    life.on_exit(w, code, 5.0)
    assert w.state is S.GONE
