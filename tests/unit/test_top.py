"""``m2gate top`` (cli/top.py): frames from snapshots, the rate, and ``--once`` over real sockets.

The live curses view is run in a real terminal by tests/integration/test_top.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from m2gate.cli import main
from m2gate.cli.top import HEADING_LINE, RateMeter, duration, render
from m2gate.ops.control import ControlServer
from m2gate.ops.stats import DocumentServer
from m2gate.testing.mongrel2 import free_port


def _doc(**extra: Any) -> dict[str, Any]:
    busy = {
        "id": "w1", "pid": 4101, "generation": 2, "status": "busy", "threads": 4, "busy": 1,
        "requests": 700, "exceptions": 0, "disconnects": 0, "avg_request_time": 0.0125,
        "last_request_time": 0.01, "rss": 31_200_000, "max_requests": 0,
        "in_flight": [
            {"sender": "s", "conn_id": 9, "age": 0.4, "pipelined": True, "request": "GET /next"},
            {"sender": "s", "conn_id": 9, "age": 2.31, "pipelined": False,
             "request": "GET /sleep?s=30"},
        ],
    }  # fmt: skip
    idle = {
        **busy, "id": "w2", "pid": 4102, "status": "idle", "busy": 0, "requests": 823,
        "rss": 30_900_000, "in_flight": [],
    }  # fmt: skip
    doc = {
        "ok": True, "version": "9.9", "pid": 4100, "uptime": 3723.5, "generation": 2,
        "reloading_to": None, "stopping": False, "processes": 2, "threads": 4, "queued": 3,
        "requests": 1523, "rejected": 1, "harakiri": 0, "restarts": 1, "reloads": 1,
        "workers_min": 2, "workers_max": 2, "workers_spawned": 0, "workers_retired_idle": 0,
        "queue_oldest_wait": 0.25, "queue_waited": 40, "queue_wait_seconds": 3.5,
        "queue_wait_window": 10, "queue_wait_recent": 12, "queue_wait_avg": 0.0625,
        "queue_wait_max": 1.5,
        "workers": [busy, idle],
    }  # fmt: skip
    doc.update(extra)
    return doc


def test_frame_shows_totals_and_a_row_per_worker() -> None:
    lines = render(_doc(), rate=12.04)
    assert lines[:4] == [
        "m2gate 9.9  master pid 4100  up 1h02m  generation 2",
        "workers 2: 1 busy, 1 idle  restarts 1  reloads 1  harakiri 0",
        "requests 1523  rate 12.0/s  avg 0.4/s  queued 3  rejected 1",
        "wait: oldest 250ms  last 10s: 12 waited, avg 62ms, max 1.50s",
    ]
    heading, busy, idle = lines[HEADING_LINE], lines[5], lines[6]
    assert heading.split() == [
        "WORKER", "PID", "GEN", "STATE", "REQS", "BUSY", "RSS", "AVG", "AGE", "CURRENT", "REQUEST",
    ]  # fmt: skip
    assert busy.split() == [
        "w1", "4101", "2", "busy", "700", "1/4", "31.2M", "12ms", "2.3s", "GET", "/sleep?s=30",
        "(+1)",
    ]  # fmt: skip
    assert idle.split()[:4] == ["w2", "4102", "2", "idle"] and idle.split()[-2:] == ["-", "-"]
    # The request starts under its heading, whatever the widths of the numbers.
    assert busy.index("GET /sleep") == heading.index("CURRENT REQUEST")
    assert len(lines) == 7
    # An 80-column terminal shows the frame whole, and 16 characters of the request.
    assert all(len(line) <= 80 for line in lines[:5])
    assert len(busy[: busy.index("GET")]) == 64


def test_frame_without_a_rate_reloading_and_stopping() -> None:
    lines = render(_doc(reloading_to=3, stopping=True, uptime=42.0, requests=84))
    assert lines[0].endswith("up 42s  generation 2 (reloading to 3)  STOPPING")
    assert "rate -  avg 2.0/s" in lines[2]


def test_a_request_not_started_yet_is_shown_when_it_is_all_there_is() -> None:
    doc = _doc()
    doc["workers"][0]["in_flight"] = [
        {"sender": "s", "conn_id": 5, "age": 0.3, "pipelined": True, "request": ""}
    ]
    row = render(doc)[5]
    assert row.endswith(" 0.3s conn 5")


def test_the_wait_line_shows_adaptive_workers_and_a_quiet_queue() -> None:
    doc = _doc(
        queued=0,
        queue_wait_recent=0,
        workers_min=1,
        workers_max=4,
        workers_spawned=3,
        workers_retired_idle=2,
    )
    line = render(doc)[3]
    assert line == "wait: oldest -  last 10s: none waited  adaptive 1..4: +3 -2"
    assert len(line) <= 80


def test_an_error_answer_is_one_line() -> None:
    assert render({"ok": False, "error": "the master did not answer in 10.0s"}) == [
        "m2gate: the master answered: the master did not answer in 10.0s"
    ]


def test_rate_between_two_snapshots_of_one_master() -> None:
    meter = RateMeter()
    assert meter.update(_doc(uptime=100.0, requests=1000)) is None
    assert meter.update(_doc(uptime=102.0, requests=1030)) == 15.0
    assert meter.update(_doc(uptime=102.0, requests=1030)) is None  # no time passed
    assert meter.update(_doc(pid=999, uptime=103.0, requests=5)) is None  # another master
    assert meter.update(_doc(pid=999, uptime=104.0, requests=6)) == 1.0


def test_long_ages_are_durations() -> None:
    doc = _doc()
    doc["workers"][0]["in_flight"][1]["age"] = 754.0
    assert "12m34s GET /sleep?s=30 (+1)" in render(doc)[5]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0s"), (59.9, "59s"), (61, "1m01s"), (3723, "1h02m"), (2 * 86400 + 7300, "2d02h")],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_once_reads_the_control_socket(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc()
    path = str(tmp_path / "m.sock")
    server = ControlServer(path, lambda req: doc if req == {"command": "status"} else {}).start()
    try:
        assert main(["top", "--socket", path, "--once"]) == 0
    finally:
        server.close()
    assert capsys.readouterr().out == "\n".join(render(doc)) + "\n"


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_once_reads_a_stats_listener(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = _doc()
    addr = "127.0.0.1:%d" % free_port() if kind == "tcp" else str(tmp_path / "stats.sock")
    body = json.dumps(doc).encode()
    server = DocumentServer(addr, lambda accept: (body, "application/json"), False, "stats")
    server.start()
    try:
        assert main(["top", "--stats", addr, "--once"]) == 0
    finally:
        server.close()
    assert capsys.readouterr().out.splitlines() == render(doc)


def test_nothing_running_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", "--pidfile", str(tmp_path / "none.pid")]) == 1
    err = capsys.readouterr().err
    assert err == "m2gate: m2gate is not running (no pidfile %s)\n" % (tmp_path / "none.pid")
    assert main(["top", "--stats", str(tmp_path / "no.sock"), "--once"]) == 1
    assert capsys.readouterr().err.startswith("m2gate: no answer on stats ")


def test_live_view_needs_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "m.sock")
    server = ControlServer(path, lambda req: _doc()).start()
    try:
        assert main(["top", "--socket", path]) == 2  # pytest's stdin/stdout are no terminal
    finally:
        server.close()
    assert "top needs a terminal; --once prints one frame" in capsys.readouterr().err


def test_bad_interval_is_a_one_line_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["top", "--interval", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interval: '0' is not 0.1 to 3600 seconds" in err[0]
