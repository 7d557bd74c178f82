#!/usr/bin/env python3
"""How close is m2gate to the cheapest possible Python handler?

One invocation starts one real Mongrel2 with two handler routes and puts the
same ``wrk`` load (keep-alive connections) on each side in turn:

- ``naive``: ``apps/naive_handler.py``, a bare pyzmq PULL/PUB loop replying a
  fixed ``200`` (the floor: no parsing, no environ, no framing);
- ``m2gate``: ``m2gate serve apps/hello.py`` (a hello-world WSGI app), once
  per ``--threads`` value, with any ``--m2gate-arg`` passed through.

It prints requests/s, p50/p99 latency, handler CPU time per request (from
``/proc/<pid>/stat``, summed over the handler's process tree, so a future
master/worker mode is counted whole), Mongrel2's CPU per request, and the ratio
m2gate / naive. A run in which wrk saw socket errors or non-2xx answers is
flagged and makes the exit status 1: its figures are not comparable.

Every process started here runs in its own session and is stopped by its PID
(and its group) on exit, including Ctrl-C and failures.

    .venv/bin/python benchmarks/bench_wsgi.py                 # 10 s per side
    .venv/bin/python benchmarks/bench_wsgi.py --quick         # smoke: 1 s per side
    .venv/bin/python benchmarks/bench_wsgi.py --threads 1 --m2gate-arg "-p 2" --json
    .venv/bin/python benchmarks/bench_wsgi.py --profile /tmp/prof   # py-spy on m2gate
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness import (
    DEFAULT_APP,
    NAIVE,
    WRK_LUA,
    BenchError,
    SideResult,
    format_row,
    measure,
    raise_interrupt,
    stop_all,
)

from m2gate.testing.mongrel2 import HandlerSpec, Mongrel2, Mongrel2Error

GOAL = 0.6

# The stages of m2gate's request path, by the function that contains each one
# (inclusive shares overlap: Output.finish contains the zmq send).
STAGES = (
    ("zmq recv + poll (receiving thread)", "ZmqTransport.recv"),
    ("parse_message", "parse_message"),
    ("dispatch (connection table, lock)", "ThreadedRuntime._dispatch"),
    ("handoff: queue put", "ThreadedRuntime._submit"),
    ("handoff: app thread wake-up (self only)", "ThreadedRuntime._work"),
    ("WSGIHandler call (all app-side work)", "WSGIHandler.__call__"),
    ("  environ build", "WSGIHandler.environ"),
    ("  the app itself", "application"),
    ("  Response.head", "Response.head"),
    ("  Output.finish (incl. zmq send)", "Output.finish"),
    ("    zmq send (lock + PUB)", "ZmqTransport.send"),
    ("request bookkeeping (_done)", "ThreadedRuntime._done"),
)


def summarize_profile(path: Path, top: int = 25) -> str:
    """Per-stage, then per-function sample shares from py-spy's collapsed stacks.

    Recorded with ``--gil``, a sample is a moment some thread held the GIL,
    so the shares split m2gate's Python-level time (not the ZeroMQ I/O
    thread, nor time in system calls without the GIL).
    """
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    stage_incl: collections.Counter[str] = collections.Counter()
    total = 0
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no profile written)"
    for line in text.splitlines():
        stack, _, count_raw = line.rpartition(" ")
        if not count_raw.isdigit():
            continue
        count = int(count_raw)
        # "process 123:"m2gate ..."" / "thread (0x...)" prefixes: keep function frames only.
        frames = [
            f.split(" (")[0] + " (" + _short(f) + ")"
            for f in stack.split(";")
            if "(" in f and ".py" in f
        ]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            incl[frame] += count
        functions = {f.split(" (")[0] for f in frames}
        for label, function in STAGES:
            if "(self only)" in label:
                if frames[-1].split(" (")[0] == function:
                    stage_incl[function] += count
            elif function in functions:
                stage_incl[function] += count
    if not total:
        return "(empty profile)"
    lines = ["samples: %d (GIL held)" % total, "      %  stage (inclusive unless noted)"]
    for label, function in STAGES:
        lines.append("  %5.1f  %s [%s]" % (100 * stage_incl[function] / total, label, function))
    lines += ["", "  self%  incl%  function"]
    for name, count in own.most_common(top):
        lines.append("  %5.1f  %5.1f  %s" % (100 * count / total, 100 * incl[name] / total, name))
    return "\n".join(lines)


def _short(frame: str) -> str:
    """``file.py:line`` relative to site-packages or src, to keep the table narrow."""
    inside = frame.split(" (", 1)[1].rstrip(")")
    for marker in ("site-packages/", "src/", "lib/python3."):
        if marker in inside:
            inside = inside.split(marker, 1)[1]
            break
    return inside.rsplit(":", 1)[0]


def m2gate_command(
    opts: argparse.Namespace, spec: HandlerSpec, threads: int, exe: str = ""
) -> list[str]:
    """``m2gate serve`` (or ``exe``, a command standing in for ``m2gate``) for ``spec``."""
    installed = Path(sys.executable).with_name("m2gate")
    if exe:
        base = shlex.split(exe)
    elif installed.exists():
        base = [str(installed)]
    else:
        base = [sys.executable, "-m", "m2gate"]
    extra = [arg for value in opts.m2gate_arg for arg in shlex.split(value)]
    return [
        *base,
        "serve",
        opts.app,
        "--send-spec",
        spec.send_spec,
        "--recv-spec",
        spec.recv_spec,
        "--send-ident",
        spec.send_ident,
        "--threads",
        str(threads),
        *extra,
    ]


def run(opts: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the JSON-able report."""
    workdir = Path(tempfile.mkdtemp(prefix="m2gate-bench-"))
    lua = workdir / "report.lua"
    lua.write_text(WRK_LUA)
    naive_spec = HandlerSpec(route="/naive/")
    app_spec = HandlerSpec(route="/app/")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for item in opts.m2gate_env:
        key, _, value = item.partition("=")
        env[key] = value
    variants = [("", "")]
    for item in opts.variant:
        label, _, exe = item.partition("=")
        variants.append((label, exe))
    sides: list[SideResult] = []
    try:
        with Mongrel2(workdir / "mongrel2", handlers=[naive_spec, app_spec]) as m2:
            naive_spec, app_spec = m2.handlers
            for round_no in range(1, opts.rounds + 1):
                suffix = "" if opts.rounds == 1 else " #%d" % round_no
                naive_cmd = [
                    sys.executable,
                    str(NAIVE),
                    naive_spec.send_spec,
                    naive_spec.recv_spec,
                    naive_spec.send_ident,
                ]
                naive_url = m2.url + "/naive/"
                sides.append(
                    measure(
                        "naive" + suffix, "naive", round_no, naive_cmd, env, naive_url, m2, opts,
                        workdir, lua,
                    )
                )  # fmt: skip
                for label, exe in variants:
                    for threads in opts.threads:
                        cmd = m2gate_command(opts, app_spec, threads, exe)
                        config = "m2gate%s threads=%d" % ("[%s]" % label if label else "", threads)
                        sides.append(
                            measure(
                                config + suffix, config, round_no, cmd, env, m2.url + "/app/", m2,
                                opts, workdir, lua,
                            )
                        )  # fmt: skip
    finally:
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    # Each side is compared with the naive run of its own round: the machine's
    # load drifts, and a neighbour's burst should hit both or neither.
    floors = {s.round: s.wrk.rps for s in sides if s.config == "naive"}
    for side in sides:
        floor = floors.get(side.round, 0.0)
        if side.config != "naive" and floor:
            side.ratio = side.wrk.rps / floor
    summary = []
    for config in dict.fromkeys(s.config for s in sides):
        runs = [s for s in sides if s.config == config]
        ratios = [s.ratio for s in runs if s.ratio is not None]
        summary.append(
            {
                "config": config,
                "runs": len(runs),
                "rps": statistics.median(s.wrk.rps for s in runs),
                "p50_ms": statistics.median(s.wrk.p50_ms for s in runs),
                "p99_ms": statistics.median(s.wrk.p99_ms for s in runs),
                "handler_cpu_us_per_req": statistics.median(s.handler_cpu_us_per_req for s in runs),
                "mongrel2_cpu_us_per_req": statistics.median(
                    s.mongrel2_cpu_us_per_req for s in runs
                ),
                "wrk_cpu_us_per_req": statistics.median(s.wrk_cpu_us_per_req for s in runs),
                "ratio": statistics.median(ratios) if ratios else None,
                "ok": all(s.ok for s in runs),
            }
        )
    naive_rps = [s.wrk.rps for s in sides if s.config == "naive"]
    floor = statistics.median(naive_rps) if naive_rps else 0.0
    return {
        "params": {
            "connections": opts.connections,
            "wrk_threads": opts.wrk_threads,
            "duration_s": opts.duration,
            "warmup_s": opts.warmup,
            "rounds": opts.rounds,
            "app": opts.app,
            "m2gate_args": opts.m2gate_arg,
            "m2gate_env": opts.m2gate_env,
            "variants": opts.variant,
            "thread_detail": opts.thread_detail,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "workdir": str(workdir) if opts.keep else None,
        },
        "goal_ratio": GOAL,
        "naive_rps": floor,
        "summary": summary,
        "sides": [dict(asdict(s), ok=s.ok) for s in sides],
        "ok": all(s.ok for s in sides),
    }


