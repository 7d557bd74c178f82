"""A worker's one state and its table of allowed moves (supervisor/state.py)."""

from __future__ import annotations

import pytest

from m2gate.supervisor.handoff import Dispatcher
from m2gate.supervisor.state import (
    LEAVING,
    TRANSITIONS,
    IllegalTransition,
    Worker,
    WorkerState,
)

S = WorkerState


def worker(state: WorkerState = S.STARTING) -> Worker:
    return Worker(b"w1", 100, 1, 2, state=state)


def test_every_state_has_a_row_and_only_gone_is_final() -> None:
    assert set(TRANSITIONS) == set(WorkerState)
    assert [s for s, moves in TRANSITIONS.items() if not moves] == [S.GONE]


def test_every_live_state_can_be_killed_and_reaped() -> None:
    for state in WorkerState:
        if state is S.GONE:
            continue
        assert S.GONE in TRANSITIONS[state]
        assert state is S.KILLED or S.KILLED in TRANSITIONS[state]


def test_the_normal_life_reload_or_recycle() -> None:
    w = worker()
    for new in (S.READY, S.RETIRING, S.STOPPING, S.GONE):
        w.to(new)
        assert w.state is new


def test_harakiri_then_kill() -> None:
    w = worker(S.READY)
    w.to(S.DUMPING)
    w.to(S.KILLED)
    w.to(S.GONE)
    assert w.state is S.GONE


@pytest.mark.parametrize(
    ("start", "new"),
    [
        (S.STARTING, S.DUMPING),  # no work yet: nothing to be overdue
        (S.STARTING, S.STOPPING),  # stopping is only for retirees
        (S.RETIRING, S.READY),  # no way back to serving
        (S.KILLED, S.READY),
        (S.DUMPING, S.RETIRING),
        (S.GONE, S.KILLED),
        (S.GONE, S.GONE),
        (S.READY, S.READY),
    ],
)
def test_illegal_moves_raise_and_leave_the_state(start: WorkerState, new: WorkerState) -> None:
    w = worker(start)
    with pytest.raises(IllegalTransition, match="%s -> %s" % (start.name, new.name)):
        w.to(new)
    assert w.state is start


def test_leaving_states_are_the_ones_that_cannot_serve_again() -> None:
    for state in LEAVING:
        assert S.READY not in TRANSITIONS[state]
    assert S.STARTING not in LEAVING and S.READY not in LEAVING


def test_dispatcher_retire_leaves_a_worker_that_is_already_leaving() -> None:
    d = Dispatcher()
    d.add_worker(worker(S.DUMPING))
    d.retire(b"w1")
    assert d.workers[b"w1"].state is S.DUMPING
    d.mark_ready(b"w1")  # only a starting worker becomes ready
    assert d.workers[b"w1"].state is S.DUMPING


def test_dispatcher_moves_starting_to_ready_to_retiring() -> None:
    d = Dispatcher()
    d.add_worker(worker())
    d.mark_ready(b"w1")
    assert d.workers[b"w1"].state is S.READY
    d.retire(b"w1")
    assert d.workers[b"w1"].state is S.RETIRING
    assert [w.wid for w in d.idle_retiring()] == [b"w1"]
