"""The master's hand-off policy (no sockets): who gets which message, what is in flight."""

from __future__ import annotations

from collections import deque

from m2gate.protocol.peek import Peeked, peek
from m2gate.supervisor.handoff import (
    Dispatcher,
    Drop,
    Forward,
    Hold,
    Reject,
    RoundRobin,
    make_dispatcher,
)
from m2gate.supervisor.state import Worker

from .helpers import SENDER, control, message, request_headers

KEY_SENDER = SENDER.decode()


def req(conn_id: int, **extra: str) -> tuple[Peeked, bytes]:
    raw = message(request_headers("GET", "/x", **extra), conn_id=conn_id)
    return peek(raw), raw


def notice(kind: str, conn_id: int, **extra: str) -> tuple[Peeked, bytes]:
    raw = control(kind, conn_id=conn_id, **extra)
    return peek(raw), raw


def dispatcher(
    *capacities: int, prefetch: int = 0, queue_size: int = 100, mode: str = "idle"
) -> Dispatcher:
    d = make_dispatcher(mode, queue_size, prefetch)
    for i, cap in enumerate(capacities):
        d.add_worker(Worker(b"w%d" % i, 1000 + i, 1, cap))
        d.mark_ready(b"w%d" % i)
    return d


def assign(d: Dispatcher, pair: tuple[Peeked, bytes], now: float = 0.0) -> object:
    return d.assign(pair[0], pair[1], now)


def test_nothing_goes_to_a_worker_before_it_is_ready() -> None:
    d = Dispatcher()
    d.add_worker(Worker(b"w0", 1, 1, 4))
    assert assign(d, req(1)) == Hold()
    d.mark_ready(b"w0")
    assert [(wid, q.key[1]) for wid, q in d.dispatch_queued(1.0)] == [(b"w0", 1)]


def test_least_loaded_worker_gets_new_work() -> None:
    d = dispatcher(2, 2)
    targets = [assign(d, req(c)) for c in range(1, 5)]
    assert sorted(t.wid for t in targets if isinstance(t, Forward)) == [b"w0", b"w0", b"w1", b"w1"]
    assert assign(d, req(5)) == Hold()  # every thread busy: wait in the master


def test_prefetch_only_when_no_thread_is_free() -> None:
    d = dispatcher(1, 1, prefetch=1)
    first = {assign(d, req(1)), assign(d, req(2))}
    assert first == {Forward(b"w0"), Forward(b"w1")}
    assert isinstance(assign(d, req(3)), Forward)  # a queue slot, now that threads are busy
    assert isinstance(assign(d, req(4)), Forward)
    assert assign(d, req(5)) == Hold()


def test_pipelined_requests_and_notices_follow_the_connection() -> None:
    d = dispatcher(1, 1)
    target = assign(d, req(7))
    assert isinstance(target, Forward)
    assert assign(d, req(7)) == target  # pipelined: same worker, even when it is full
    assert assign(d, notice("credits", 7, DOWNLOAD_CREDITS="100")) == target
    assert assign(d, notice("disconnect", 7)) == target
    assert d.workers[target.wid].pending == 2


def test_done_frees_the_thread_and_starts_the_pipelined_clock() -> None:
    d = dispatcher(1)
    assign(d, req(7), now=0.0)
    assign(d, req(7), now=0.5)
    assert d.on_done(b"w0", (KEY_SENDER, 7), now=2.0)
    w = d.workers[b"w0"]
    assert w.requests == 1 and w.last_time == 2.0
    assert [e.started for e in w.entries()] == [2.0]  # the queued one starts now
    assert d.overdue(2.5, 1.0) == []
    assert d.on_done(b"w0", (KEY_SENDER, 7), now=3.0)
    assert w.inflight == {} and d.owner == {}
    assert not d.on_done(b"w0", (KEY_SENDER, 7), now=3.0)  # unknown: ignored


def test_notices_for_idle_connections_reach_the_last_worker() -> None:
    d = dispatcher(1, 1)
    target = assign(d, req(9))
    assert isinstance(target, Forward)
    d.on_done(target.wid, (KEY_SENDER, 9), 1.0)
    assert assign(d, notice("credits", 9, DOWNLOAD_CREDITS="5")) == target
    assert assign(d, notice("disconnect", 9)) == target
    assert assign(d, notice("disconnect", 9)) == Drop()  # forgotten after the disconnect
    assert assign(d, notice("disconnect", 12345)) == Drop()  # never seen


