#!/usr/bin/env python3
"""Every side of issue 10 in one invocation: the static file, the floor and m2gate as run.

One real Mongrel2 (one handler route per kind, one ``Dir`` route), the same
``wrk`` keep-alive load on each side in turn, interleaved in every round:

- ``static``: Mongrel2 serving ``hello.txt`` itself (no handler at all);
- ``naive``: ``apps/naive_handler.py``, the bare pyzmq handler (the floor);
- ``pip``, ``pip-t1``: ``m2gate serve`` from a fresh venv holding a plain
  ``pip install`` of this tree (not editable, no extras), built once and
  cached by the tree's hash; default settings, and ``--threads 1``;
- ``dev``: ``m2gate serve`` from this interpreter's venv with this tree's
  ``src`` first on ``PYTHONPATH`` (the fastest install);
- ``p2``, ``p2-t4``: the same with ``-p 2`` and ``-p 2 --threads 4``;
- ``p2-rr``, ``p2-direct``: ``-p 2`` with ``--dispatch round-robin`` (the
  master routes without looking at load) and ``--dispatch direct`` (no
  master in the request path: what the hand-off itself costs);
- ``asgi``: the same serving ``apps/hello_asgi.py`` (the asyncio runtime).

Each round runs every side with Mongrel2's access log off, then on (the
order flips every round; ``--access-log`` picks one set). For each side:
req/s, p50/p99, handler CPU µs per request (its whole process tree),
Mongrel2 CPU µs per request and the ratio to the naive side of the same round
and access-log setting; then the medians over ``--rounds`` and the goals of
issue 10, each met or NOT met with its figures. A side with socket errors or
non-2xx answers is flagged and makes the exit status 1.

Every process started here is stopped by its PID, also on Ctrl-C or failure.

    .venv/bin/python benchmarks/bench_all.py                      # 2 rounds, 10 s per side
    .venv/bin/python benchmarks/bench_all.py --quick              # smoke: 1 s per side
    .venv/bin/python benchmarks/bench_all.py --sides naive,dev,p2 --access-log off --json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import hashlib
import http.client
import json
import logging
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    APPS,
    DEFAULT_APP,
    EXPECTED_BODY,
    NAIVE,
    WRK_LUA,
    BenchError,
    format_row,
    measure,
    raise_interrupt,
    spawn,
    stop,
    stop_all,
)

from m2gate.testing.mongrel2 import DirSpec, HandlerSpec, Mongrel2, Mongrel2Error

log = logging.getLogger("bench_all")

REPO = Path(__file__).resolve().parents[1]
ASGI_APP = str(APPS / "hello_asgi.py") + ":app"
STATIC_FILE = "hello.txt"
LOG_SETTINGS = ("off", "on")
# Asks an install which m2gate it imports and whether the C decoder is on.
PROBE = (
    "import json, m2gate; from m2gate.protocol import messages; "
    "print(json.dumps({'c_decoder': messages._c_pop is not None, "
    "'file': m2gate.__file__, 'version': m2gate.__version__}))"
)
VENV_KEEP = 3  # cached pip venvs kept (most recently used first)
_BUILDING, _READY = ".m2gate-bench-building", ".m2gate-bench-ready"


@dataclass(frozen=True)
class Side:
    """One kind of answerer, as ``--sides`` names it."""

    key: str
    title: str
    install: str  # "static", "naive", "pip" or "dev" (or "dev[LABEL]" for a variant)
    args: tuple[str, ...] = ()
    app: str = DEFAULT_APP


SIDES = (
    Side("static", "Mongrel2 static file", "static"),
    Side("naive", "naive pyzmq (floor)", "naive"),
    Side("pip", "m2gate pip", "pip"),
    Side("pip-t1", "m2gate pip --threads 1", "pip", ("--threads", "1")),
    Side("dev", "m2gate dev", "dev"),
    Side("p2", "m2gate dev -p 2", "dev", ("-p", "2")),
    Side("p2-t4", "m2gate dev -p 2 --threads 4", "dev", ("-p", "2", "--threads", "4")),
    Side(
        "p2-rr",
        "m2gate dev -p 2 --dispatch round-robin",
        "dev",
        ("-p", "2", "--dispatch", "round-robin"),
    ),
    Side(
        "p2-direct", "m2gate dev -p 2 --dispatch direct", "dev", ("-p", "2", "--dispatch", "direct")
    ),
    Side("asgi", "m2gate dev ASGI", "dev", ("--interface", "asgi"), ASGI_APP),
)
SIDE_KEYS = tuple(s.key for s in SIDES)


@dataclass
class Install:
    """An ``m2gate`` to run: its command, its environment, what it imports."""

    label: str
    base: list[str]  # argv standing for ``m2gate``
    env: dict[str, str]
    python: list[str] | None  # argv standing for its ``python``, for the probe
    where: str
    probe: dict[str, Any] = field(default_factory=dict)


# -- the pip-installed venv ----------------------------------------------------------


def tree_files(repo: Path) -> list[Path]:
    """What ``pip install <repo>`` builds from: the metadata files and ``src``."""
    files = [repo / name for name in ("pyproject.toml", "README.md") if (repo / name).is_file()]
    for root, dirs, names in os.walk(repo / "src"):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.endswith(".egg-info"))
        files += [Path(root) / n for n in sorted(names) if not n.endswith((".pyc", ".pyo"))]
    return files


def tree_hash(repo: Path) -> str:
    """Hash of the tree's buildable files and of the interpreter the venv is made from."""
    digest = hashlib.sha256(sys.version.encode() + b"\0" + sys.base_prefix.encode() + b"\0")
    for path in tree_files(repo):
        digest.update(str(path.relative_to(repo)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _run_owned(args: list[str], log_path: Path, timeout: float) -> None:
    """Run ``args`` to completion as an owned process (stopped by PID if we are)."""
    proc = spawn(args, log_path)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError("%s took over %ss" % (shlex.join(args), timeout)) from None
    finally:
        stop(proc)
    if code != 0:
        raise BenchError("%s failed (exit %s):\n%s" % (shlex.join(args), code, _tail(log_path, 30)))


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """Only one benchmark builds or prunes in ``cache`` at a time."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def pip_venv(cache: Path, workdir: Path, timeout: float) -> Path:
    """A venv with ``pip install <this tree>`` in it, built unless cached.

    Built in place (venvs cannot be moved) under a "building" marker; a
    directory is only reused with the "ready" marker and only removed with
    one of the two, so nothing the benchmark did not make is touched.
    """
    key = tree_hash(REPO)
    venv = cache / ("venv-" + key)
    with _locked(cache):
        if (venv / _READY).exists():
            (venv / _READY).touch()
            log.info("pip venv: cached %s", venv)
            return venv
        if venv.exists():
            if not (venv / _BUILDING).exists():
                raise BenchError("%s exists and was not made by this benchmark" % venv)
            shutil.rmtree(venv)  # an interrupted build
        log.info("pip venv: building %s (python -m venv, pip install of %s)", venv, REPO)
        src = workdir / "pip-src"  # a copy: a build writes build/ and *.egg-info
        for path in tree_files(REPO):
            target = src / path.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        venv.mkdir()
        (venv / _BUILDING).touch()
        build_log = workdir / "pip-build.log"
        _run_owned([sys.executable, "-m", "venv", str(venv)], build_log, timeout)
        _run_owned([str(venv / "bin" / "pip"), "install", str(src)], build_log, timeout)
        (venv / _READY).touch()
        (venv / _BUILDING).unlink()
        _prune(cache, keep=venv)
    return venv


def _prune(cache: Path, keep: Path) -> None:
    """Remove all but the VENV_KEEP most recently used venvs this benchmark made."""
    ready = sorted(
        (p for p in cache.glob("venv-*") if (p / _READY).exists() and p != keep),
        key=lambda p: (p / _READY).stat().st_mtime,
        reverse=True,
    )
    for old in ready[VENV_KEEP - 1 :]:
        log.info("pip venv: removing old %s", old)
        shutil.rmtree(old, ignore_errors=True)


def probe(install: Install) -> dict[str, Any]:
    """What ``install`` imports: m2gate's file and version, whether the C decoder is on."""
    if install.python is None:
        return {"c_decoder": None, "file": None, "version": None}
    out = subprocess.run(
        [*install.python, "-c", PROBE],
        env=install.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if out.returncode != 0:
        raise BenchError("%s cannot import m2gate:\n%s" % (install.label, out.stderr[-2000:]))
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def make_installs(opts: argparse.Namespace, wanted: set[str], workdir: Path) -> dict[str, Install]:
    """The installs the chosen sides run, probed."""
    base_env = dict(os.environ, PYTHONUNBUFFERED="1")
    installs: dict[str, Install] = {}
    if "pip" in wanted:
        venv = pip_venv(Path(opts.cache_dir), workdir, opts.build_timeout)
        env = dict(base_env)
        env.pop("PYTHONPATH", None)  # a src on it would shadow the installed package
        installs["pip"] = Install(
            "pip", [str(venv / "bin" / "m2gate")], env, [str(venv / "bin" / "python")], str(venv)
        )
    dev_env = dict(base_env)
    dev_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH", "")) if p
    )
    script = Path(sys.executable).with_name("m2gate")
    dev_base = [str(script)] if script.exists() else [sys.executable, "-m", "m2gate"]
    installs["dev"] = Install("dev", dev_base, dev_env, [sys.executable], sys.prefix)
    for label, command in opts.variants:
        tokens = shlex.split(command)
        # "... python -m m2gate" can be probed; any other command is run as given.
        python = tokens[:-2] if tokens[-2:] == ["-m", "m2gate"] else None
        installs["dev[%s]" % label] = Install(
            "dev[%s]" % label, tokens, dict(base_env), python, command
        )
    chosen = {k: v for k, v in installs.items() if k in wanted}
    for install in chosen.values():
        install.probe = probe(install)
    return chosen


# -- the machine ---------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model and count, Python, kernel, date, and the tree measured."""
    model = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["lscpu"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            env=dict(os.environ, LC_ALL="C"),
        ).stdout
        for line in out.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "Model name":
                model = value.strip()
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(REPO)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True)
        status = [*git, "status", "--porcelain", "--", "src", "pyproject.toml"]
        dirty = subprocess.run(status, capture_output=True)
        if head.returncode == 0:
            commit = head.stdout.decode().strip() + ("+dirty" if dirty.stdout.strip() else "")
    return {
        "cpu_model": model or platform.processor() or "unknown",
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "kernel": platform.release(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "tree": str(REPO),
        "commit": commit,
    }


def mongrel2_version(url: str) -> str:
    """Mongrel2's Server header, read from the static route."""
    host, _, port = url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/static/" + STATIC_FILE)
        resp = conn.getresponse()
        resp.read()
        return resp.getheader("Server") or ""
    except (OSError, http.client.HTTPException):
        return ""
    finally:
        conn.close()


# -- the run -------------------------------------------------------------------------


def plan(opts: argparse.Namespace) -> list[Side]:
    """The chosen sides in table order, each dev side followed by its variants."""
    sides = []
    for side in SIDES:
        if side.key not in opts.sides:
            continue
        sides.append(side)
        if side.install == "dev":
            for label, _ in opts.variants:
                sides.append(
                    Side(
                        "%s[%s]" % (side.key, label),
                        "%s [%s]" % (side.title, label),
                        "dev[%s]" % label,
                        side.args,
                        side.app,
                    )
                )
    return sides


def command_for(
    side: Side, installs: dict[str, Install], naive: HandlerSpec, app: HandlerSpec, extra: list[str]
) -> tuple[list[str] | None, dict[str, str], str]:
    """(argv or None for Mongrel2 alone, environment, route) of one side."""
    if side.install == "static":
        return None, dict(os.environ), "/static/" + STATIC_FILE
    if side.install == "naive":
        argv = [sys.executable, str(NAIVE), naive.send_spec, naive.recv_spec, naive.send_ident]
        return argv, dict(os.environ, PYTHONUNBUFFERED="1"), naive.route
    install = installs[side.install]
    specs = ["--send-spec", app.send_spec, "--recv-spec", app.recv_spec]
    argv = [*install.base, "serve", side.app, *specs, "--send-ident", app.send_ident]
    return [*argv, *side.args, *extra], install.env, app.route


def run(opts: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the JSON-able report."""
    info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="m2gate-bench-all-"))
    records: list[dict[str, Any]] = []
    try:
        sides = plan(opts)
        installs = make_installs(opts, {s.install for s in sides}, workdir)
        for install in installs.values():
            log.info("%s", _install_line(_install_info(install)))
        lua = workdir / "report.lua"
        lua.write_text(WRK_LUA)
        static = workdir / "static"
        static.mkdir()
        (static / STATIC_FILE).write_bytes(EXPECTED_BODY)
        extra = [arg for value in opts.m2gate_arg for arg in shlex.split(value)]
        logs = [s for s in LOG_SETTINGS if opts.access_log in (s, "both")]
        current = logs[0]
        with Mongrel2(
            workdir / "mongrel2",
            handlers=[HandlerSpec(route="/naive/"), HandlerSpec(route="/app/")],
            dirs=[DirSpec("/static/", str(static))],
            settings={"disable.access_logging": int(current == "off")},
        ) as m2:
            naive_spec, app_spec = m2.handlers
            info["mongrel2"] = mongrel2_version(m2.url)
            for round_no in range(1, opts.rounds + 1):
                # Off, on; then on, off: neither set always runs on a fresher machine.
                for setting in logs if round_no % 2 else logs[::-1]:
                    if setting != current:
                        m2.restart({"disable.access_logging": int(setting == "off")})
                        current = setting
                    for side in sides:
                        argv, env, route = command_for(side, installs, naive_spec, app_spec, extra)
                        name = "%s log=%s #%d" % (side.title, setting, round_no)
                        result = measure(
                            name, side.key, round_no, argv, env, m2.url + route, m2, opts,
                            workdir, lua,
                        )  # fmt: skip
                        record = dict(asdict(result), ok=result.ok)
                        record.update(side=side.key, title=side.title, access_log=setting)
                        record["install"] = side.install
                        if argv is None:
                            record["handler_cpu_us_per_req"] = None
                        records.append(record)
                        log.info("%s: %.0f req/s", name, result.wrk.rps)
                        if m2.access_log.exists():
                            os.truncate(m2.access_log, 0)  # bounded disk; opened O_APPEND
    finally:
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return report(opts, info, installs, records, workdir)


def report(
    opts: argparse.Namespace,
    info: dict[str, Any],
    installs: dict[str, Install],
    records: list[dict[str, Any]],
    workdir: Path,
) -> dict[str, Any]:
    """Ratios, medians and goals from the measured runs."""
    # Each side against the naive run of its own round and access-log setting.
    floors = {
        (r["round"], r["access_log"]): r["wrk"]["rps"] for r in records if r["side"] == "naive"
    }
    for r in records:
        floor = floors.get((r["round"], r["access_log"]))
        r["ratio"] = r["wrk"]["rps"] / floor if floor and r["side"] != "naive" else None
    summary = []
    for key in dict.fromkeys((r["side"], r["access_log"]) for r in records):
        runs = [r for r in records if (r["side"], r["access_log"]) == key]
        ratios = [r["ratio"] for r in runs if r["ratio"] is not None]
        handler = [r["handler_cpu_us_per_req"] for r in runs]
        summary.append(
            {
                "side": key[0],
                "title": runs[0]["title"],
                "access_log": key[1],
                "runs": len(runs),
                "rps": statistics.median(r["wrk"]["rps"] for r in runs),
                "p50_ms": statistics.median(r["wrk"]["p50_ms"] for r in runs),
                "p99_ms": statistics.median(r["wrk"]["p99_ms"] for r in runs),
                "handler_cpu_us_per_req": None if None in handler else statistics.median(handler),
                "mongrel2_cpu_us_per_req": statistics.median(
                    r["mongrel2_cpu_us_per_req"] for r in runs
                ),
                "wrk_cpu_us_per_req": statistics.median(r["wrk_cpu_us_per_req"] for r in runs),
                "ratio": statistics.median(ratios) if ratios else None,
                "ratios": ratios,
                "ok": all(r["ok"] for r in runs),
            }
        )
    return {
        "machine": info,
        "params": {
            "connections": opts.connections,
            "wrk_threads": opts.wrk_threads,
            "duration_s": opts.duration,
            "warmup_s": opts.warmup,
            "rounds": opts.rounds,
            "sides": opts.sides,
            "access_log": opts.access_log,
            "m2gate_args": opts.m2gate_arg,
            "variants": ["%s=%s" % v for v in opts.variants],
            "workdir": str(workdir) if opts.keep else None,
        },
        "installs": {k: _install_info(v) for k, v in installs.items()},
        "sides": records,
        "summary": summary,
        "goals": goals(records),
        "ok": all(r["ok"] for r in records),
    }


# (what, numerator side, denominator side or "naive", target)
GOALS = (
    ("one process, pip install, default settings >= 0.70x the floor", "pip", "naive", 0.70),
    ("-p 2 >= 0.90x one process (dev install, same rounds)", "p2", "dev", 0.90),
    ("ASGI hello >= 0.50x the floor", "asgi", "naive", 0.50),
    ("plain pip install within 5% of the fastest install (pip / dev)", "pip", "dev", 0.95),
)


def goals(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal of issue 10 from the access-log-off runs: per-round quotients, median."""
    rps = {(r["side"], r["round"]): r["wrk"]["rps"] for r in records if r["access_log"] == "off"}
    rounds = sorted({r["round"] for r in records})
    out = []
    for what, num, den, target in GOALS:
        values = [
            rps[num, n] / rps[den, n] for n in rounds if rps.get((den, n)) and (num, n) in rps
        ]
        value = statistics.median(values) if values else None
        out.append(
            {
                "goal": what,
                "side": num,
                "against": den,
                "target": target,
                "value": value,
                "rounds": values,
                "met": None if value is None else value >= target,
            }
        )
    return out


# -- output --------------------------------------------------------------------------


def print_header(info: dict[str, Any], out: Any) -> None:
    print(
        "%s | %s CPU(s) | Python %s | Linux %s | %s | tree %s %s"
        % (
            info["cpu_model"],
            info["cpus"],
            info["python"],
            info["kernel"],
            info["date"],
            info["tree"],
            info["commit"],
        ),
        file=out,
    )


def _install_info(install: Install) -> dict[str, Any]:
    """What the report keeps of an install (not its whole environment)."""
    return {
        "label": install.label,
        "command": install.base,
        "where": install.where,
        "pythonpath": install.env.get("PYTHONPATH"),
        "probe": install.probe,
    }


def _install_line(install: dict[str, Any]) -> str:
    p = install["probe"]
    decoder = {True: "on", False: "OFF", None: "unknown"}[p.get("c_decoder")]
    return "install %-10s C tnetstring decoder %-7s m2gate %s from %s (%s)" % (
        install["label"],
        decoder,
        p.get("version") or "?",
        p.get("file") or "?",
        install["where"],
    )


_COLUMNS = (
    # (title, width, key, format)
    ("side", -34, "title", "%s"),
    ("log", 3, "access_log", "%s"),
    ("req/s", 8, "rps", "%.0f"),
    ("p50 ms", 7, "p50_ms", "%.2f"),
    ("p99 ms", 7, "p99_ms", "%.2f"),
    ("handler µs/r", 12, "handler_cpu_us_per_req", "%.1f"),
    ("mongrel2 µs/r", 13, "mongrel2_cpu_us_per_req", "%.1f"),
    ("wrk µs/r", 8, "wrk_cpu_us_per_req", "%.1f"),
    ("x naive", 7, "ratio", "%.2f"),
)


def print_table(rep: dict[str, Any], out: Any) -> None:
    print_header(rep["machine"], out)
    p = rep["params"]
    print(
        "%s | wrk -c %s -t %s -d %ss (warm-up %ss), keep-alive, %d-byte body | %d round(s)"
        % (
            rep["machine"].get("mongrel2") or "Mongrel2",
            p["connections"],
            p["wrk_threads"],
            p["duration_s"],
            p["warmup_s"],
            len(EXPECTED_BODY),
            p["rounds"],
        ),
        file=out,
    )
    for install in rep["installs"].values():
        print(_install_line(install), file=out)
    if p["m2gate_args"]:
        print("every m2gate side also gets %s" % p["m2gate_args"], file=out)
    header = " ".join("%*s" % (width, title) for title, width, _, _ in _COLUMNS) + "  notes"
    print("\n" + header + "\n" + "-" * len(header), file=out)
    for r in rep["sides"]:
        values = dict(r, title="%s #%d" % (r["title"], r["round"]), **_wrk_cells(r["wrk"]))
        print(format_row(_COLUMNS, values, "; ".join(r["notes"])), file=out)
    print(
        "\nmedians over %d round(s) (ratios against the naive run of the same round and log)"
        % p["rounds"],
        file=out,
    )
    print(header + "\n" + "-" * len(header), file=out)
    for m in rep["summary"]:
        print(format_row(_COLUMNS, m, "" if m["ok"] else "ERRORS in some runs"), file=out)
    print("\ngoals (Mongrel2's access log off, medians of per-round quotients):", file=out)
    for g in rep["goals"]:
        if g["met"] is None:
            verdict = "not evaluated (needs sides %s and %s, access log off)" % (
                g["side"],
                g["against"],
            )
        else:
            verdict = "%s: %.2f (rounds %s)" % (
                "met" if g["met"] else "NOT met",
                g["value"],
                ", ".join("%.2f" % v for v in g["rounds"]),
            )
        print("  %s: %s" % (g["goal"], verdict), file=out)
    if not rep["ok"]:
        print(
            "\n!!! SOME RUNS HAD SOCKET ERRORS OR NON-2xx ANSWERS: THEIR FIGURES ARE NOT VALID !!!",
            file=out,
        )
        for r in rep["sides"]:
            if not r["ok"]:
                print(
                    "!!! %s: %d requests, errors %s"
                    % (r["name"], r["wrk"]["requests"], r["wrk"]["errors"]),
                    file=out,
                )


def _wrk_cells(wrk: dict[str, Any]) -> dict[str, Any]:
    return {"rps": wrk["rps"], "p50_ms": wrk["p50_ms"], "p99_ms": wrk["p99_ms"]}


# -- command line --------------------------------------------------------------------


def _sides(value: str) -> list[str]:
    keys = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [k for k in keys if k not in SIDE_KEYS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(
            "expected a comma-separated subset of %s, got %r" % (",".join(SIDE_KEYS), value)
        )
    return keys


def _variant(value: str) -> tuple[str, str]:
    label, sep, command = value.partition("=")
    if not sep or not label.strip() or not command.strip() or not label.isidentifier():
        raise argparse.ArgumentTypeError("expected LABEL=COMMAND with LABEL a word, got %r" % value)
    return label, command


def _default_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "m2gate-bench")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--sides",
        type=_sides,
        default=list(SIDE_KEYS),
        help="comma-separated subset of %s (default: all); ratios need naive" % ",".join(SIDE_KEYS),
    )
    parser.add_argument(
        "--access-log",
        choices=("both", "on", "off"),
        default="both",
        help="Mongrel2's access log for the sides: off, on, or both sets (default: %(default)s)",
    )
    parser.add_argument(
        "--variant",
        dest="variants",
        type=_variant,
        action="append",
        default=[],
        metavar="LABEL=COMMAND",
        help="also run every dev side with COMMAND in place of m2gate, e.g."
        " 'mine=env PYTHONPATH=/other/src .venv/bin/python -m m2gate'",
    )
    parser.add_argument(
        "--m2gate-arg",
        action="append",
        default=[],
        metavar="ARGS",
        help="extra m2gate serve arguments for every m2gate side, shell-split (repeatable)",
    )
    parser.add_argument(
        "-c", "--connections", type=int, default=None, help="wrk connections (32; --quick: 8)"
    )
    parser.add_argument(
        "-t", "--wrk-threads", type=int, default=None, help="wrk threads (2; --quick: 1)"
    )
    parser.add_argument(
        "-d",
        "--duration",
        type=int,
        default=None,
        help="measured seconds per side (10; --quick: 1)",
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up seconds per side (2; --quick: 1)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds (2; --quick: 1)")
    parser.add_argument("--wrk", default="wrk", help="wrk binary (default: %(default)s)")
    parser.add_argument("--wrk-timeout", type=int, default=5, help="wrk --timeout seconds")
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=30.0,
        help="seconds for a handler to answer its first request",
    )
    parser.add_argument(
        "--cache-dir",
        default=_default_cache(),
        help="where the pip-installed venvs are kept, by tree hash (default: %(default)s)",
    )
    parser.add_argument(
        "--build-timeout", type=float, default=600.0, help="seconds for each venv build step"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke-test sizes: 1 round, 1 s warm-up, 1 s per side"
    )
    parser.add_argument(
        "--json", action="store_true", help="the report as JSON on stdout (table on stderr)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (Mongrel2 and handler logs)"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.set_defaults(profile=None, profile_rate=0)  # harness.measure's profiler: off
    opts = parser.parse_args(argv)
    quick = opts.quick
    defaults = {
        "connections": 8 if quick else 32,
        "wrk_threads": 1 if quick else 2,
        "duration": 1 if quick else 10,
        "warmup": 1 if quick else 2,
        "rounds": 1 if quick else 2,
    }
    for key, value in defaults.items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    for key in ("connections", "wrk_threads", "duration", "rounds"):
        if getattr(opts, key) < 1:
            parser.error("--%s: expected an integer >= 1" % key.replace("_", "-"))
    if opts.warmup < 0:
        parser.error("--warmup: expected an integer >= 0")
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
    started = time.monotonic()
    try:
        rep = run(opts)
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130
    except (BenchError, Mongrel2Error) as exc:
        print("bench_all: error: %s" % exc, file=sys.stderr)
        return 2
    finally:
        stop_all()
    out = sys.stderr if opts.json else sys.stdout
    print_table(rep, out)
    print("(%.0f s)" % (time.monotonic() - started), file=out)
    if opts.json:
        json.dump(rep, sys.stdout, indent=2)
        print()
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
