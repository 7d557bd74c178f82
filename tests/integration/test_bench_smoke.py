"""benchmarks/bench_wsgi.py still runs end to end (smoke only, no timing assertions)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed"),
]

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_wsgi.py"


def test_quick_benchmark_both_sides_answer() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--quick", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=90)
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
    report = json.loads(out)
    names = [side["name"] for side in report["sides"]]
    assert names == ["naive", "m2gate threads=1"], stderr
    for side in report["sides"]:
        assert side["ok"], (side["name"], side["wrk"], stderr)
        assert side["wrk"]["requests"] > 0
        assert sum(side["wrk"]["errors"].values()) == 0
    assert report["ok"]
    assert report["sides"][1]["ratio"] is not None
