#!/usr/bin/env python3
"""What the master costs per request with worker processes, stage by stage, in one process.

With ``m2gate serve -p N`` every request crosses the master twice: Mongrel2's
message in (PULL -> ``Router.on_message`` -> ROUTER to a worker) and the
worker's done report back (ROUTER -> ``Router.on_frames``). This script
builds a real ``Router`` (its ``Dispatcher``, ``Lifecycle``; N ready workers
of T threads) and feeds it a request message captured from a real Mongrel2
(tests/corpus/tnetstring_get_simple.bin), on 32 connection ids cycling like
wrk's keep-alive connections, in rounds of as many requests as the workers
take (threads + prefetch each), then their done reports. Stages, in CPU µs
per request (best of ``-r`` runs):

- ``classify``: ``parse_message`` (before) or ``peek`` (after) of the raw message;
- ``dispatcher``: ``Dispatcher.assign`` then ``on_done``, no I/O;
- ``on_message`` / ``on_frames``: the router with null sockets (its Python only),
  done reports one per frame and, where the tree batches them, one frame per
  worker per round;
- ``master loop``: ``on_pull`` + ``on_router`` on real inproc ZeroMQ sockets (the
  fake Mongrel2's PUSH and the workers' DEALERs are fed and drained outside
  the timed calls);
- ``worker report``: ``MasterLink.done`` in a worker, sent at once or batched.

``--before REF`` also measures the tree of git ref REF (``git archive``) in
the same invocation, side by side. Timings on a shared machine are noisy;
``--callgrind`` counts instructions instead (valgrind, load-independent):
each tree's stage run under ``valgrind --tool=callgrind`` for two request
counts, the difference divided by the difference in requests.

    .venv/bin/python benchmarks/handoff.py --before main
    .venv/bin/python benchmarks/handoff.py --before main --callgrind
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CAPTURED = ROOT / "tests" / "corpus" / "tnetstring_get_simple.bin"
CONNECTIONS = 32  # connection ids cycling, as wrk -c 32 keeps them


# == the child: measures the tree on its PYTHONPATH ============================


class NullSocket:
    """Takes whatever the router sends, so only its Python is timed."""

    def send_multipart(self, frames: Sequence[bytes], flags: int = 0) -> None:
        pass

    def send(self, data: bytes, flags: int = 0) -> None:
        pass


def with_conn_id(raw: bytes, conn_id: int) -> bytes:
    sender, _, rest = raw.split(b" ", 2)
    return b"%s %d %s" % (sender, conn_id, rest)


class Bench:
    """One master's router with ``workers`` ready workers of ``threads`` threads."""

    def __init__(self, workers: int, threads: int, null: bool) -> None:
        import zmq

        from m2gate.config.settings import Config
        from m2gate.supervisor import wire
        from m2gate.supervisor.handoff import Dispatcher
        from m2gate.supervisor.lifecycle import Lifecycle
        from m2gate.supervisor.router import Router
        from m2gate.supervisor.watch import Watcher

        self.zmq, self.wire = zmq, wire
        self.batched = hasattr(wire, "encode_reports")
        cfg = Config(processes=workers, threads=threads, send_ident="bench", recv_ident="")
        self.disp = Dispatcher(cfg.queue_size, cfg.prefetch)
        self.life = Lifecycle(cfg, self.disp, os.getpid())
        self.ctx = zmq.Context()
        self.feed = self.ctx.socket(zmq.PUSH)  # Mongrel2
        pull = self.ctx.socket(zmq.PULL)
        router = self.ctx.socket(zmq.ROUTER)
        for sock, opt in ((self.feed, zmq.SNDHWM), (pull, zmq.RCVHWM), (router, zmq.RCVHWM)):
            sock.setsockopt(opt, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.SNDHWM, 0)
        n = id(self)
        pull.bind("inproc://m2-%d" % n)
        self.feed.connect("inproc://m2-%d" % n)
        router.bind("inproc://workers-%d" % n)
        sockets: tuple[Any, Any, Any] = (pull, router, NullSocket())
        if null:
            sockets = (pull, NullSocket(), NullSocket())
        self.router = Router(cfg, self.disp, self.life, Watcher(cfg), sockets, lambda a: None)
        self.dealers: dict[bytes, Any] = {}
        now = time.monotonic()
        for action in self.life.start(now):
            w = action.worker  # type: ignore[attr-defined]
            dealer = self.ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.IDENTITY, w.wid)
            dealer.setsockopt(zmq.RCVHWM, 0)
            dealer.setsockopt(zmq.SNDHWM, 0)
            dealer.connect("inproc://workers-%d" % n)
            dealer.send_multipart([wire.HELLO, b"{}"])
            self.dealers[w.wid] = dealer
            self.life.on_ready(w, now)
        if not null:
            self.router.on_router(now)  # the hellos: the ROUTER knows every worker
        self.round = workers * (threads + cfg.prefetch)
        raw = CAPTURED.read_bytes()
        self.messages = [with_conn_id(raw, 1 + i % CONNECTIONS) for i in range(CONNECTIONS)]
        self.sender = raw.split(b" ", 1)[0]

    def close(self) -> None:
        self.ctx.destroy(linger=0)

    def in_flight(self) -> dict[bytes, list[tuple[str, int]]]:
        """Each worker's requests in flight, a connection once per request."""
        return {
            wid: [key for key, entries in w.inflight.items() for _ in entries]
            for wid, w in self.disp.workers.items()
        }

    def done_frames(self, batch: bool) -> list[list[bytes]]:
        """The done reports of everything in flight, as the workers would send them."""
        frames: list[list[bytes]] = []
        for wid, keys in self.in_flight().items():
            if not keys:
                continue
            if not self.batched:
                frames += [[wid, self.wire.DONE, b"%s %d" % (k[0].encode(), k[1])] for k in keys]
            elif batch:
                reports = [(k[0], k[1], 0) for k in keys]
                frames.append([wid, self.wire.DONE, self.wire.encode_reports(reports)])
            else:
                frames += [
                    [wid, self.wire.DONE, self.wire.encode_report(k[0], k[1], 0)] for k in keys
                ]
        return frames

    def rounds(self, requests: int) -> list[list[bytes]]:
        msgs = self.messages
        out, i = [], 0
        while i < requests:
            size = min(self.round, requests - i)
            out.append([msgs[(i + j) % len(msgs)] for j in range(size)])
            i += size
        return out


