"""The stats document: ``m2gate status``, ``--stats`` and ``--metrics`` all read it."""

from __future__ import annotations

from typing import Any

from m2gate import __version__
from m2gate.config.settings import Config
from m2gate.supervisor.lifecycle import Lifecycle
from m2gate.supervisor.state import Worker, WorkerState

S = WorkerState


def worker_status(w: Worker) -> str:
    """What ``m2gate status`` shows: starting, idle, busy or retiring."""
    if w.ready_at is None:
        return "starting"
    if w.state in (S.RETIRING, S.STOPPING, S.DUMPING):
        return "retiring"
    return "busy" if w.inflight else "idle"


def worker_document(w: Worker, now: float) -> dict[str, Any]:
    return {
        "id": w.wid.decode(),
        "pid": w.pid,
        "generation": w.generation,
        "slot": w.slot,  # sticky routing's place: a replacement inherits it
        "status": worker_status(w),
        "threads": w.capacity,
        "busy": w.load,
        "requests": w.requests,
        "exceptions": w.exceptions,
        "disconnects": w.disconnects,
        "avg_request_time": w.busy_time / w.requests if w.requests else 0.0,
        "last_request_time": w.last_time,
        "rss": w.rss,
        "max_requests": w.max_requests,
        "in_flight": [
            {
                "sender": e.key[0],
                "conn_id": e.key[1],
                "age": round(now - e.started, 3),
                "pipelined": e.pipelined,
                "request": e.what,
            }
            for e in w.entries()
        ],
    }


def document(
    cfg: Config,
    life: Lifecycle,
    *,
    pid: int,
    uptime: float,
    queued: int,
    rejected: int,
    now: float,
) -> dict[str, Any]:
    """The whole document (built in the loop: it reads the live records)."""
    workers = sorted(life.workers.values(), key=lambda w: w.serial)
    waits = life.disp.waits
    recent = waits.recent(now)
    return {
        "ok": True,
        "version": __version__,
        "pid": pid,
        "uptime": round(uptime, 3),
        "generation": life.generation,
        "reloading_to": life.pending_gen,
        "stopping": life.stopping,
        "processes": life.size,  # kept now (adaptive workers: between the two below)
        "workers_min": cfg.fewest_workers if cfg.adaptive else life.size,
        "workers_max": cfg.workers_max if cfg.adaptive else life.size,
        "workers_spawned": life.spawned_for_load,
        "workers_retired_idle": life.retired_idle,
        "threads": cfg.threads,
        "queued": queued,
        "queue_oldest_wait": round(life.disp.oldest_wait(now), 4),
        "queue_waited": waits.count,
        "queue_wait_seconds": round(waits.total, 4),
        "queue_wait_window": recent.window,
        "queue_wait_recent": recent.count,
        "queue_wait_avg": round(recent.avg, 4),
        "queue_wait_max": round(recent.max, 4),
        "requests": life.served_by_gone + sum(w.requests for w in workers),
        "rejected": rejected,
        "harakiri": life.harakiri_count,
        "restarts": life.restarts,
        "reloads": life.reloads,
        "reload_durations": [round(d, 3) for d in life.reload_durations],
        "workers": [worker_document(w, now) for w in workers],
    }
