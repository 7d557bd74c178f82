"""Sticky routing without sockets: the ring, the cookie helper, the dispatcher's hooks, slots."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from m2gate.config.declare import ConfigError
from m2gate.config.loader import load
from m2gate.config.settings import Config
from m2gate.protocol.cookies import MAX_VALUE, cookie_value, find_cookie
from m2gate.protocol.messages import parse_message
from m2gate.protocol.peek import Peeked, peek
from m2gate.supervisor.handoff import Dispatcher, Forward, Hold, Reject
from m2gate.supervisor.lifecycle import Lifecycle
from m2gate.supervisor.state import InFlight, Worker, WorkerState
from m2gate.supervisor.sticky import Ring, Sticky, target

from .helpers import SENDER, control, message, request_headers
from .test_cli_errors import SPEC, one_line_error, run

CORPUS = Path(__file__).resolve().parent.parent / "corpus"
KEY_SENDER = SENDER.decode()


# == the ring ===================================================================
def test_ring_is_stable_and_spreads_keys_over_every_slot() -> None:
    ring = Ring(3)
    keys = [b"key %d" % i for i in range(6000)]
    slots = [ring.slot(k) for k in keys]
    assert slots == [Ring(3).slot(k) for k in keys]  # the same in any process or run
    counts = Counter(slots)
    assert set(counts) == {0, 1, 2}
    assert all(1200 < n < 2800 for n in counts.values()), counts


@pytest.mark.parametrize(("before", "after"), [(3, 4), (4, 3), (8, 9)])
def test_a_changed_slot_count_moves_only_about_one_key_in_n(before: int, after: int) -> None:
    old, new = Ring(before), Ring(after)
    keys = [b"sid-%d" % i for i in range(6000)]
    moved = [k for k in keys if old.slot(k) != new.slot(k)]
    bigger = max(before, after)
    assert 0 < len(moved) < 2 * len(keys) / bigger
    # Growing moves keys only onto the new slot; shrinking only off the removed one.
    if after > before:
        assert {new.slot(k) for k in moved} == {after - 1}
    else:
        assert {old.slot(k) for k in moved} == {before - 1}


def test_ring_needs_a_slot() -> None:
    with pytest.raises(ValueError):
        Ring(0)


# == one cookie's value =============================================================
@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"sid=abc", b"abc"),
        (b"a=1; sid=abc; b=2", b"abc"),
        (b"a=1;sid=abc", b"abc"),
        (b'sid="quoted"', b"quoted"),
        (b"sid=first; sid=second", b"first"),
        (b"xsid=no; sidx=no", None),
        (b"sid=", None),
        (b"sid", None),
        (b";;;=;", None),
        (b"", None),
        (b"sid=" + b"v" * (MAX_VALUE + 1), None),
        (b"a=" + b"x" * 20000 + b"; sid=late", None),  # past the searched prefix
    ],
)
def test_find_cookie(header: bytes, expected: bytes | None) -> None:
    assert find_cookie(header, b"sid") == expected


@pytest.mark.usefixtures("both_codecs")
@pytest.mark.parametrize("json_headers", [False, True])
def test_cookie_value_in_both_handler_protocols(json_headers: bool) -> None:
    def msg(**extra: str | list[str]) -> bytes:
        return message(request_headers("GET", "/x", **extra), json=json_headers)

    assert cookie_value(msg(cookie="a=1; sid=s1"), b"sid") == b"s1"
    assert cookie_value(msg(cookie=["a=1", "sid=s2"]), b"sid") == b"s2"  # repeated header
    assert cookie_value(msg(), b"sid") is None
    assert cookie_value(msg(cookie="other=1"), b"sid") is None
    raw = msg(cookie="sid=s3")
    assert cookie_value(raw, b"sid", parse_message(raw)) == b"s3"  # already parsed: its headers
    # peek's answer is what the dispatcher passes: the same value either way
    assert cookie_value(raw, b"sid", peek(raw)[5]) == b"s3"


@pytest.mark.usefixtures("both_codecs")
@pytest.mark.parametrize("name", ["tnetstring_headers_repeated", "json_headers_repeated"])
def test_cookie_value_in_captured_messages(name: str) -> None:
    raw = (CORPUS / ("%s.bin" % name)).read_bytes()
    assert cookie_value(raw, b"a") == b"1"  # Mongrel2 passed two Cookie headers as a list
    assert cookie_value(raw, b"b") == b"2"
    assert cookie_value(raw, b"c") is None


@pytest.mark.usefixtures("both_codecs")
def test_every_captured_message_is_safe_to_search() -> None:
    index = json.loads((CORPUS / "index.json").read_text("utf-8"))["messages"]
    for entry in index:
        raw = (CORPUS / ("%s.bin" % entry["name"])).read_bytes()
        assert cookie_value(raw, b"sid") is None, entry["name"]


@pytest.mark.usefixtures("both_codecs")
def test_hostile_input_gives_no_stickiness_never_an_exception() -> None:
    good = message(request_headers("GET", "/x", cookie="sid=abc"))
    good_json = message(request_headers("GET", "/x", cookie="sid=abc"), json=True)
    rng = random.Random(11)
    cases = [
        b"",
        b"   ",
        b"x 1 / ",
        b"x 1 / 99999999999:",
        b"x 1 / 5:abc}",
        b"x 1 / 3:{}},0:,",
        b"x 1 / 2:[],0:,",  # JSON, not an object
        b'x 1 / 13:{"cookie":1},0:,',  # not a string
        b'x 1 / 14:{"cookie":[1]},0:,',
        message(b"13:6:cookie,1:1#}"),  # a number where a string was expected
        message(b"1" * 200),
    ]
    for base in (good, good_json):
        cases += [base[:n] for n in range(0, len(base), 7)]  # every truncation
        for _ in range(300):
            data = bytearray(base)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            cases.append(bytes(data))
    for raw in cases:
        value = cookie_value(raw, b"sid")
        assert value is None or isinstance(value, bytes)
    assert cookie_value(good, b"sid") == b"abc"
    assert cookie_value(good_json, b"sid") == b"abc"


# == the dispatcher with sticky routing ================================================
def req(conn_id: int, **extra: str) -> tuple[Peeked, bytes]:
    raw = message(request_headers("GET", "/x", **extra), conn_id=conn_id)
    return peek(raw), raw


def sticky_dispatcher(
    mode: str, *capacities: int, prefetch: int = 0, queue_size: int = 100, cookie: str = "sid"
) -> Dispatcher:
    d = Dispatcher(queue_size, prefetch)
    d.sticky = Sticky(mode, cookie, len(capacities))
    for i, cap in enumerate(capacities):
        d.add_worker(Worker(b"w%d" % i, 1000 + i, 1, cap, slot=i))
        d.mark_ready(b"w%d" % i)
    return d


def slot_of_conn(d: Dispatcher, conn_id: int) -> int:
    assert d.sticky is not None
    return d.sticky.ring.slot(b"%s %d" % (SENDER, conn_id))


def conns_by_slot(d: Dispatcher, n: int = 200) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for c in range(1, n):
        out.setdefault(slot_of_conn(d, c), []).append(c)
    return out


def wid(decision: object) -> bytes:
    assert isinstance(decision, Forward), decision
    return decision.wid


def test_conn_mode_keeps_a_keep_alive_connection_on_its_slot() -> None:
    d = sticky_dispatcher("conn", 40, 40, 40)
    served = set()
    for i in range(10):  # one request at a time, each answered: an idle keep-alive connection
        pair = req(5)
        served.add(wid(d.assign(pair[0], pair[1], float(i))))
        assert d.on_done(next(iter(served)), (KEY_SENDER, 5), float(i))
    assert served == {b"w%d" % slot_of_conn(d, 5)}
    spread = {wid(d.assign(*req(c), 0.0)) for c in range(100, 130)}
    assert spread == {b"w0", b"w1", b"w2"}  # separate connections use every worker


def test_a_busy_target_holds_its_request_without_blocking_other_slots() -> None:
    d = sticky_dispatcher("conn", 1, 1)
    by_slot = conns_by_slot(d)
    a1, a2, a3 = by_slot[0][:3]
    b1, b2 = by_slot[1][:2]
    assert wid(d.assign(*req(a1), 0.0)) == b"w0"
    assert d.assign(*req(a2), 1.0) == Hold()  # w0 is busy: a2 waits for it
    assert d.assign(*req(a3), 1.5) == Hold()
    assert wid(d.assign(*req(b1), 2.0)) == b"w1"  # not held up behind a2
    assert d.assign(*req(b2), 2.5) == Hold()
    assert d.dispatch_queued(3.0) == []  # nobody has room
    assert d.on_done(b"w1", (KEY_SENDER, b1), 4.0)
    assert [(w, q.key[1]) for w, q in d.dispatch_queued(4.0)] == [(b"w1", b2)]
    assert d.on_done(b"w0", (KEY_SENDER, a1), 5.0)
    assert [(w, q.key[1]) for w, q in d.dispatch_queued(5.0)] == [(b"w0", a2)]
    assert d.waiting.count == 1 and len(d.queue) == 0


def test_a_pipelined_request_waits_behind_its_connection_and_follows_it() -> None:
    d = sticky_dispatcher("conn", 1, 1)
    a, other = conns_by_slot(d)[0][:2]
    assert wid(d.assign(*req(other), 0.0)) == b"w0"
    assert d.assign(*req(a), 1.0) == Hold()
    assert d.assign(*req(a), 1.1) == Hold()  # pipelined behind it, same FIFO
    assert d.on_done(b"w0", (KEY_SENDER, other), 2.0)
    out = d.dispatch_queued(2.0)
    assert [(w, q.key[1]) for w, q in out] == [(b"w0", a), (b"w0", a)]
    assert len(d.workers[b"w0"].inflight[(KEY_SENDER, a)]) == 2
    assert d.waiting.count == 0 and not d._queued_keys


def test_waiting_requests_expire_are_dropped_on_disconnect_and_count_in_the_queue_size() -> None:
    d = sticky_dispatcher("conn", 1, 1, queue_size=3)
    a = conns_by_slot(d)[0]
    assert wid(d.assign(*req(a[0]), 0.0)) == b"w0"
    assert d.assign(*req(a[1]), 1.0) == Hold()
    assert d.assign(*req(a[2]), 2.0) == Hold()
    assert d.assign(*req(a[3]), 3.0) == Hold()
    assert d.assign(*req(a[4]), 3.0) == Reject()  # three wait: the queue is full
    raw = control("disconnect", conn_id=a[2])
    d.assign(peek(raw), raw, 3.5)
    assert [q.key[1] for q in d.waiting] == [a[1], a[3]]
    assert [q.key[1] for q in d.expire_queued(10.0, 8.5)] == [a[1]]
    assert [q.key[1] for q in d.expire_queued(10.0, -1.0)] == [a[3]]
    assert d.waiting.count == 0 and not d._queued_keys


def test_a_slot_without_a_ready_worker_waits_for_it_instead_of_moving() -> None:
    d = sticky_dispatcher("conn", 4, 4)
    a = conns_by_slot(d)[0][0]
    d.remove_worker(b"w0")  # died: its replacement starts in the same slot
    assert d.assign(*req(a), 0.0) == Hold()
    assert d.dispatch_queued(1.0) == []  # w1 is free, but it is not a's worker
    d.add_worker(Worker(b"w9", 1009, 1, 4, slot=0))
    assert d.dispatch_queued(1.5) == []  # starting: not ready yet
    d.mark_ready(b"w9")
    assert [(w, q.key[1]) for w, q in d.dispatch_queued(2.0)] == [(b"w9", a)]


def test_during_a_reload_the_slot_newest_ready_worker_is_the_target() -> None:
    d = sticky_dispatcher("conn", 4, 4)
    a = conns_by_slot(d)[0][0]
    new = Worker(b"n0", 2000, 2, 4, slot=0)
    d.add_worker(new)
    assert target(d.workers.values(), 0) is d.workers[b"w0"]  # new one not ready yet
    d.mark_ready(b"n0")
    assert target(d.workers.values(), 0) is new
    assert wid(d.assign(*req(a), 0.0)) == b"n0"
    d.retire(b"w0")
    assert target(d.workers.values(), 0) is new


def test_cookie_mode_routes_by_value_and_leaves_the_rest_to_idle_dispatch() -> None:
    d = sticky_dispatcher("cookie", 8, 8, 8)
    assert d.sticky is not None
    values = ["user-%d" % i for i in range(30)]
    for conn_id, value in enumerate(values * 3, 1):  # each value over three connections
        got = wid(d.assign(*req(conn_id, cookie="theme=x; sid=%s" % value), 0.0))
        assert got == b"w%d" % d.sticky.ring.slot(value.encode())
        assert d.on_done(got, (KEY_SENDER, conn_id), 0.0)
    assert len({d.sticky.ring.slot(v.encode()) for v in values}) == 3
    # Without the cookie: least loaded, as without sticky routing.
    first = wid(d.assign(*req(500), 0.0))
    second = wid(d.assign(*req(501, cookie="theme=x"), 0.0))
    assert first != second


def test_cookie_mode_keeps_a_connection_with_a_waiting_request_in_order() -> None:
    d = sticky_dispatcher("cookie", 1, 1)
    assert d.sticky is not None
    value = next(v for v in ("a", "b", "c", "d", "e", "f") if d.sticky.ring.slot(v.encode()) == 0)
    assert wid(d.assign(*req(1, cookie="sid=" + value), 0.0)) == b"w0"
    assert d.assign(*req(2, cookie="sid=" + value), 1.0) == Hold()
    assert d.assign(*req(2), 1.1) == Hold()  # no cookie, but behind its connection's request
    assert d.waiting.count == 2 and not d.queue
    assert d.on_done(b"w0", (KEY_SENDER, 1), 2.0)
    assert [(w, q.key[1]) for w, q in d.dispatch_queued(2.0)] == [(b"w0", 2), (b"w0", 2)]


def test_reset_frontend_drops_waiting_requests() -> None:
    d = sticky_dispatcher("conn", 1)
    assert wid(d.assign(*req(1), 0.0)) == b"w0"
    assert d.assign(*req(2), 0.0) == Hold()
    assert d.reset_frontend() == 1
    assert d.waiting.count == 0 and not d._queued_keys


# == slots in the life cycle ============================================================
def lifecycle(workers: int = 3) -> Lifecycle:
    cfg = Config(processes=workers, sticky="conn")
    d = Dispatcher()
    return Lifecycle(cfg, d)


def ready_all(life: Lifecycle, now: float) -> None:
    for w in list(life.workers.values()):
        if w.ready_at is None and w.state is WorkerState.STARTING:
            w.pid = w.pid or 10000 + w.serial
            life.on_ready(w, now)


def slots(life: Lifecycle, generation: int) -> list[int]:
    return sorted(
        w.slot
        for w in life.workers.values()
        if w.generation == generation and w.state in (WorkerState.STARTING, WorkerState.READY)
    )


def test_each_generation_fills_slots_and_replacements_inherit_theirs() -> None:
    life = lifecycle(3)
    life.start(0.0)
    assert slots(life, 1) == [0, 1, 2]
    ready_all(life, 1.0)
    by_slot = {w.slot: w for w in life.workers.values()}
    life.on_exit(by_slot[1], -9, 2.0)  # crashed: its replacement takes slot 1
    assert slots(life, 1) == [0, 1, 2]
    ready_all(life, 3.0)
    w2 = next(w for w in life.workers.values() if w.slot == 2)
    life._recycle(w2, "test", 4.0)  # recycling: the replacement takes slot 2 too
    twos = [w for w in life.workers.values() if w.slot == 2]
    assert len(twos) == 2 and all(w.generation == 1 for w in twos)
    ready_all(life, 5.0)
    life.reload("test", 6.0)
    assert slots(life, 2) == [0, 1, 2]


def test_a_harakiri_replacement_takes_the_killed_worker_slot() -> None:
    life = lifecycle(2)
    life.start(0.0)
    ready_all(life, 1.0)
    victim = next(w for w in life.workers.values() if w.slot == 0)
    life._harakiri(victim, InFlight((KEY_SENDER, 1), 0.0, False), 2.0)
    fresh = [w for w in life.workers.values() if w.state is WorkerState.STARTING]
    assert [w.slot for w in fresh] == [0]


# == settings ========================================================================
def test_sticky_cookie_implies_cookie_mode() -> None:
    assert load({"sticky_cookie": "sid"}, environ={}).sticky == "cookie"
    assert load({}, environ={"M2GATE_STICKY_COOKIE": "sid"}).sticky == "cookie"
    assert load({"sticky": "conn"}, environ={}).sticky_cookie == ""
    assert Config().sticky == "none"


@pytest.mark.parametrize(
    ("cli", "expected"),
    [
        ({"sticky": "cookie"}, "sticky: cookie needs the cookie's name"),
        ({"sticky": "conn", "sticky_cookie": "sid"}, "sticky_cookie: given with sticky=conn"),
        ({"sticky": "sometimes"}, "one of none, conn, cookie"),
        ({"sticky_cookie": "bad name;"}, "sticky_cookie"),
    ],
)
def test_bad_sticky_settings(cli: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        load(cli, environ={})


def test_bad_sticky_settings_are_one_line_at_start_up() -> None:
    line = one_line_error(run("serve", "app:x", "-p", "2", "--sticky", "cookie", *SPEC))
    assert "--sticky-cookie NAME" in line
    line = one_line_error(run("serve", "app:x", "--sticky-cookie", "a b", *SPEC))
    assert "sticky_cookie" in line and "RFC 6265" in line


def test_the_policy_follows_the_settings() -> None:
    assert Sticky.from_config(Config(processes=3)) is None
    conn = Sticky.from_config(Config(processes=3, sticky="conn"))
    assert conn is not None and conn.conn and conn.ring.slots == 3
    cookie = Sticky.from_config(Config(processes=2, sticky_cookie="sid"))
    assert cookie is not None and not cookie.conn and cookie.cookie == b"sid"
    assert cookie.ring.slots == 2
    ring = cookie.ring
    cookie.resize(2)
    assert cookie.ring is ring  # same count: nothing moves
    cookie.resize(5)
    assert cookie.ring.slots == 5


def test_conn_mode_keeps_an_upload_and_a_websocket_on_the_connection_worker() -> None:
    d = sticky_dispatcher("conn", 2, 2, 2)
    # An upload: its start and its done (and nothing counted twice).
    start = {"x-mongrel2-upload-start": "/tmp/up.1"}
    done = {**start, "x-mongrel2-upload-done": "/tmp/up.1"}
    first = wid(d.assign(*req(3, **start), 0.0))
    assert first == b"w%d" % slot_of_conn(d, 3)
    assert wid(d.assign(*req(3, **done), 0.1)) == first
    assert d.workers[first].pending == 1
    # A websocket's handshake and frames (captured: connection 22), each answered
    # before the next arrives, so only the slot keeps them together.
    workers = set()
    for name in ("ws_handshake", "ws_text", "ws_binary", "ws_ping", "ws_close"):
        raw = (CORPUS / ("tnetstring_%s.bin" % name)).read_bytes()
        p = peek(raw)
        got = wid(d.assign(p, raw, 1.0))
        workers.add(got)
        assert d.on_done(got, (p[0], p[1]), 1.0)
    ws_slot = d.sticky.ring.slot(b"%s %d" % (p[0].encode(), p[1])) if d.sticky else -1
    assert workers == {b"w%d" % ws_slot}
