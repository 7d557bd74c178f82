"""``--metrics``: the master's snapshot as Prometheus metrics, through prometheus-client.

A custom collector turns each scrape's snapshot (the document ``m2gate
status`` shows) into metric families; the library writes the exposition, so
types, HELP lines, label escaping and the format (Prometheus text 0.0.4, or
OpenMetrics when the scraper's ``Accept`` asks for it) are its own. Nothing
is registered globally and no per-process metric files exist: the master
already knows every worker's numbers.

prometheus-client is an optional extra (``m2gate[metrics]``); this module is
imported only when ``--metrics`` is set, after
:func:`m2gate.ops.stats.require_metrics` checked that it is there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from m2gate.ops.stats import Unavailable

Snapshot = Callable[[], dict[str, Any]]

# (name, kind, help, field of the stats document). Counter names lose
# ``_total`` here: the library appends it (and OpenMetrics wants it so).
TOTALS = [
    ("m2gate_requests", "counter", "Requests served by all workers since start.", "requests"),
    (
        "m2gate_queued_requests",
        "gauge",
        "Requests waiting in the master for a free worker.",
        "queued",
    ),
    (
        "m2gate_rejected_requests",
        "counter",
        "Requests answered 503 because no worker could take them.",
        "rejected",
    ),
    ("m2gate_harakiri", "counter", "Workers killed for a request over --harakiri.", "harakiri"),
    ("m2gate_worker_restarts", "counter", "Workers started to replace another.", "restarts"),
    ("m2gate_reloads", "counter", "Completed graceful reloads.", "reloads"),
    ("m2gate_generation", "gauge", "Generation of the workers serving now.", "generation"),
    # What ZeroMQ hides: how long requests wait for a free worker thread.
    (
        "m2gate_queue_oldest_wait_seconds",
        "gauge",
        "How long the oldest request waiting in the master has waited so far.",
        "queue_oldest_wait",
    ),
    (
        "m2gate_queue_waited_requests",
        "counter",
        "Requests that waited in the master's queue (then went to a worker, or got 503).",
        "queue_waited",
    ),
    (
        "m2gate_queue_wait_seconds",
        "counter",
        "Seconds requests waited in the master's queue, together (rate / waited rate: mean).",
        "queue_wait_seconds",
    ),
    (
        "m2gate_queue_wait_recent_max_seconds",
        "gauge",
        "Longest wait of the requests that left the queue in the last queue_wait_window s.",
        "queue_wait_max",
    ),
    (
        "m2gate_queue_wait_recent_avg_seconds",
        "gauge",
        "Mean wait of the requests that left the queue in the last queue_wait_window s.",
        "queue_wait_avg",
    ),
    # Adaptive workers (--workers-min/--workers-max; without them min = max = target).
    (
        "m2gate_workers_target",
        "gauge",
        "Worker processes the master keeps now.",
        "processes",
    ),
    ("m2gate_workers_min", "gauge", "Fewest worker processes (adaptive).", "workers_min"),
    ("m2gate_workers_max", "gauge", "Most worker processes (adaptive).", "workers_max"),
    (
        "m2gate_workers_spawned",
        "counter",
        "Workers started because requests waited (adaptive).",
        "workers_spawned",
    ),
    (
        "m2gate_workers_retired_idle",
        "counter",
        "Workers retired because the pool had a spare worker (adaptive).",
        "workers_retired_idle",
    ),
]

PER_WORKER = [
    ("m2gate_worker_requests", "counter", "Requests served by the worker.", "requests"),
    ("m2gate_worker_exceptions", "counter", "App exceptions in the worker.", "exceptions"),
    (
        "m2gate_worker_disconnects",
        "counter",
        "Clients that went away while the worker served them.",
        "disconnects",
    ),
    ("m2gate_worker_rss_bytes", "gauge", "Resident memory of the worker.", "rss"),
    ("m2gate_worker_busy_connections", "gauge", "Connections the worker is serving now.", "busy"),
    (
        "m2gate_worker_avg_request_seconds",
        "gauge",
        "Mean request duration in the worker.",
        "avg_request_time",
    ),
    (
        "m2gate_worker_last_request_seconds",
        "gauge",
        "Duration of the worker's last request.",
        "last_request_time",
    ),
]

WORKER_LABELS = ["worker", "pid", "generation"]


def _family(name: str, kind: str, help_text: str, labels: list[str] | None = None) -> Any:
    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    return cls(name, help_text, labels=labels)


class SnapshotCollector(Collector):
    """Metric families from one snapshot per scrape; no state of its own."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        doc = self.snapshot()
        if not doc.get("ok"):
            raise Unavailable(doc.get("error") or "no snapshot")
        for name, kind, help_text, field in TOTALS:
            fam = _family(name, kind, help_text)
            fam.add_metric([], doc[field])
            yield fam
        states: dict[str, int] = {}
        for w in doc["workers"]:
            states[w["status"]] = states.get(w["status"], 0) + 1
        workers = GaugeMetricFamily(
            "m2gate_workers", "Worker processes by status.", labels=["status"]
        )
        for status, count in sorted(states.items()):
            workers.add_metric([status], count)
        yield workers
        for name, kind, help_text, field in PER_WORKER:
            fam = _family(name, kind, help_text, WORKER_LABELS)
            for w in doc["workers"]:
                fam.add_metric([str(w["id"]), str(w["pid"]), str(w["generation"])], w[field])
            yield fam


class Exposition:
    """What the ``--metrics`` listener serves: ``render(accept)`` -> (body, content type)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(snapshot))

    def render(self, accept: str = "") -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def render_metrics(doc: dict[str, Any], accept: str = "") -> tuple[bytes, str]:
    """One document as metrics (tests, and anyone holding a stats document)."""
    return Exposition(lambda: doc).render(accept)