_COLUMNS = (
    # (title, width, key in a side or summary row, format)
    ("side", -30, "name", "%s"),
    ("req/s", 8, "rps", "%.0f"),
    ("p50 ms", 7, "p50_ms", "%.2f"),
    ("p99 ms", 7, "p99_ms", "%.2f"),
    ("handler µs/r", 12, "handler_cpu_us_per_req", "%.1f"),
    ("mongrel2 µs/r", 13, "mongrel2_cpu_us_per_req", "%.1f"),
    ("wrk µs/r", 8, "wrk_cpu_us_per_req", "%.1f"),
    ("ratio", 5, "ratio", "%.2f"),
)


def _row(values: dict[str, Any], notes: str) -> str:
    return format_row(_COLUMNS, values, notes)


def print_table(report: dict[str, Any], out: Any) -> None:
    p = report["params"]
    keys = ("connections", "wrk_threads", "duration_s", "warmup_s", "cpus", "python")
    print(
        "wrk -c %s -t %s -d %ss (warm-up %ss), keep-alive, %s CPU(s), Python %s"
        % tuple(p[k] for k in keys),
        file=out,
    )
    if p["m2gate_args"] or p["m2gate_env"]:
        print("m2gate extra args %s env %s" % (p["m2gate_args"], p["m2gate_env"]), file=out)
    header = " ".join("%*s" % (width, title) for title, width, _, _ in _COLUMNS) + "  notes"
    print(header, file=out)
    print("-" * len(header), file=out)
    for s in report["sides"]:
        w = s["wrk"]
        values = dict(s, rps=w["rps"], p50_ms=w["p50_ms"], p99_ms=w["p99_ms"])
        print(_row(values, "; ".join(s["notes"])), file=out)
    if p.get("thread_detail"):
        for s in report["sides"]:
            print("  %s, CPU µs/request by thread:" % s["name"], file=out)
            for label, value in sorted(s["thread_cpu_us_per_req"].items()):
                print("    %7.1f  %s" % (value, label), file=out)
    if p["rounds"] > 1:
        print(
            "\nmedians over %d rounds (each ratio against the naive run of its round)"
            % p["rounds"],
            file=out,
        )
        for m in report["summary"]:
            print(
                _row(dict(m, name=m["config"]), "" if m["ok"] else "ERRORS in some runs"), file=out
            )
    ratios = {m["config"]: m["ratio"] for m in report["summary"] if m["ratio"] is not None}
    if ratios:
        goal = report["goal_ratio"]
        main_ratio = ratios.get("m2gate threads=1")
        if main_ratio is not None:
            verdict = "MET" if main_ratio >= goal else "NOT met"
            print(
                "goal ratio >= %.2f for m2gate threads=1: %s (%.2f)" % (goal, verdict, main_ratio),
                file=out,
            )
        best = max(ratios, key=lambda k: ratios[k])
        print("best ratio: %.2f (%s)" % (ratios[best], best), file=out)
    if not report["ok"]:
        print(
            "\n!!! SOME RUNS HAD SOCKET ERRORS OR NON-2xx ANSWERS: THEIR FIGURES ARE NOT VALID !!!",
            file=out,
        )
        for s in report["sides"]:
            if not s["ok"]:
                print(
                    "!!! %s: %d requests, errors %s"
                    % (s["name"], s["wrk"]["requests"], s["wrk"]["errors"]),
                    file=out,
                )
    for s in report["sides"]:
        if s["profile"]:
            print(
                "\nprofile of %s (%s):\n%s"
                % (s["name"], s["profile"], summarize_profile(Path(s["profile"]))),
                file=out,
            )