def classify_us(n: int, repeat: int) -> float:
    raw = CAPTURED.read_bytes()
    try:
        from m2gate.protocol.peek import peek as fn
    except ImportError:
        from m2gate.protocol.messages import parse_message as fn
    return best(lambda: [fn(raw) for _ in range(n)], n, repeat)


def dispatcher_us(b: Bench, n: int, repeat: int) -> float:
    """assign + on_done of already classified messages: the policy alone."""
    try:
        from m2gate.protocol.peek import peek as classify
    except ImportError:
        from m2gate.protocol.messages import parse_message as classify
    disp = b.disp
    items = [(classify(raw), raw) for raw in b.messages]
    per_round = [items[i % len(items)] for i in range(b.round)]

    def run() -> None:
        now = time.monotonic()
        for _ in range(n // b.round):
            for p, raw in per_round:
                disp.assign(p, raw, now)  # type: ignore[arg-type]
            for wid, keys in b.in_flight().items():
                for key in keys:
                    disp.on_done(wid, key, now, 0)

    return best(run, n // b.round * b.round, repeat)


Frames = list[list[list[bytes]]]  # each round's done frames


def recorded_frames(workers: int, threads: int, n: int, batch: bool) -> Frames:
    """The done frames of ``n`` requests, from a twin router (assignment is deterministic).

    Callgrind counts the whole process: a run that replays these counts the
    master's side alone, not the building of the workers' reports.
    """
    b = Bench(workers, threads, null=True)
    out: Frames = []
    for msgs in b.rounds(n):
        now = time.monotonic()
        for raw in msgs:
            b.router.on_message(raw, now)
        out.append(b.done_frames(batch))
        for f in out[-1]:
            b.router.on_frames(f, now)
    b.close()
    return out


def router_us(
    b: Bench, n: int, repeat: int, batch: bool, recorded: Frames | None = None
) -> tuple[float, float]:
    """CPU µs per request in on_message and in on_frames (null sockets)."""
    router, rounds = b.router, b.rounds(n)
    best_in = best_out = float("inf")
    for _ in range(repeat):
        t_in = t_out = 0.0
        for i, msgs in enumerate(rounds):
            now = time.monotonic()
            c0 = time.process_time()
            for raw in msgs:
                router.on_message(raw, now)
            c1 = time.process_time()
            frames = recorded[i] if recorded is not None else b.done_frames(batch)
            c2 = time.process_time()
            for f in frames:
                router.on_frames(f, now)
            c3 = time.process_time()
            t_in += c1 - c0
            t_out += c3 - c2
        best_in, best_out = min(best_in, t_in), min(best_out, t_out)
    return best_in / n * 1e6, best_out / n * 1e6


def loop_us(b: Bench, n: int, repeat: int, batch: bool, recorded: Frames | None = None) -> float:
    """on_pull + on_router on inproc sockets; feeding and draining are not timed."""
    zmq, router, rounds = b.zmq, b.router, b.rounds(n)
    best_t = float("inf")
    for _ in range(repeat):
        total = 0.0
        for i, msgs in enumerate(rounds):
            for raw in msgs:
                b.feed.send(raw)
            c0 = time.process_time()
            router.on_pull(time.monotonic())
            c1 = time.process_time()
            for dealer in b.dealers.values():  # the workers take what they were sent
                while dealer.poll(0):
                    dealer.recv_multipart(zmq.NOBLOCK)
            frames = recorded[i] if recorded is not None else b.done_frames(batch)
            for wid, *frame in frames:
                b.dealers[wid].send_multipart(frame)
            c2 = time.process_time()
            router.on_router(time.monotonic())
            c3 = time.process_time()
            total += (c1 - c0) + (c3 - c2)
        best_t = min(best_t, total)
    return best_t / n * 1e6


def worker_report_us(n: int, repeat: int) -> dict[str, float]:
    """MasterLink.done per report: sent at once, and batched (the receiving thread's)."""
    import zmq

    from m2gate.conn.connection import Connection
    from m2gate.supervisor.child import MasterLink

    ctx = zmq.Context()
    master = ctx.socket(zmq.ROUTER)
    master.setsockopt(zmq.RCVHWM, 0)
    master.bind("inproc://master")
    link = MasterLink(ctx, "inproc://master", b"w1", os.getppid())
    conns = [Connection("bench", 1 + i % CONNECTIONS, b"bench") for i in range(CONNECTIONS)]
    out: dict[str, float] = {}

    def drain() -> None:
        while master.poll(0):
            master.recv_multipart()

    def at_once() -> None:
        for i in range(n):
            link.done(conns[i % CONNECTIONS])
        drain()

    out["worker report, at once"] = best(at_once, n, repeat, reset=drain)
    flush = getattr(link, "_flush_reports", None)
    if flush is not None:
        link.recv(0)  # this thread receives now: its reports wait for the next block
        batch = 5

        def batched() -> None:
            for i in range(0, n, batch):
                for j in range(batch):
                    link.done(conns[(i + j) % CONNECTIONS])
                flush()
            drain()

        out["worker report, batched by %d" % batch] = best(batched, n, repeat, reset=drain)
    link.close(0)
    master.close(0)
    ctx.term()
    return out


def best(
    fn: Callable[[], object], n: int, repeat: int, reset: Callable[[], None] | None = None
) -> float:
    """Best CPU µs per item over ``repeat`` runs of ``fn`` (which does ``n`` items)."""
    t = float("inf")
    for _ in range(repeat):
        if reset is not None:
            reset()
        c0 = time.process_time()
        fn()
        t = min(t, time.process_time() - c0)
    return t / n * 1e6


# Callgrind's stages: the master's Python (null sockets) and its loop on inproc
# sockets, done reports one a frame ("1") or batched per worker and round.
IR_STAGES = {
    "router 1": "router: on_message + on_frames, 1 report a frame",
    "router": "router: on_message + on_frames, batched",
    "loop 1": "master loop (inproc zmq), 1 report a frame",
    "loop": "master loop (inproc zmq), batched",
}


def run_ir_stage(stage: str, n: int, most: int, workers: int, threads: int) -> None:
    """One run of ``stage`` (an :data:`IR_STAGES` key) on ``n`` requests, for callgrind.

    The reports of ``most`` requests are recorded first, whatever ``n``: the
    same cost in each run, so it cancels out of the difference.
    """
    batch = not stage.endswith(" 1")
    recorded = recorded_frames(workers, threads, most, batch)
    b = Bench(workers, threads, null=stage.startswith("router"))
    if stage.startswith("router"):
        router_us(b, n, 1, batch, recorded)
    else:
        loop_us(b, n, 1, batch, recorded)
    b.close()


def child(opts: argparse.Namespace) -> int:
    n, r = opts.number, opts.repeat
    if opts.ir_stage:
        run_ir_stage(opts.ir_stage, n, opts.ir_most, opts.workers, opts.threads)
        return 0
    stages: dict[str, float] = {"classify": classify_us(n, r)}
    b = Bench(opts.workers, opts.threads, null=True)
    stages["dispatcher assign + on_done"] = dispatcher_us(b, n, r)
    stages["on_message"], stages["on_frames, 1 report a frame"] = router_us(b, n, r, batch=False)
    if b.batched:
        stages["on_frames, batched"] = router_us(b, n, r, batch=True)[1]
    b.close()
    b = Bench(opts.workers, opts.threads, null=False)
    stages["master loop, 1 report a frame"] = loop_us(b, n, r, batch=False)
    if b.batched:
        stages["master loop, batched"] = loop_us(b, n, r, batch=True)
    b.close()
    stages.update(worker_report_us(n, r))
    import m2gate.protocol.messages as messages

    info = {"c_decoder": messages._c_pop is not None, "round": b.round, "batched": b.batched}
    json.dump({"stages": stages, "info": info}, sys.stdout)
    return 0


# == the parent: runs a child per tree =========================================


def run_child(src: Path, opts: argparse.Namespace, extra: Sequence[str] = ()) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", *child_args(opts), *extra]
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONHASHSEED="0")
    out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def child_args(opts: argparse.Namespace) -> list[str]:
    return [
        "-n",
        str(opts.number),
        "-r",
        str(opts.repeat),
        "-w",
        str(opts.workers),
        "-t",
        str(opts.threads),
    ]


def callgrind_ir(src: Path, opts: argparse.Namespace, stage: str) -> float:
    """Instructions per request of ``stage``: two runs, the difference per request."""
    counts = []
    sizes = (opts.ir_requests, opts.ir_requests * 3)
    with tempfile.TemporaryDirectory(prefix="m2gate-callgrind-") as tmp:
        for requests in sizes:
            cmd = [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=%s/out.%%p" % tmp,
                sys.executable,
                __file__,
                "--child",
                "--ir-stage",
                stage,
                "--ir-most",
                str(sizes[1]),
                "-n",
                str(requests),
                "-w",
                str(opts.workers),
                "-t",
                str(opts.threads),
            ]
            env = dict(os.environ, PYTHONPATH=str(src), PYTHONHASHSEED="0")
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            found = re.search(r"Collected\s*:\s*(\d+)", out.stderr)
            if found is None:
                raise RuntimeError(
                    "no instruction count in valgrind's output:\n" + out.stderr[-2000:]
                )
            counts.append(int(found.group(1)))
    return (counts[1] - counts[0]) / (sizes[1] - sizes[0])


def archive(ref: str, into: Path) -> Path:
    """The tree of git ref ``ref`` unpacked in ``into``; returns its src directory."""
    data = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=data, check=True)
    return into / "src"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("-n", "--number", type=int, default=20000, help="requests per run")
    parser.add_argument("-r", "--repeat", type=int, default=5, help="runs; the best is kept")
    parser.add_argument("-w", "--workers", type=int, default=2, help="worker processes (-p)")
    parser.add_argument("-t", "--threads", type=int, default=4, help="threads per worker")
    parser.add_argument("--before", metavar="REF", help="also measure git ref REF (e.g. main)")
    parser.add_argument("--callgrind", action="store_true", help="count instructions (valgrind)")
    parser.add_argument(
        "--ir-requests", type=int, default=2000, help="callgrind: requests of the smaller run"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ir-stage", choices=sorted(IR_STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--ir-most", type=int, default=0, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.child:
        return child(opts)
    if opts.callgrind and shutil.which("valgrind") is None:
        parser.error("--callgrind needs valgrind (apt-get install valgrind)")

    trees: list[tuple[str, Path]] = []
    with tempfile.TemporaryDirectory(prefix="m2gate-handoff-") as tmp:
        if opts.before:
            trees.append((opts.before, archive(opts.before, Path(tmp))))
        trees.append(("this tree", ROOT / "src"))
        results = {label: run_child(src, opts) for label, src in trees}
        if opts.callgrind:
            for label, src in trees:
                stages = results[label]["stages"]
                for stage, name in IR_STAGES.items():
                    stages["Ir " + name] = callgrind_ir(src, opts, stage)
    if opts.json:
        json.dump(results, sys.stdout, indent=1)
        print()
        return 0
    labels = [label for label, _ in trees]
    names: list[str] = []
    for label in labels:
        names += [s for s in results[label]["stages"] if s not in names]
    first = results[labels[0]]["info"]
    print(
        "%d worker(s) x %d thread(s), rounds of %d requests, C decoder: %s; CPU µs per request"
        " (Ir: instructions per request)"
        % (opts.workers, opts.threads, first["round"], first["c_decoder"])
    )
    width = max(len(n) for n in names) + 2
    ratio = len(labels) == 2
    print(
        "%-*s" % (width, "stage")
        + "".join("%12s" % lb for lb in labels)
        + ("  after/before" if ratio else "")
    )
    for name in names:
        values = [results[lb]["stages"].get(name) for lb in labels]
        fmt = "%.0f" if name.startswith("Ir") else "%.2f"
        line = "%-*s" % (width, name) + "".join(
            "%12s" % ("-" if v is None else fmt % v) for v in values
        )
        if ratio and None not in values and values[0]:
            line += "%14.2f" % (values[1] / values[0])
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
