#!/usr/bin/env python3
"""ASGI hello world beside the WSGI one and the naive floor, through one real Mongrel2.

Starts Mongrel2 with one handler route, then, each round, puts the same
``wrk`` keep-alive load on three handlers in turn: ``apps/naive_handler.py``
(a bare pyzmq loop replying fixed bytes: the floor), ``m2gate serve`` on
``apps/hello_asgi.py`` (the asyncio runtime) and on ``apps/hello.py`` (WSGI,
one thread). The two apps put the same bytes on the wire. It prints req/s,
latency, handler CPU per request and the ratio to the naive handler of the
same round (the machine's load drifts; a ratio compares like with like), and
the medians over the rounds. A run with socket errors or non-2xx answers is
flagged and makes the exit status 1.

Every process is stopped by its own PID on exit.

    .venv/bin/python benchmarks/bench_asgi.py              # 3 rounds of 10 s per side
    .venv/bin/python benchmarks/bench_asgi.py --quick      # 1 round of 2 s per side
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from m2gate.testing.mongrel2 import Mongrel2

HERE = Path(__file__).resolve().parent
APPS = {
    "asgi": str(HERE / "apps" / "hello_asgi.py") + ":app",
    "wsgi": str(HERE / "apps" / "hello.py") + ":application",
}
NAIVE = HERE / "apps" / "naive_handler.py"
BODY = b"Hello, world!\n"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_answering(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("m2gate exited with %s" % proc.returncode)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            if resp.read() == BODY:
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(0.05)
    raise RuntimeError("m2gate not answering after %.0fs" % timeout)


def run_wrk(url: str, opts: argparse.Namespace, seconds: int) -> dict[str, Any]:
    cmd = [
        "wrk",
        "-t%d" % opts.wrk_threads,
        "-c%d" % opts.connections,
        "-d%ds" % seconds,
        "--latency",
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60)
    text = out.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", text)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    errors = "Socket errors" in text or "Non-2xx" in text
    return {
        "rps": rps,
        "requests": requests,
        "p50_ms": float(p50.group(1)) * scale[p50.group(2)] if p50 else None,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else None,
        "errors": errors,
        "raw": text if errors else "",
    }


def m2gate_command(interface: str, m2: Mongrel2) -> list[str]:
    spec = m2.handler
    exe = Path(sys.executable).with_name("m2gate")
    return [
        *([str(exe)] if exe.exists() else [sys.executable, "-m", "m2gate"]),
        "serve",
        APPS[interface],
        "--interface",
        interface,
        "--send-spec",
        spec.send_spec,
        "--recv-spec",
        spec.recv_spec,
        "--send-ident",
        spec.send_ident,
        "--log-level",
        "warning",
    ]


def measure(side: str, m2: Mongrel2, opts: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    spec = m2.handler
    if side == "naive":
        cmd = [sys.executable, str(NAIVE), spec.send_spec, spec.recv_spec, spec.send_ident]
    else:
        cmd = m2gate_command(side, m2)
    log_path = logdir / ("%s.log" % side)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_answering(m2.port, proc)
        run_wrk(m2.url + "/", opts, opts.warmup)
        cpu0 = cpu_seconds(proc.pid)
        result = run_wrk(m2.url + "/", opts, opts.duration)
        cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    result["side"] = side
    result["handler_cpu_us_per_req"] = cpu / max(result["requests"], 1) * 1e6
    result["load"] = os.getloadavg()[0]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("-c", "--connections", type=int, default=32)
    parser.add_argument("-t", "--wrk-threads", type=int, default=2)
    parser.add_argument("-d", "--duration", type=int, default=10, help="seconds per side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round, 2 s per side, 1 s warm-up")
    parser.add_argument(
        "--side",
        action="append",
        choices=["naive", *sorted(APPS)],
        help="default: naive, asgi and wsgi",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.duration, opts.warmup, opts.rounds = 2, 1, 1
    if shutil.which("wrk") is None:
        print("bench_asgi: wrk not found on PATH", file=sys.stderr)
        return 2
    sides = opts.side or ["naive", "asgi", "wsgi"]
    workdir = Path(tempfile.mkdtemp(prefix="m2gate-bench-asgi-"))
    results: list[dict[str, Any]] = []
    try:
        with Mongrel2(workdir / "mongrel2") as m2:
            for round_no in range(1, opts.rounds + 1):
                this_round = [measure(side, m2, opts, workdir) for side in sides]
                floor = next((r["rps"] for r in this_round if r["side"] == "naive"), 0.0)
                for r in this_round:
                    r["round"] = round_no
                    r["ratio"] = r["rps"] / floor if floor and r["side"] != "naive" else None
                results += this_round
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    medians = {
        side: {
            "rps": statistics.median(r["rps"] for r in results if r["side"] == side),
            "ratio": statistics.median(
                [r["ratio"] for r in results if r["side"] == side and r["ratio"] is not None]
                or [0.0]
            ),
            "handler_cpu_us_per_req": statistics.median(
                r["handler_cpu_us_per_req"] for r in results if r["side"] == side
            ),
        }
        for side in sides
    }
    if opts.json:
        print(json.dumps({"runs": results, "medians": medians}, indent=2))
    else:
        print(
            "wrk -c %d -t %d -d %ds, keep-alive, %d round(s), %s CPU(s), Python %s"
            % (
                opts.connections,
                opts.wrk_threads,
                opts.duration,
                opts.rounds,
                os.cpu_count(),
                sys.version.split()[0],
            )
        )
        print(
            "%-8s %5s %10s %9s %9s %14s %7s %6s"
            % ("side", "round", "req/s", "p50 ms", "p99 ms", "handler µs/r", "ratio", "load")
        )
        for r in results:
            print(
                "%-8s %5d %10.0f %9.2f %9.2f %14.1f %7s %6.1f%s"
                % (
                    r["side"],
                    r["round"],
                    r["rps"],
                    r["p50_ms"] or 0.0,
                    r["p99_ms"] or 0.0,
                    r["handler_cpu_us_per_req"],
                    "" if r["ratio"] is None else "%.2f" % r["ratio"],
                    r["load"],
                    "  ERRORS (figures invalid)" if r["errors"] else "",
                )
            )
        for side, m in medians.items():
            ratio = "" if side == "naive" else "  ratio to naive %.2f" % m["ratio"]
            print(
                "median %-6s %10.0f req/s%s  handler %.1f µs/req"
                % (side, m["rps"], ratio, m["handler_cpu_us_per_req"])
            )
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
