"""Adaptive workers through a real Mongrel2: a load ramp grows the pool, quiet shrinks it.

``--workers-min 1 --workers-max 4 --threads 1`` with short tuning values, and
concurrent real HTTP clients sending slow-ish requests (``/sleep``). The
worker count is read as an operator would, from the master's stats
document (what ``m2gate status`` prints) and its Prometheus metrics; every
request of the ramp must come back 200.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from loadgen import LoadGenerator
from prometheus_client.parser import text_string_to_metric_families

from m2gate.cli import control as client
from m2gate.ops.pidfile import control_path_for
from m2gate.testing.mongrel2 import Mongrel2, free_port
from support import wait_until

pytestmark = pytest.mark.integration

MAX = 4
SLOW = "/sleep?s=0.2"


def serving(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The workers that take new requests (or will, once ready): not the retiring ones."""
    return [w for w in doc["workers"] if w["status"] != "retiring"]


class Sampler:
    """Reads the stats document every 100 ms in a thread; keeps what the test checks."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status
        self.peak = 0
        self.over_max: list[dict[str, Any]] = []
        self.saw_waiting = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                doc = self.status()
            except Exception:  # a slow answer on a busy machine: the next sample counts
                continue
            n = len(serving(doc))
            self.peak = max(self.peak, n)
            if n > MAX or doc["processes"] > MAX:
                self.over_max.append(doc)
            if doc["queued"] and doc["queue_oldest_wait"] > 0:
                self.saw_waiting = True


def metrics_of(port: int) -> dict[str, float]:
    text = requests.get("http://127.0.0.1:%d/metrics" % port, timeout=10).text
    return {
        s.name: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if not s.labels
    }


def test_a_load_ramp_grows_the_pool_and_quiet_shrinks_it(
    mongrel2: Mongrel2, m2gate_server: Callable[..., Any], tmp_path: Path
) -> None:
    pidfile = tmp_path / "m2gate.pid"
    metrics = free_port()
    server = m2gate_server(
        "escapes:application",
        "--workers-min",
        "1",
        "--workers-max",
        str(MAX),
        "--threads",
        "1",
        "--workers-spawn-wait",
        "0.05",
        "--workers-spawn-interval",
        "0.2",
        "--workers-idle",
        "1.5",
        "--metrics",
        ":%d" % metrics,
        "--pidfile",
        str(pidfile),
    )
    sock = control_path_for(str(pidfile))

    def status() -> dict[str, Any]:
        return client.request(sock, "status", timeout=10)

    first = wait_until(
        lambda: (d := status()) and not any(w["status"] == "starting" for w in d["workers"]) and d,
        "the first worker ready",
    )
    assert len(first["workers"]) == 1 and first["processes"] == 1
    assert (first["workers_min"], first["workers_max"]) == (1, MAX)
    # (The fixture's first probe may have waited for the worker to be ready: counted too.)
    assert first["workers_spawned"] == 0 and first["queue_wait_window"] == 10
    before = metrics_of(metrics)
    assert before["m2gate_workers_target"] == 1 and before["m2gate_workers_spawned_total"] == 0

    # The ramp: 2 clients, then 8 more, each sending slow requests back to back: more
    # than 4 workers hold (a thread and a --prefetch slot each), so requests keep waiting.
    with Sampler(status) as sampler:
        light = LoadGenerator(mongrel2.port, [SLOW], threads=2, max_requests=400).start()
        light.wait_for(5)
        heavy = LoadGenerator(mongrel2.port, [SLOW], threads=8, max_requests=400).start()
        grown = wait_until(
            lambda: (d := status()) and len(serving(d)) > 1 and d, "more workers under load", 60
        )
        # Hold the load until the pool serves with more than one ready worker.
        wait_until(
            lambda: sum(w["status"] in ("busy", "idle") for w in serving(status())) > 1,
            "a second worker serving",
            60,
        )
        heavy.wait_for(40, timeout=60)
        during = status()
        loaded = metrics_of(metrics)
        results = [light.stop(), heavy.stop()]
    failures = [f for r in results for f in r.failures]
    assert failures == [], failures[:10]
    assert sum(r.ok for r in results) >= 45
    assert sampler.peak > 1 and not sampler.over_max, sampler.over_max[:1]
    assert sampler.saw_waiting  # the queue ZeroMQ would hide, seen with its wait
    assert grown["workers_spawned"] >= 1 and grown["processes"] > 1
    assert during["queue_waited"] > first["queue_waited"]
    assert during["queue_wait_seconds"] > first["queue_wait_seconds"]
    assert during["queue_wait_recent"] > 0 and during["queue_wait_max"] > 0
    assert loaded["m2gate_workers_spawned_total"] >= 1
    assert loaded["m2gate_queue_waited_requests_total"] > 0
    assert loaded["m2gate_queue_wait_seconds_total"] > 0
    assert loaded["m2gate_workers_target"] > 1

    # Quiet: back to the minimum, one idle spell per worker retired.
    def shrunk() -> dict[str, Any] | None:
        d = status()
        return d if len(d["workers"]) == 1 and d["processes"] == 1 else None

    after = wait_until(shrunk, "the pool back at one worker", 90)
    assert after["workers_retired_idle"] == after["workers_spawned"] >= 1
    assert after["restarts"] == 0  # retired, not crashed and replaced
    assert after["requests"] >= sum(r.ok for r in results)
    quiet = metrics_of(metrics)
    assert quiet["m2gate_workers_target"] == 1
    assert quiet["m2gate_workers_retired_idle_total"] == after["workers_retired_idle"]
    assert quiet["m2gate_queue_oldest_wait_seconds"] == 0
    assert requests.get(mongrel2.url + SLOW, timeout=15).status_code == 200

    top = subprocess.run(
        [*server.args[:1], "top", "--once", "--pidfile", str(pidfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert top.returncode == 0, top.stderr
    wait_line = top.stdout.splitlines()[3]
    assert wait_line.startswith("wait: ") and "adaptive 1..%d: +" % MAX in wait_line