def test_queue_keeps_order_per_connection_and_rejects_when_full() -> None:
    d = dispatcher(1, queue_size=2)
    assign(d, req(1))
    assert assign(d, req(2)) == Hold()
    assert assign(d, req(3)) == Hold()
    assert assign(d, req(4)) == Reject()
    d.on_done(b"w0", (KEY_SENDER, 1), 1.0)
    out = d.dispatch_queued(1.0)
    assert [q.key[1] for _, q in out] == [2]


def test_disconnect_forgets_queued_requests() -> None:
    d = dispatcher(1)
    assign(d, req(1))
    assign(d, req(2))
    assert assign(d, notice("disconnect", 2)) == Drop()
    assert len(d.queue) == 0


def test_retiring_worker_keeps_its_connections_but_gets_no_new_ones() -> None:
    d = dispatcher(2, 2)
    assign(d, req(1))  # w0
    d.retire(b"w0")
    assert assign(d, req(1)) == Forward(b"w0")  # pipelined on its connection
    assert assign(d, req(2)) == Forward(b"w1")
    assert assign(d, req(3)) == Forward(b"w1")
    assert d.idle_retiring() == []
    d.on_done(b"w0", (KEY_SENDER, 1), 1.0)
    d.on_done(b"w0", (KEY_SENDER, 1), 1.0)
    assert [w.wid for w in d.idle_retiring()] == [b"w0"]


def test_removed_worker_returns_what_it_had_in_flight() -> None:
    d = dispatcher(2)
    assign(d, req(1))
    assign(d, req(1))
    assign(d, req(2))
    lost = d.remove_worker(b"w0")
    assert sorted(e.key[1] for e in lost) == [1, 1, 2]
    assert d.owner == {}
    assert assign(d, req(3)) == Hold()


def test_overdue_reports_requests_past_the_limit() -> None:
    d = dispatcher(2)
    assign(d, req(1), now=0.0)
    assign(d, req(2), now=5.0)
    assert [e.key[1] for _, e in d.overdue(6.0, 3.0)] == [1]


def test_unroute_undoes_a_failed_send() -> None:
    d = dispatcher(1)
    assign(d, req(1))
    d.unroute(b"w0", (KEY_SENDER, 1))
    assert d.owner == {} and d.workers[b"w0"].inflight == {}


def test_upload_done_completes_the_upload_in_flight_without_a_new_entry() -> None:
    d = dispatcher(1)
    start = {"x-mongrel2-upload-start": "/tmp/up.1"}
    done = {**start, "x-mongrel2-upload-done": "/tmp/up.1"}
    first = assign(d, req(3, **start))
    assert assign(d, req(3, **done)) == first
    assert d.workers[b"w0"].pending == 1
    # Queued behind a busy worker, the pair still counts once.
    d2 = dispatcher(1)
    assign(d2, req(1))
    assert assign(d2, req(3, **start)) == Hold()
    assert assign(d2, req(3, **done)) == Hold()
    d2.on_done(b"w0", (KEY_SENDER, 1), 1.0)
    assert [q.key[1] for _, q in d2.dispatch_queued(1.0)] == [3, 3]
    assert d2.workers[b"w0"].pending == 1


# -- round-robin --------------------------------------------------------------------


def test_the_dispatch_setting_picks_the_policy() -> None:
    assert type(make_dispatcher("idle")) is Dispatcher
    assert type(make_dispatcher("round-robin")) is RoundRobin
    assert type(make_dispatcher("direct")) is Dispatcher  # routes nothing: the master pulls none


def test_round_robin_takes_turns_whatever_the_load() -> None:
    d = dispatcher(1, 1, 1, mode="round-robin")
    targets = [assign(d, req(c)) for c in range(1, 8)]
    assert [t.wid for t in targets if isinstance(t, Forward)] == [
        b"w0", b"w1", b"w2", b"w0", b"w1", b"w2", b"w0",
    ]  # fmt: skip
    # Each worker has one thread, yet nothing waits in the master: it queues in them.
    assert d.queue == deque()
    assert [d.workers[b"w%d" % i].pending for i in range(3)] == [3, 2, 2]


def test_round_robin_puts_a_fast_request_behind_a_slow_one_where_idle_would_not() -> None:
    rr, idle = dispatcher(1, 1, mode="round-robin"), dispatcher(1, 1)
    for d in (rr, idle):
        slow, other = assign(d, req(1)), assign(d, req(2))
        assert isinstance(slow, Forward) and isinstance(other, Forward)
        d.on_done(other.wid, (KEY_SENDER, 2), 1.0)  # the fast one is done, the slow one runs
    # The next request: round-robin's turn is the busy worker, idle picks the free one.
    assert assign(rr, req(3)) == Forward(b"w0")
    assert rr.workers[b"w0"].load == 2
    assert assign(idle, req(3)) == Forward(b"w1")


