"""What the benchmarks share: owned processes, wrk runs, CPU from /proc, one measured side.

``bench_wsgi.py`` and ``bench_all.py`` import it (they run as scripts, so this
directory is on ``sys.path``). Every process started here runs in its own
session, is stopped by its PID (and its group) on exit, including Ctrl-C and
failures, and dies with the benchmark if that is SIGKILLed.
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
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from m2gate.testing.mongrel2 import Mongrel2

log = logging.getLogger("bench")

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
NAIVE = APPS / "naive_handler.py"
DEFAULT_APP = str(APPS / "hello.py") + ":application"
EXPECTED_BODY = b"Hello, world!\n"
CLK_TCK = os.sysconf("SC_CLK_TCK")


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
def stop_all() -> None:
    """Stop every process still owned (atexit too): none outlives the benchmark."""
    for proc in list(_OWNED.values()):
        stop(proc, grace=3.0)


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: unwind through every finally, as Ctrl-C does."""
    raise KeyboardInterrupt


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


def wait_answering(
    url: str, proc: subprocess.Popen[bytes] | None, log_path: Path, timeout: float
) -> None:
    """Short GETs until the handler (not Mongrel2) answers the expected body.

    Short, because a reply published before the PUB finished connecting is lost
    (ZeroMQ slow joiner) and that request would hang. With ``proc`` None the
    answer must come from Mongrel2 itself (a static file).
    """
    host, _, rest = url.removeprefix("http://").partition("/")
    hostname, _, port = host.partition(":")
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(
                "handler pid %s exited with %s:\n%s" % (proc.pid, proc.returncode, _tail(log_path))
            )
        conn = http.client.HTTPConnection(hostname, int(port), timeout=1.0)
        try:
            conn.request("GET", "/" + rest, headers={"Connection": "close"})
            resp = conn.getresponse()
            body = resp.read()
            server = resp.getheader("Server") or ""
            from_mongrel2 = server.startswith("Mongrel2")
            if resp.status == 200 and body == EXPECTED_BODY and from_mongrel2 == (proc is None):
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


# -- one side ------------------------------------------------------------------------


def measure(
    name: str,
    config: str,
    round_no: int,
    command: list[str] | None,
    env: dict[str, str],
    route_url: str,
    m2: Mongrel2,
    opts: argparse.Namespace,
    workdir: Path,
    lua: Path,
) -> SideResult:
    """Start one handler, warm it up, load it, read its CPU, stop it.

    ``command`` None measures Mongrel2 answering ``route_url`` itself (a Dir
    route): no handler, so its CPU and threads are empty.
    """
    log_path = workdir / ("%s.log" % name.replace(" ", "_").replace("=", ""))
    proc = spawn(command, log_path, env) if command is not None else None
    profiler: subprocess.Popen[bytes] | None = None
    prof_path: Path | None = None
    try:
        wait_answering(route_url, proc, log_path, opts.start_timeout)
        if opts.warmup > 0:
            warm = run_wrk(route_url, opts, opts.warmup, lua)
            if warm.error_count:
                log.warning("%s: warm-up saw errors %s", name, warm.errors)
        if proc is not None and opts.profile and name.startswith("m2gate"):
            prof_path = Path(opts.profile) / ("%s.txt" % name.replace(" ", "_").replace("=", ""))
            prof_path.parent.mkdir(parents=True, exist_ok=True)
            profiler = start_profiler(proc.pid, opts.duration, prof_path, opts.profile_rate)
            time.sleep(0.3)  # let py-spy attach before the load starts
        pids = process_tree(proc.pid) if proc is not None else []
        m2_pid = m2.pid
        if m2_pid is None:
            raise BenchError("mongrel2 is not running")
        cpu0, m2cpu0, threads0 = cpu_seconds(pids), cpu_seconds([m2_pid]), thread_cpu(pids)
        result = run_wrk(route_url, opts, opts.duration, lua)
        if proc is not None:
            pids = sorted(set(pids) | set(process_tree(proc.pid)))
        cpu1, m2cpu1, threads1 = cpu_seconds(pids), cpu_seconds([m2_pid]), thread_cpu(pids)
        load = os.getloadavg()[0]
        if proc is not None and proc.poll() is not None:
            raise BenchError("%s died under load:\n%s" % (name, _tail(log_path)))
        if m2.pid != m2_pid:
            raise BenchError("mongrel2 died under load:\n%s" % _tail(m2.error_log))
    finally:
        if profiler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(timeout=30)
            stop(profiler)
        if proc is not None:
            stop(proc)
    per_req = 1e6 / result.requests if result.requests else 0.0
    side = SideResult(
        name=name,
        config=config,
        round=round_no,
        command=shlex.join(command) if command is not None else "",
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


def format_row(
    columns: Sequence[tuple[str, int, str, str]], values: dict[str, Any], notes: str
) -> str:
    """One table line: ``columns`` are (title, width, key, %-format); None prints blank."""
    cells = []
    for _, width, key, fmt in columns:
        value = values.get(key)
        cells.append("%*s" % (width, "" if value is None else fmt % value))
    return " ".join(cells) + "  " + notes
