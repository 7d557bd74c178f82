"""Probe ids and the stats document's worker status (supervisor/wire.py, status.py)."""

from __future__ import annotations

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
