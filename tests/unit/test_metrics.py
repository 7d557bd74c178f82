"""``--metrics`` through prometheus-client (ops/metrics.py), and its absence."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from m2gate.config.declare import ConfigError
from m2gate.ops.metrics import Exposition, render_metrics
from m2gate.ops.stats import DocumentServer, require_metrics


def _worker(wid: str, pid: int, requests: int, status: str = "idle") -> dict[str, Any]:
    return {
        "id": wid, "pid": pid, "generation": 3, "status": status, "threads": 4, "busy": 0,
        "requests": requests, "exceptions": 0, "disconnects": 1, "avg_request_time": 0.01,
        "last_request_time": 0.02, "rss": 40_000_000, "max_requests": 0, "in_flight": [],
    }  # fmt: skip


def _doc(*workers: dict[str, Any]) -> dict[str, Any]:
    return {
        "ok": True, "pid": 10, "generation": 3, "queued": 2, "requests": 17, "rejected": 0,
        "harakiri": 1, "restarts": 0, "reloads": 2, "workers": list(workers),
        "processes": 2, "workers_min": 1, "workers_max": 4, "workers_spawned": 3,
        "workers_retired_idle": 2, "queue_oldest_wait": 0.25, "queue_waited": 40,
        "queue_wait_seconds": 3.5, "queue_wait_window": 10, "queue_wait_recent": 12,
        "queue_wait_avg": 0.0625, "queue_wait_max": 1.5,
    }  # fmt: skip


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_scrape_parses_and_has_a_series_per_worker() -> None:
    body, ctype = render_metrics(_doc(_worker("w1", 101, 7), _worker("w2", 102, 10, "busy")))
    assert ctype.startswith("text/plain; version=0.0.4")
    fams = families(body.decode())
    assert fams["m2gate_requests"].type == "counter"
    assert fams["m2gate_requests"].samples[0].name == "m2gate_requests_total"
    assert fams["m2gate_requests"].samples[0].value == 17
    assert fams["m2gate_queued_requests"].type == "gauge"
    assert fams["m2gate_harakiri"].samples[0].value == 1
    per_worker = {s.labels["pid"]: s for s in fams["m2gate_worker_requests"].samples}
    assert set(per_worker) == {"101", "102"}
    assert per_worker["102"].labels == {"worker": "w2", "pid": "102", "generation": "3"}
    assert per_worker["102"].value == 10
    assert {s.labels["status"]: s.value for s in fams["m2gate_workers"].samples} == {
        "busy": 1,
        "idle": 1,
    }
    assert fams["m2gate_worker_rss_bytes"].documentation == "Resident memory of the worker."


def test_queue_waits_and_adaptive_workers_are_metrics() -> None:
    fams = families(render_metrics(_doc(_worker("w1", 101, 7)))[0].decode())
    values = {name: fam.samples[0].value for name, fam in fams.items() if not fam.samples[0].labels}
    assert values["m2gate_queue_oldest_wait_seconds"] == 0.25
    assert values["m2gate_queue_wait_recent_max_seconds"] == 1.5
    assert values["m2gate_queue_wait_recent_avg_seconds"] == 0.0625
    assert values["m2gate_workers_target"] == 2
    assert (values["m2gate_workers_min"], values["m2gate_workers_max"]) == (1, 4)
    assert fams["m2gate_queue_wait_seconds"].type == "counter"
    assert fams["m2gate_queue_wait_seconds"].samples[0].name == "m2gate_queue_wait_seconds_total"
    assert values["m2gate_queue_waited_requests"] == 40
    assert (values["m2gate_workers_spawned"], values["m2gate_workers_retired_idle"]) == (3, 2)


def test_label_values_are_escaped_by_the_library() -> None:
    odd = 'w"1\\\nx'
    body, _ = render_metrics(_doc(_worker(odd, 5, 1)))
    sample = families(body.decode())["m2gate_worker_requests"].samples[0]
    assert sample.labels["worker"] == odd


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    body, ctype = render_metrics(_doc(_worker("w1", 101, 7)), accept)
    assert ctype.startswith("application/openmetrics-text")
    text = body.decode()
    assert text.endswith("# EOF\n")
    fams = {f.name: f for f in openmetrics_families(text)}
    assert fams["m2gate_worker_requests"].samples[0].value == 7


def _http_get(path: str, accept: str = "") -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        extra = b"Accept: %s\r\n" % accept.encode() if accept else b""
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_listener_passes_accept_and_answers_503_without_a_snapshot(tmp_path: Path) -> None:
    answers: list[dict[str, Any]] = [
        _doc(_worker("w1", 101, 7)),
        {"ok": False, "error": "the master did not answer in 5.0s"},
    ]
    path = str(tmp_path / "metrics.sock")
    server = DocumentServer(path, Exposition(lambda: answers.pop(0)).render, True, "metrics")
    server.start()
    try:
        data = _http_get(path, "application/openmetrics-text; version=1.0.0")
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 OK")
        assert b"Content-Type: application/openmetrics-text" in head
        assert body.endswith(b"# EOF\n")
        data = _http_get(path)
        assert data.startswith(b"HTTP/1.0 503 Service Unavailable")
        assert data.endswith(b"\r\n\r\nthe master did not answer in 5.0s\n")
    finally:
        server.close()


def test_missing_library_fails_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import raises ImportError
    with pytest.raises(ConfigError) as err:
        require_metrics()
    assert str(err.value).startswith("metrics: ")
    assert "pip install 'm2gate[metrics]'" in str(err.value)


def test_missing_library_stops_serve_at_start_up_with_one_line() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from m2gate.cli import main; sys.exit(main(sys.argv[1:]))\n"
    )
    args = ["serve", "nowhere:app", "--send-spec", "tcp://127.0.0.1:9", "--metrics", ":9"]
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("m2gate: error: metrics: ")
    assert lines[0].endswith("pip install 'm2gate[metrics]'")
