#!/usr/bin/env python3
"""Where does m2gate spend its time per request? A stage-by-stage breakdown.

``bench_wsgi.py`` gives the end-to-end CPU time per request; this script
times the pieces of the same path in one process, on a request message
captured from a real Mongrel2 for a wrk-style ``GET /app/`` (so the headers
are the real ones), with the same hello-world app:

- ``parse_message``, the WSGI environ, ``Response.head`` framing, the app;
- ``Output`` + ``replies.reply`` (a connection's writer, into a null sink);
- the whole ``WSGIHandler`` call, and ``ThreadedRuntime.feed`` end to end with
  ``--threads 1`` (adds the receive-thread -> app-thread handoff) or inline;
- raw pyzmq costs: one PULL ``recv`` and one PUB ``send`` of those sizes.

Each figure is the best of several runs (CPU noise only ever adds time), in
microseconds per request. Run: ``.venv/bin/python benchmarks/hotpath.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import zmq

from m2gate.adapters.asgi import HTTPCycle, http_scope
from m2gate.adapters.common import EnvironDefaults
from m2gate.adapters.wsgi import WSGIHandler
from m2gate.conn.async_connection import AsyncConnection, AsyncOutput
from m2gate.conn.connection import Connection, Output
from m2gate.protocol import replies
from m2gate.protocol.http import SERVER_HEADER, Response, request_framing
from m2gate.protocol.messages import Message, parse_message
from m2gate.runtime.asyncio import AsyncioRuntime
from m2gate.runtime.threaded import ThreadedRuntime
from m2gate.testing.mongrel2 import HandlerSpec, Mongrel2

sys.path.insert(0, str(Path(__file__).resolve().parent / "apps"))
from hello import application
from hello_asgi import app as asgi_app

WRK_REQUEST = b"GET /app/ HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"


def capture_request() -> bytes:
    """One message exactly as Mongrel2 pushes it for a wrk request."""
    with tempfile.TemporaryDirectory(prefix="m2gate-hotpath-") as tmp:
        spec = HandlerSpec(route="/app/")
        with Mongrel2(Path(tmp), handlers=[spec]) as m2:
            ctx = zmq.Context()
            pull = ctx.socket(zmq.PULL)
            pull.connect(m2.handler.send_spec)
            try:
                time.sleep(0.2)  # let the PULL finish connecting
                with socket.create_connection(("127.0.0.1", m2.port), timeout=5) as sock:
                    sock.sendall(WRK_REQUEST % m2.port)
                    if not pull.poll(5000):
                        raise RuntimeError("Mongrel2 did not forward the request")
                    data: bytes = pull.recv()
            finally:
                pull.close(linger=0)
                ctx.term()
    return data


def best_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Best CPU microseconds per call over ``repeat`` runs of ``number`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(number):
            fn()
        best = min(best, time.process_time() - start)
    return best / number * 1e6


class NullSink:
    """A ReplySink that only counts, so the rest of the path is timed alone."""

    def __init__(self) -> None:
        self.count = 0
        self.done = threading.Event()
        self.expected = 0

    def send(self, messages: Sequence[bytes]) -> None:
        self.count += len(messages)
        if self.count >= self.expected:
            self.done.set()


class NoSource:
    def recv(self, timeout_ms: int) -> bytes | None:
        return None

    def stop_receiving(self) -> None:
        pass


def with_conn_id(raw: bytes, conn_id: int) -> bytes:
    sender, _, rest = raw.split(b" ", 2)
    return b"%s %d %s" % (sender, conn_id, rest)


def worker_feed_us(
    raw: bytes, handler: WSGIHandler, threads: int, n: int, repeat: int, inline: bool
) -> tuple[float, float]:
    """CPU and wall µs per request through ``ThreadedRuntime.feed`` to the sink.

    32 connection ids cycle like wrk's 32 connections. ``inline`` serves in
    the feeding thread (no handoff) to isolate the queue's cost.
    """
    # Ids cycle like wrk's 32 connections when served inline (each request ends
    # before the next); through the queue every request gets its own id, so
    # none is pipelined behind another (wrk does not pipeline).
    msgs = [with_conn_id(raw, 1000 + (i % 32 if inline else i)) for i in range(n)]
    best_cpu = best_wall = float("inf")
    for _ in range(repeat):
        sink = NullSink()
        sink.expected = n
        # A burst of n on 32 connections: bounds at n, so nothing is refused.
        worker = ThreadedRuntime(
            NoSource(), sink, handler, threads=threads, backlog=n, max_pipelined=n
        )
        if inline:
            worker._submit = worker._serve_connection  # type: ignore[method-assign]
        worker._start()  # idle when inline, but drain() joins them
        c0, w0 = time.process_time(), time.perf_counter()
        for data in msgs:
            worker.feed(data)
        if not sink.done.wait(60):
            raise RuntimeError("worker did not answer every request")
        c1, w1 = time.process_time(), time.perf_counter()
        worker.drain(5.0)
        best_cpu, best_wall = min(best_cpu, c1 - c0), min(best_wall, w1 - w0)
    return best_cpu / n * 1e6, best_wall / n * 1e6


def zmq_costs(raw: bytes, reply: bytes, n: int) -> dict[str, float]:
    """µs per PULL.recv of a request and per PUB.send of a reply over TCP loopback."""
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    try:
        for sock, opt in ((push, zmq.SNDHWM), (pull, zmq.RCVHWM)):
            sock.setsockopt(opt, 0)
        port = push.bind_to_random_port("tcp://127.0.0.1")
        pull.connect("tcp://127.0.0.1:%d" % port)
        port = sub.bind_to_random_port("tcp://127.0.0.1")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        pub.connect("tcp://127.0.0.1:%d" % port)
        pub.setsockopt(zmq.SNDHWM, 0)
        time.sleep(0.3)
        for _ in range(n):
            push.send(raw)
        time.sleep(1.0)  # mostly queued on the PULL side: recv rarely waits
        start = time.process_time()
        for _ in range(n):
            pull.recv()
        recv_us = (time.process_time() - start) / n * 1e6
        start = time.process_time()
        for _ in range(n):
            pub.send(reply)
        send_us = (time.process_time() - start) / n * 1e6
        return {"zmq PULL.recv (queued)": recv_us, "zmq PUB.send": send_us}
    finally:
        for s in (push, pull, pub, sub):
            s.close(linger=0)
        ctx.term()


class NullAsyncTransport:
    """The asyncio runtime's transport with nothing to receive and a counting send."""

    def __init__(self) -> None:
        self.count = 0

    async def recv(self, timeout_ms: int | None = None) -> bytes | None:
        await asyncio.sleep(3600)
        return None

    def recv_nowait(self) -> bytes | None:
        return None

    def send(self, messages: Sequence[bytes]) -> None:
        self.count += len(messages)

    def stop_receiving(self) -> None:
        pass