def _threads(value: str) -> list[int]:
    try:
        counts = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            "--threads: expected a comma-separated list of integers"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("--threads: expected integers >= 1, e.g. 1,4")
    return counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--threads",
        type=_threads,
        default=None,
        help="m2gate --threads values to run, comma-separated (default 1,4; --quick: 1)",
    )
    parser.add_argument(
        "--m2gate-arg",
        action="append",
        default=[],
        metavar="ARGS",
        help="extra m2gate serve arguments, shell-split (repeatable), e.g. '-p 2'",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=COMMAND",
        help="also run COMMAND in place of the m2gate executable (A/B in the same rounds)",
    )
    parser.add_argument(
        "--m2gate-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for the m2gate process (repeatable)",
    )
    parser.add_argument(
        "--app",
        default=DEFAULT_APP,
        help="WSGI app for m2gate, answering 200 'Hello, world!' (default: %(default)s)",
    )
    parser.add_argument(
        "-c",
        "--connections",
        type=int,
        default=None,
        help="wrk keep-alive connections (default 32; --quick: 8)",
    )
    parser.add_argument(
        "-t", "--wrk-threads", type=int, default=None, help="wrk threads (default 2; --quick: 1)"
    )
    parser.add_argument(
        "-d",
        "--duration",
        type=int,
        default=None,
        help="measured seconds per side (default 10; --quick: 1)",
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up seconds per side (default 2; --quick: 1)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the naive/m2gate sequence; the best naive is the floor",
    )
    parser.add_argument("--wrk", default="wrk", help="wrk binary (default: %(default)s)")
    parser.add_argument("--wrk-timeout", type=int, default=5, help="wrk --timeout seconds")
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=20.0,
        help="seconds for a handler to answer its first request",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke-test sizes: 1 s warm-up and 1 s load per side, threads=1",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the report as JSON on stdout (table goes to stderr)",
    )
    parser.add_argument(
        "--profile", metavar="DIR", help="py-spy record m2gate during its measured runs into DIR"
    )
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (Mongrel2 and handler logs)"
    )
    parser.add_argument(
        "--thread-detail", action="store_true", help="print CPU per request of every handler thread"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    opts = parser.parse_args(argv)
    quick = opts.quick
    defaults = {
        "threads": [1] if quick else [1, 4],
        "connections": 8 if quick else 32,
        "wrk_threads": 1 if quick else 2,
        "duration": 1 if quick else 10,
        "warmup": 1 if quick else 2,
    }
    for key, value in defaults.items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    if opts.profile and Path(opts.profile).exists() and not Path(opts.profile).is_dir():
        parser.error("--profile: %s exists and is not a directory" % opts.profile)
    if shutil.which(opts.wrk) is None:
        parser.error("wrk not found (apt-get install wrk)")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if opts.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        report = run(opts)
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130
    except (BenchError, Mongrel2Error) as exc:
        print("bench_wsgi: error: %s" % exc, file=sys.stderr)
        return 2
    finally:
        stop_all()
    print_table(report, sys.stderr if opts.json else sys.stdout)
    if opts.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
