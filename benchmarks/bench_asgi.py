#!/usr/bin/env python3
"""ASGI hello world beside the WSGI one, through one real Mongrel2.

Starts Mongrel2 with one handler route, then for each interface in turn runs
``m2gate serve`` on the matching hello-world app (``apps/hello_asgi.py`` on the
asyncio runtime, ``apps/hello.py`` on one thread: the same bytes on the wire)
and puts the same ``wrk`` keep-alive load on it. Prints requests/s, latency
and the handler's CPU time per request. A run with socket errors or non-2xx
answers is flagged and makes the exit status 1.

Every process is stopped by its own PID on exit.

    .venv/bin/python benchmarks/bench_asgi.py            # 10 s per side
    .venv/bin/python benchmarks/bench_asgi.py --quick    # 2 s per side
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
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


def measure(interface: str, m2: Mongrel2, opts: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    spec = m2.handler
    exe = Path(sys.executable).with_name("m2gate")
    cmd = [
        str(exe) if exe.exists() else sys.executable,
        *([] if exe.exists() else ["-m", "m2gate"]),
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
    log_path = logdir / ("m2gate-%s.log" % interface)
    with log_path.open("wb") as out:
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
    result["interface"] = interface
    result["handler_cpu_us_per_req"] = cpu / max(result["requests"], 1) * 1e6
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("-c", "--connections", type=int, default=32)
    parser.add_argument("-t", "--wrk-threads", type=int, default=2)
    parser.add_argument("-d", "--duration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 s per side, 1 s warm-up")
    parser.add_argument(
        "--interface", action="append", choices=sorted(APPS), help="default: asgi and wsgi"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.duration, opts.warmup = 2, 1
    if shutil.which("wrk") is None:
        print("bench_asgi: wrk not found on PATH", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="m2gate-bench-asgi-"))
    try:
        with Mongrel2(workdir / "mongrel2") as m2:
            results = [measure(i, m2, opts, workdir) for i in opts.interface or ["asgi", "wsgi"]]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if opts.json:
        print(json.dumps(results, indent=2))
    else:
        print(
            "wrk -c %d -t %d -d %ds, keep-alive, %s CPU(s), Python %s"
            % (
                opts.connections,
                opts.wrk_threads,
                opts.duration,
                os.cpu_count(),
                sys.version.split()[0],
            )
        )
        print(
            "%-10s %10s %9s %9s %14s" % ("interface", "req/s", "p50 ms", "p99 ms", "handler µs/r")
        )
        for r in results:
            print(
                "%-10s %10.0f %9.2f %9.2f %14.1f%s"
                % (
                    r["interface"],
                    r["rps"],
                    r["p50_ms"] or 0.0,
                    r["p99_ms"] or 0.0,
                    r["handler_cpu_us_per_req"],
                    "  ERRORS (figures invalid)" if r["errors"] else "",
                )
            )
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