def asgi_stages(raw: bytes, n: int, repeat: int) -> dict[str, float]:
    """The ASGI path, stage by stage, on one event loop (CPU µs per request).

    The whole-runtime figure feeds bursts of 32 requests (wrk's 32
    connections), then lets the loop run their tasks to the end.
    """
    msg = parse_message(raw)
    defaults = EnvironDefaults()
    msgs = [with_conn_id(raw, 1000 + i % 32) for i in range(n)]

    async def cycles(count: int) -> None:
        sink = NullAsyncTransport()
        for _ in range(count):
            conn = AsyncConnection(msg.sender, msg.conn_id, msg.sender.encode())
            out = AsyncOutput(conn, sink, 4 << 20, 0.005)
            cycle = HTTPCycle(msg, conn, out, msg.body)
            await cycle.run(asgi_app, http_scope(msg, defaults, {}))

    async def runtime() -> None:
        transport = NullAsyncTransport()
        worker = AsyncioRuntime(transport, asgi_app, defaults)
        for i in range(0, n, 32):
            for data in msgs[i : i + 32]:
                worker.feed(data)
            while worker._tasks:
                await asyncio.sleep(0)
        if transport.count != n:
            raise RuntimeError("the asyncio runtime did not answer every request")

    def on_loop(make: Callable[[], Any]) -> float:
        best = float("inf")
        for _ in range(repeat):
            start = time.process_time()
            asyncio.run(make())
            best = min(best, time.process_time() - start)
        return best / n * 1e6

    return {
        "ASGI: parse_message": best_us(lambda: parse_message(raw), n, repeat),
        "ASGI: http_scope": best_us(lambda: http_scope(msg, defaults, {}), n, repeat),
        "ASGI: HTTPCycle + app + AsyncOutput (awaited in one task)": on_loop(lambda: cycles(n)),
        "ASGI: AsyncioRuntime.feed -> task -> reply (bursts of 32)": on_loop(runtime),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("-n", "--number", type=int, default=20000, help="calls per run")
    parser.add_argument("-r", "--repeat", type=int, default=5, help="runs; the best is kept")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    opts = parser.parse_args(argv)
    n, r = opts.number, opts.repeat

    raw = capture_request()
    msg: Message = parse_message(raw)
    handler = WSGIHandler(application, EnvironDefaults(), multithread=False, multiprocess=False)
    status, headers = "200 OK", [("Content-Type", "text/plain"), ("Content-Length", "14")]

    def framing() -> bytes:
        version, keep = request_framing(msg)
        resp = Response(msg.method, version, keep, SERVER_HEADER)
        return resp.head(status, headers) + resp.body(b"Hello, world!\n") + resp.end()

    def app_only() -> object:
        return application({}, lambda s, h, e=None: None)

    payload = framing()
    sink = NullSink()

    def output_only() -> None:
        conn = Connection(msg.sender, msg.conn_id, msg.sender.encode())
        Output(conn, sink, None, 4 << 20, 0.005).finish(payload)

    def handler_call() -> None:
        conn = Connection(msg.sender, msg.conn_id, msg.sender.encode())
        handler(msg, Output(conn, sink, None, 4 << 20, 0.005))

    rows: dict[str, float] = {
        "parse_message": best_us(lambda: parse_message(raw), n, r),
        "environ build": best_us(lambda: handler.environ(msg, io.BytesIO(msg.body)), n, r),
        "request_framing + Response.head/body/end": best_us(framing, n, r),
        "app call (hello world)": best_us(app_only, n, r),
        "replies.reply": best_us(lambda: replies.reply(b"x" * 36, 17, payload), n, r),
        "Connection + Output + finish (null sink)": best_us(output_only, n, r),
        "WSGIHandler call (environ..Output, null sink)": best_us(handler_call, n, r),
    }
    cpu, _ = worker_feed_us(raw, handler, 1, n, r, inline=True)
    rows["worker.feed inline (parse..sink, no handoff) cpu"] = cpu
    cpu_t, wall_t = worker_feed_us(raw, handler, 1, n, r, inline=False)
    rows["worker.feed -> 1 app thread cpu"] = cpu_t
    rows["worker.feed -> 1 app thread wall"] = wall_t
    rows["  => handoff cost (thread - inline, cpu)"] = cpu_t - cpu
    rows.update(zmq_costs(raw, replies.reply(msg.sender.encode(), msg.conn_id, payload), n))
    rows.update(asgi_stages(raw, n, r))

    report: dict[str, Any] = {
        "request_bytes": len(raw),
        "reply_bytes": len(payload),
        "python": sys.version.split()[0],
        "us_per_request": rows,
    }
    if opts.json:
        print(json.dumps(report, indent=2))
        return 0
    print("request message %d bytes, reply payload %d bytes, Python %s, best of %d x %d"
          % (len(raw), len(payload), report["python"], r, n))  # fmt: skip
    for name, value in rows.items():
        print("%8.2f µs  %s" % (value, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
