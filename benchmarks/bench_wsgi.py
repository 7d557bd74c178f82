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
import atexit
import collections
import contextlib
import ctypes
import http.client
import json
import logging
import os
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from m2gate.testing.mongrel2 import HandlerSpec, Mongrel2, Mongrel2Error

log = logging.getLogger("bench_wsgi")

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
NAIVE = APPS / "naive_handler.py"
DEFAULT_APP = str(APPS / "hello.py") + ":application"
EXPECTED_BODY = b"Hello, world!\n"
CLK_TCK = os.sysconf("SC_CLK_TCK")
GOAL = 0.6

# wrk's done() hook prints one JSON line; parsing its human output is fragile.
WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


class BenchError(RuntimeError):
    """The benchmark could not run (a side did not start or answer)."""


# -- processes we own -------------------------------------------------------------

_OWNED: dict[int, subprocess.Popen[bytes]] = {}


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up before any fork (dlopen is not fork-safe)."""
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: atexit and finally remain
        return None
    return prctl


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Child side: a SIGKILLed benchmark must not leave handlers running."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def spawn(
    args: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``args`` in its own session (so its workers share its group), logged."""
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    _OWNED[proc.pid] = proc
    log.debug("started pid %s: %s", proc.pid, shlex.join(args))
    return proc


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM this PID, then SIGKILL its process group; idempotent."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.warning("pid %s ignored SIGTERM for %ss, killing it", proc.pid, grace)
    # Whatever is left in its group (workers of a master, or itself) goes now.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    _OWNED.pop(proc.pid, None)


@atexit.register
def _stop_all() -> None:
    for proc in list(_OWNED.values()):
        stop(proc, grace=3.0)


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwind through every finally, like Ctrl-C


# -- measurements ------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            # The command name may contain spaces: fields start after its ')'.
            return fh.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def process_tree(root: int) -> list[int]:
    """``root`` and its live descendants, from the ppid field of /proc/*/stat."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children[int(fields[1])].append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of ``pids`` (fields 14 and 15 of /proc/<pid>/stat)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def thread_cpu(pids: Sequence[int]) -> dict[str, float]:
    """CPU seconds per thread (user, system) of ``pids``, keyed ``pid/tid name``.

    Shows where a handler's CPU goes that a Python profiler cannot see: the
    receiving thread (tid == pid) vs app threads vs ZeroMQ's I/O thread.
    """
    out: dict[str, float] = {}
    for pid in pids:
        try:
            tids = os.listdir("/proc/%d/task" % pid)
        except FileNotFoundError:
            continue
        for tid in tids:
            try:
                with open("/proc/%d/task/%s/stat" % (pid, tid), encoding="ascii") as fh:
                    raw = fh.read()
            except FileNotFoundError:
                continue
            name = raw[raw.index("(") + 1 : raw.rindex(")")]
            fields = raw.rsplit(")", 1)[1].split()
            label = "%d/%s %s%s" % (pid, tid, name, " (main)" if str(pid) == tid else "")
            out[label + " user"] = int(fields[11]) / CLK_TCK
            out[label + " sys"] = int(fields[12]) / CLK_TCK
    return out


@dataclass
class WrkResult:
    """What wrk reported for one run."""

    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    cpu_s: float

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass
class SideResult:
    """One measured side: the load's outcome and what it cost."""

    name: str
    config: str
    round: int
    command: str
    wrk: WrkResult
    handler_cpu_us_per_req: float
    mongrel2_cpu_us_per_req: float
    wrk_cpu_us_per_req: float
    loadavg: float
    thread_cpu_us_per_req: dict[str, float]
    handler_pids: list[int]
    ratio: float | None = None
    profile: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.wrk.error_count == 0 and self.wrk.requests > 0