def test_round_robin_skips_workers_not_ready_and_holds_only_with_none() -> None:
    d = make_dispatcher("round-robin", 100)
    d.add_worker(Worker(b"w0", 1, 1, 1))
    assert assign(d, req(1)) == Hold()  # nothing is ready: the master keeps it
    d.add_worker(Worker(b"w1", 2, 1, 1))
    d.mark_ready(b"w1")
    assert [(wid, q.key[1]) for wid, q in d.dispatch_queued(1.0)] == [(b"w1", 1)]
    d.retire(b"w1")
    d.mark_ready(b"w0")
    assert [assign(d, req(c)) for c in (2, 3)] == [Forward(b"w0"), Forward(b"w0")]


def test_round_robin_keeps_connections_and_in_flight_accounting() -> None:
    d = dispatcher(1, 1, mode="round-robin")
    first = assign(d, req(5))
    assert isinstance(first, Forward)
    assert assign(d, req(5)) == first  # pipelined: the same worker, not the next in turn
    assert assign(d, notice("disconnect", 5)) == first
    lost = d.remove_worker(first.wid)  # it died: the master answers both
    assert [e.key[1] for e in lost] == [5, 5]


def test_a_new_ready_worker_gets_the_next_turn() -> None:
    d = dispatcher(1, 1, mode="round-robin")
    assign(d, req(1))
    assign(d, req(2))
    d.add_worker(Worker(b"w9", 9, 2, 1))
    d.mark_ready(b"w9")
    assert assign(d, req(3)) == Forward(b"w9")
    assert assign(d, req(4)) == Forward(b"w0")


# -- adaptive prefetch: a busy worker's queue slots follow its pace ----------


def _busy_worker_serving(d: Dispatcher, gap: float, rounds: int) -> Worker:
    """One thread, kept busy: a request every ``gap`` seconds is done and replaced."""
    w = d.workers[b"w0"]
    now, conn = 1.0, 1
    assign(d, req(conn), now)
    for _ in range(rounds):
        conn += 1
        d.assign(*req(conn), now)  # waits in a slot or in the master: the thread stays busy
        now += gap
        first = next(iter(w.inflight))
        d.on_done(b"w0", first, now)
        d.dispatch_queued(now)
    return w


def test_quick_requests_earn_a_busy_worker_every_slot() -> None:
    d = dispatcher(1, prefetch=16)
    w = _busy_worker_serving(d, 0.0001, 200)  # 0.1 ms each: 50 fit in 5 ms
    assert w.room == 16 and d.slots(w) == 16


def test_slow_requests_leave_a_busy_worker_no_slot() -> None:
    d = dispatcher(1, prefetch=16)
    w = _busy_worker_serving(d, 0.02, 100)  # 20 ms each: none fits in 5 ms
    assert w.room == 0


def test_room_is_what_fits_in_the_wait_budget() -> None:
    d = dispatcher(1, prefetch=16)
    w = _busy_worker_serving(d, 0.001, 400)  # 1 ms each: about 5 fit
    assert 3 <= w.room <= 6


def test_no_slot_behind_a_request_that_runs_long() -> None:
    """A quick worker whose oldest request has run for 50 ms gets nothing queued behind it."""
    d = dispatcher(1, 1, prefetch=16)
    for w in d.workers.values():
        w.room, w.gap = 16, 0.0001
    assert isinstance(assign(d, req(1), 0.0), Forward)
    assert isinstance(assign(d, req(2), 0.0), Forward)  # both threads busy now
    assert isinstance(assign(d, req(3), 0.001), Forward)  # young requests: a slot
    assert isinstance(assign(d, req(4), 0.001), Forward)
    assert assign(d, req(5), 0.05) == Hold()  # both have run 50 ms: wait in the master


def test_a_thread_gone_idle_does_not_count_its_idle_time_as_pace() -> None:
    d = dispatcher(2, prefetch=16)
    w = d.workers[b"w0"]
    w.room, w.gap = 16, 0.0001
    assign(d, req(1), 0.0)
    d.on_done(b"w0", (KEY_SENDER, 1), 0.001)  # not busy (one of two threads): no pace
    assert w.last_done == 0.0 and w.room == 16
    assign(d, req(2), 10.0)
    assign(d, req(3), 10.0)
    d.on_done(b"w0", (KEY_SENDER, 2), 10.0001)
    d.on_done(b"w0", (KEY_SENDER, 3), 10.0002)  # the gap is 0.1 ms, not 10 s
    assert w.room == 16
