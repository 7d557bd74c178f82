"""How long one gevent-worker process takes to answer N concurrent slow requests.

    .venv/bin/python benchmarks/gevent_concurrency.py [--count 500] [--sleep 1.0]

Starts a real Mongrel2 (testing runner) and ``m2gate serve --worker-class
gevent`` on tests/apps/green.py, opens COUNT client connections at once
(plain asyncio sockets, so the client costs little CPU; ``--httpx`` for
httpx.AsyncClient, which spends far more time itself), each asking for a
request that sleeps SLEEP seconds, and prints the wall time. Ideal: SLEEP.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from m2gate.testing.mongrel2 import Mongrel2

ROOT = Path(__file__).resolve().parents[1]


async def one(port: int, n: int, seconds: float) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /sleep?s=%s&n=%d HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
        % (str(seconds).encode(), n)
    )
    data = await reader.read()
    writer.close()
    return data


async def one_httpx(client: httpx.AsyncClient, port: int, n: int, seconds: float) -> bytes:
    resp = await client.get("http://127.0.0.1:%d/sleep?s=%s&n=%d" % (port, seconds, n))
    return resp.content


async def run(port: int, count: int, seconds: float, use_httpx: bool) -> tuple[float, int]:
    started = time.monotonic()
    if use_httpx:
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            answers = await asyncio.gather(
                *(one_httpx(client, port, n, seconds) for n in range(count))
            )
    else:
        answers = await asyncio.gather(*(one(port, n, seconds) for n in range(count)))
    wall = time.monotonic() - started
    ok = sum(a.endswith(b"slept %d\n" % n) for n, a in enumerate(answers))
    return wall, ok


def wait_ready(port: int) -> None:
    for _ in range(200):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/", headers={"Connection": "close"})
            if b"green" in conn.getresponse().read():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("m2gate did not answer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--sleep", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--httpx", action="store_true", help="client: httpx.AsyncClient")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Mongrel2(Path(tmp) / "m2") as m2:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "tests" / "apps"))
        h = m2.handler
        cmd = [
            sys.executable,
            "-m",
            "m2gate",
            "serve",
            "green:application",
            "--worker-class",
            "gevent",
            "--send-spec",
            h.send_spec,
            "--recv-spec",
            h.recv_spec,
            "--send-ident",
            h.send_ident,
            "--log-level",
            "warning",
        ]
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
        try:
            wait_ready(m2.port)
            for _ in range(args.rounds):
                wall, ok = asyncio.run(run(m2.port, args.count, args.sleep, args.httpx))
                print(
                    "%d concurrent requests sleeping %.2fs: %d ok, %.2fs wall"
                    % (args.count, args.sleep, ok, wall)
                )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