def run_wrk(url: str, opts: argparse.Namespace, seconds: int, lua: Path) -> WrkResult:
    """One wrk run with the shared parameters; parses the done() JSON line."""
    args = [
        opts.wrk,
        "-c",
        str(opts.connections),
        "-t",
        str(opts.wrk_threads),
        "-d",
        "%ds" % seconds,
        "--timeout",
        "%ds" % opts.wrk_timeout,
        "-s",
        str(lua),
        url,
    ]
    # wrk is the only child reaped during the run: the children rusage delta is its CPU.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _OWNED[proc.pid] = proc
    try:
        out, _ = proc.communicate(timeout=seconds + opts.wrk_timeout + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _OWNED.pop(proc.pid, None)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    text = out.decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError("wrk failed (exit %s):\n%s" % (proc.returncode, text))
    raw: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
    duration = raw["duration_us"] / 1e6
    return WrkResult(
        requests=raw["requests"],
        duration_s=duration,
        rps=raw["requests"] / duration if duration else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        errors={k: raw[k] for k in ("connect", "read", "write", "timeout", "status")},
        cpu_s=cpu,
    )


def wait_answering(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    """Short GETs until the handler (not Mongrel2) answers the expected body.

    Short, because a reply published before the PUB finished connecting is lost
    (ZeroMQ slow joiner) and that request would hang.
    """
    host, _, rest = url.removeprefix("http://").partition("/")
    hostname, _, port = host.partition(":")
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(
                "handler pid %s exited with %s:\n%s" % (proc.pid, proc.returncode, _tail(log_path))
            )
        conn = http.client.HTTPConnection(hostname, int(port), timeout=1.0)
        try:
            conn.request("GET", "/" + rest, headers={"Connection": "close"})
            resp = conn.getresponse()
            body = resp.read()
            server = resp.getheader("Server") or ""
            if resp.status == 200 and body == EXPECTED_BODY and not server.startswith("Mongrel2"):
                return
            last = "%s %r from %r" % (resp.status, body[:80], server)
        except (OSError, http.client.HTTPException) as exc:
            last = repr(exc)
        finally:
            conn.close()
        time.sleep(0.05)
    raise BenchError(
        "%s not answering as expected after %ss (%s):\n%s" % (url, timeout, last, _tail(log_path))
    )


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- profiling -----------------------------------------------------------------------


def start_profiler(pid: int, seconds: int, out: Path, rate: int) -> subprocess.Popen[bytes] | None:
    """py-spy record (all threads, collapsed stacks) on ``pid`` for ``seconds``."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        log.warning("--profile: py-spy not found (pip install py-spy); not profiling")
        return None
    args = [
        pyspy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(seconds),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--subprocesses",
        "--nonblocking",
        "--gil",
        "-o",
        str(out),
    ]
    return spawn(args, out.with_suffix(".log"))


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


# -- the two sides -------------------------------------------------------------------


def measure(
    name: str,
    config: str,
    round_no: int,
    command: list[str],
    env: dict[str, str],
    route_url: str,
    m2: Mongrel2,
    opts: argparse.Namespace,
    workdir: Path,
    lua: Path,
) -> SideResult:
    """Start one handler, warm it up, load it, read its CPU, stop it."""
    log_path = workdir / ("%s.log" % name.replace(" ", "_").replace("=", ""))
    proc = spawn(command, log_path, env)
    profiler: subprocess.Popen[bytes] | None = None
    prof_path: Path | None = None
    try:
        wait_answering(route_url, proc, log_path, opts.start_timeout)
        if opts.warmup > 0:
            warm = run_wrk(route_url, opts, opts.warmup, lua)
            if warm.error_count:
                log.warning("%s: warm-up saw errors %s", name, warm.errors)
        if opts.profile and name.startswith("m2gate"):
            prof_path = Path(opts.profile) / ("%s.txt" % name.replace(" ", "_").replace("=", ""))
            prof_path.parent.mkdir(parents=True, exist_ok=True)
            profiler = start_profiler(proc.pid, opts.duration, prof_path, opts.profile_rate)
            time.sleep(0.3)  # let py-spy attach before the load starts
        pids = process_tree(proc.pid)
        m2_pid = m2.pid
        if m2_pid is None:
            raise BenchError("mongrel2 is not running")
        cpu0, m2cpu0, threads0 = cpu_seconds(pids), cpu_seconds([m2_pid]), thread_cpu(pids)
        result = run_wrk(route_url, opts, opts.duration, lua)
        pids = sorted(set(pids) | set(process_tree(proc.pid)))
        cpu1, m2cpu1, threads1 = cpu_seconds(pids), cpu_seconds([m2_pid]), thread_cpu(pids)
        load = os.getloadavg()[0]
        if proc.poll() is not None:
            raise BenchError("%s died under load:\n%s" % (name, _tail(log_path)))
    finally:
        if profiler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(timeout=30)
            stop(profiler)
        stop(proc)
    per_req = 1e6 / result.requests if result.requests else 0.0
    side = SideResult(
        name=name,
        config=config,
        round=round_no,
        command=shlex.join(command),
        wrk=result,
        handler_cpu_us_per_req=(cpu1 - cpu0) * per_req,
        mongrel2_cpu_us_per_req=(m2cpu1 - m2cpu0) * per_req,
        wrk_cpu_us_per_req=result.cpu_s * per_req,
        loadavg=load,
        thread_cpu_us_per_req={
            k: round((v - threads0.get(k, 0.0)) * per_req, 2)
            for k, v in threads1.items()
            if v > threads0.get(k, 0.0)
        },
        handler_pids=pids,
    )
    if prof_path is not None:
        side.profile = str(prof_path)
        side.notes.append("profiled with py-spy: figures perturbed")
    cpus = os.cpu_count() or 1
    if load > cpus + 1:
        # wrk, Mongrel2 and the handler alone keep about `cpus` busy.
        side.notes.append("busy machine: load %.1f" % load)
    if not side.ok:
        side.notes.append("ERRORS: %s" % result.errors if result.requests else "NO REQUESTS")
    if "ERROR" in _tail(log_path, 200) or "Traceback" in _tail(log_path, 200):
        side.notes.append("handler logged errors, see %s" % log_path)
    return side


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
    cells = []
    for _, width, key, fmt in _COLUMNS:
        value = values.get(key)
        cells.append("%*s" % (width, "" if value is None else fmt % value))
    return " ".join(cells) + "  " + notes


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
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        report = run(opts)
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130
    except (BenchError, Mongrel2Error) as exc:
        print("bench_wsgi: error: %s" % exc, file=sys.stderr)
        return 2
    finally:
        _stop_all()
    print_table(report, sys.stderr if opts.json else sys.stdout)
    if opts.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
