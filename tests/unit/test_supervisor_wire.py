"""Probe ids, done reports and the stats document's worker status (wire.py, status.py)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from m2gate.config.settings import Config
from m2gate.supervisor import wire
from m2gate.supervisor.actions import Spawn
from m2gate.supervisor.handoff import Dispatcher
from m2gate.supervisor.lifecycle import Lifecycle
from m2gate.supervisor.state import InFlight, Worker, WorkerState
from m2gate.supervisor.status import document, worker_status


def test_probe_ids_come_back_negative_and_map_to_their_own_masters_process() -> None:
    block = wire.new_probe_block()
    assert wire.PROBE_LOW <= block and block + wire.PROBE_BLOCK <= wire.PROBE_HIGH
    for serial in (0, 1, 7, wire.PROBE_SLOTS - 1):
        base = wire.probe_base(serial, block)
        for attempt in (0, 1, wire.PROBE_SPAN - 1):
            assert wire.echoed(base + attempt) < 0  # as Mongrel2 prints it: a C int
            assert wire.probe_slot(base + attempt, block) == base
    assert wire.probe_base(wire.PROBE_SLOTS, block) == wire.probe_base(0, block)  # wraps


def test_another_masters_probe_and_real_ids_are_not_ours() -> None:
    block = wire.PROBE_LOW + 5 * wire.PROBE_BLOCK
    assert wire.probe_slot(block - 1, block) is None
    assert wire.probe_slot(block + wire.PROBE_BLOCK, block) is None
    assert wire.probe_slot(1, block) is None


def test_worker_status_follows_the_state() -> None:
    w = Worker(b"w1", 1, 1, 2)
    assert worker_status(w) == "starting"
    w.to(WorkerState.READY)
    w.ready_at = 1.0
    assert worker_status(w) == "idle"
    key = ("s", 1)
    w.inflight[key] = [InFlight(key, 0.0, False, b"GET", b"/")]
    assert worker_status(w) == "busy"
    w.to(WorkerState.RETIRING)
    assert worker_status(w) == "retiring"
    w.to(WorkerState.DUMPING)
    assert worker_status(w) == "retiring"


def test_document_counts_requests_of_workers_gone_and_alive() -> None:
    cfg = Config(processes=2)
    life = Lifecycle(cfg, Dispatcher(), pid=42)
    for a in life.start(0.0):
        assert isinstance(a, Spawn)
        a.worker.requests = 5
    life.served_by_gone = 7
    doc = document(cfg, life, pid=42, uptime=1.23456, queued=3, rejected=2, now=1.0)
    assert doc["requests"] == 17
    assert (doc["queued"], doc["rejected"], doc["uptime"]) == (3, 2, 1.235)
    assert [w["id"] for w in doc["workers"]] == ["w1", "w2"]
    assert {w["status"] for w in doc["workers"]} == {"starting"}


# -- done/started reports: binary, many per frame --------------------------------

REPORTS = st.lists(
    st.tuples(
        st.sampled_from(["3a5c1e0e-7d0b-4c55-9d8a-7f1b2f6a0c01", "S", "x" * 128]),
        st.integers(0, 10**20 - 1) | st.integers(0, 2**32),  # the parser admits 20 digits
        st.integers(0, 2**64 - 1) | st.integers(0, 3),
    ),
    min_size=1,
    max_size=80,
)


def flat(groups: list[wire.ReportGroup]) -> list[wire.Report]:
    return [(sender, conn_id, epoch) for sender, epoch, ids in groups for conn_id in ids]


@settings(max_examples=300, deadline=None)
@given(REPORTS)
def test_reports_round_trip_grouped_by_sender_and_epoch(reports: list[wire.Report]) -> None:
    groups = wire.decode_reports(wire.encode_reports(reports))
    assert Counter(flat(groups)) == Counter(reports)
    assert len(groups) <= 2 * len(set((s, e) for s, _, e in reports))  # narrow and wide ids
    for sender, conn_id, epoch in reports[:3]:
        one = wire.encode_report(sender, conn_id, epoch)
        assert wire.decode_reports(one) == [(sender, epoch, [conn_id])]


def test_a_long_batch_is_one_frame_of_few_groups() -> None:
    reports = [("S", i, 0) for i in range(70_000)]  # more than one group holds
    groups = wire.decode_reports(wire.encode_reports(reports))
    assert len(groups) == 2 and flat(groups) == reports


@settings(max_examples=500, deadline=None)
@given(REPORTS, st.data())
def test_garbled_frames_are_ignored_never_raise(reports: list[wire.Report], data: Any) -> None:
    frame = wire.encode_reports(reports)
    groups = wire.decode_reports(frame)
    cut = data.draw(st.integers(0, len(frame) - 1))
    short = wire.decode_reports(frame[:cut])  # inside a group: nothing; between: whole groups
    assert short == groups[: len(short)] and len(short) < len(groups)
    junk = data.draw(st.binary(min_size=1, max_size=20))  # shorter than any group
    assert wire.decode_reports(frame + junk) == []  # trailing garbage: none of it
    flipped = bytearray(frame)
    flipped[data.draw(st.integers(0, len(frame) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    wire.decode_reports(bytes(flipped))  # a list, whatever it holds


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_to_a_list(data: bytes) -> None:
    groups = wire.decode_reports(data)
    assert isinstance(groups, list)
    for sender, epoch, ids in groups:
        assert isinstance(sender, str) and ids and all(i >= 0 for i in ids) and epoch >= 0
