"""The benchmark scripts still run end to end (smoke only, no timing assertions)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed"),
]

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(script: str, *args: str, timeout: float = 90) -> tuple[dict[str, Any], str]:
    """Run ``benchmarks/<script> --json ARGS``; its parsed report and its stderr."""
    proc = subprocess.Popen(
        [sys.executable, str(BENCHMARKS / script), "--json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            # SIGTERM lets the script stop its own Mongrel2 and handlers by PID.
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    stderr = err.decode(errors="replace")
    assert proc.returncode == 0, stderr
    report: dict[str, Any] = json.loads(out)
    return report, stderr


def test_quick_benchmark_both_sides_answer() -> None:
    report, stderr = _run("bench_wsgi.py", "--quick")
    names = [side["name"] for side in report["sides"]]
    assert names == ["naive", "m2gate threads=1"], stderr
    for side in report["sides"]:
        assert side["ok"], (side["name"], side["wrk"], stderr)
        assert side["wrk"]["requests"] > 0
        assert sum(side["wrk"]["errors"].values()) == 0
    assert report["ok"]
    assert report["sides"][1]["ratio"] is not None


def _check_runs(report: dict[str, Any], expected: list[tuple[str, str]], stderr: str) -> None:
    """Every (side, access log) ran once, in order, answered without errors."""
    assert [(r["side"], r["access_log"]) for r in report["sides"]] == expected, stderr
    for run in report["sides"]:
        assert run["ok"], (run["name"], run["wrk"], stderr)
        assert run["wrk"]["requests"] > 0
        assert sum(run["wrk"]["errors"].values()) == 0
        assert run["mongrel2_cpu_us_per_req"] > 0
        assert (run["ratio"] is None) == (run["side"] == "naive")
    assert report["ok"]
    assert [(m["side"], m["access_log"]) for m in report["summary"]] == expected


def test_bench_all_static_naive_dev_and_master_with_both_access_logs() -> None:
    report, stderr = _run(
        "bench_all.py", "--quick", "--warmup", "0", "--sides", "static,naive,dev,p2", timeout=120
    )
    sides = ["static", "naive", "dev", "p2"]
    _check_runs(report, [(s, log) for log in ("off", "on") for s in sides], stderr)
    by_side = {(r["side"], r["access_log"]): r for r in report["sides"]}
    # Mongrel2 answers the static file alone; every handler side has a CPU figure.
    assert by_side["static", "off"]["handler_cpu_us_per_req"] is None
    assert by_side["static", "off"]["handler_pids"] == []
    for side in ("naive", "dev", "p2"):
        assert by_side[side, "on"]["handler_cpu_us_per_req"] > 0
    # -p 2 is a master and its workers: the whole process tree is counted.
    assert len(by_side["p2", "off"]["handler_pids"]) >= 3, by_side["p2", "off"]
    assert list(report["installs"]) == ["dev"]
    dev = report["installs"]["dev"]
    assert isinstance(dev["probe"]["c_decoder"], bool)
    assert dev["probe"]["file"].startswith(str(BENCHMARKS.parent / "src")), dev
    machine = report["machine"]
    assert machine["cpu_model"] and machine["cpus"] and machine["python"] and machine["date"]
    assert machine["mongrel2"].startswith("Mongrel2/")
    goals = {g["side"] + "/" + g["against"]: g for g in report["goals"]}
    assert len(report["goals"]) == 4
    assert isinstance(goals["p2/dev"]["met"], bool)
    assert goals["p2/dev"]["value"] == goals["p2/dev"]["rounds"][0] > 0
    assert goals["asgi/naive"]["met"] is None  # not run: not evaluated
    assert "-p 2 >= 0.90x one process (dev install, same rounds): " in stderr


def test_bench_all_pip_side_runs_a_plain_pip_install(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    report, stderr = _run(
        "bench_all.py",
        "--quick",
        "--warmup",
        "0",
        "--sides",
        "naive,pip",
        "--access-log",
        "off",
        "--cache-dir",
        str(cache),
        timeout=240,
    )
    _check_runs(report, [("naive", "off"), ("pip", "off")], stderr)
    pip = report["installs"]["pip"]
    (venv,) = cache.glob("venv-*")
    assert pip["where"] == str(venv)
    assert (venv / ".m2gate-bench-ready").exists()
    # Not editable, not this tree's src: the package was copied into the venv.
    assert pip["probe"]["file"].startswith(str(venv)), pip
    assert pip["pythonpath"] is None
    assert isinstance(pip["probe"]["c_decoder"], bool)
    assert report["sides"][1]["command"].startswith(str(venv / "bin" / "m2gate"))
    assert report["goals"][0]["side"] == "pip" and isinstance(report["goals"][0]["met"], bool)


def test_tail_latency_runs_every_dispatch_mode_and_the_hello_comparison() -> None:
    report, stderr = _run("tail_latency.py", "--quick", "--rate", "30", timeout=240)
    assert report["ok"], stderr
    modes = [r["mode"] for r in report["mixed"]]
    assert modes == ["direct", "round-robin", "idle", "idle-p0"], stderr
    for run in report["mixed"]:
        # Open loop: every scheduled request was sent and answered, none failed.
        assert run["answered"] == run["fast"]["requests"] + run["slow"]["requests"] == 30, run
        assert run["error_count"] == 0 and run["errors"] == {}, run
        assert run["fast"]["p50_ms"] is not None and run["fast"]["p99_ms"] >= run["fast"]["p50_ms"]
        assert run["throughput_rps"] > 0
        assert "--dispatch" in run["command"] and " -p 2 " in run["command"]
    # The same seeded order for every mode: the same number of slow requests.
    assert len({r["slow"]["requests"] for r in report["mixed"]}) == 1
    assert [h["mode"] for h in report["hello"]] == ["idle", "round-robin"]
    assert all(h["ok"] and h["wrk"]["requests"] > 0 for h in report["hello"]), report["hello"]
    goals = {(g["side"], g["against"]): g for g in report["goals"]}
    assert goals["direct", "idle"]["value"] is not None
    assert isinstance(goals["idle", "round-robin"]["met"], bool)
    assert report["machine"]["cpu_model"] and report["machine"]["cpus"]
    assert "fast-request p99, direct / idle >= 10x: " in stderr
