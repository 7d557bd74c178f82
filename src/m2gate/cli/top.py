"""``m2gate top``: a live view of a running master, as uwsgitop is for uWSGI.

Each second it reads the master's snapshot (the document ``m2gate status``
shows) from the control socket, or from ``--stats ADDR``, and redraws one
row per worker: pid, state, requests, RSS, and the request it has been
serving longest with its age; above them the totals, the request rate, the
master's queue and how long requests waited in it, and what adaptive workers
did. curses from the standard library draws it (``q`` or
Ctrl-C quits, and curses restores the terminal); ``--once`` prints one
frame as plain text, for scripts.

:func:`render` is pure (a snapshot in, lines out), so the frame is tested
without a terminal; the live loop around it only fetches, draws and reads keys.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from m2gate.cli.control import NotRunning, add_client_arguments, json_document, locate, request
from m2gate.ops.stats import tcp_address

Fetch = Callable[[], dict[str, Any]]

MAX_DOCUMENT = 32 * 1024 * 1024  # a --stats answer larger than this is not a stats document
DEFAULT_TIMEOUT = 5.0  # seconds per snapshot: the master answers within its own 5 s
EXIT_NOT_RUNNING = 1
EXIT_USAGE = 2

# Fits 80 columns with 16 left for the request ("METHOD PATH").
COLUMNS = "%-6s %7s %3s %-8s %7s %5s %7s %6s %6s %s"
HEADINGS = ("WORKER", "PID", "GEN", "STATE", "REQS", "BUSY", "RSS", "AVG", "AGE", "CURRENT REQUEST")


# -- fetching a snapshot -----------------------------------------------------------


def control_fetch(path: str, timeout: float) -> Fetch:
    """Snapshots from the master's control socket (what ``m2gate status`` asks)."""
    return lambda: request(path, "status", timeout)


def stats_fetch(addr: str, timeout: float) -> Fetch:
    """Snapshots from a ``--stats`` listener: HOST:PORT, :PORT or a unix socket path."""

    def fetch() -> dict[str, Any]:
        if "/" in addr:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = addr
        else:
            host, port = tcp_address(addr)
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            target = (host, port)
        data = b""
        try:
            sock.settimeout(timeout)
            sock.connect(target)
            while len(data) <= MAX_DOCUMENT and (chunk := sock.recv(65536)):
                data += chunk
        except OSError as exc:
            raise NotRunning("no answer on stats %s: %s" % (addr, exc.strerror or exc)) from None
        finally:
            sock.close()
        return json_document(data, "stats %s gave no stats document" % addr)

    return fetch


# -- one frame --------------------------------------------------------------------


class RateMeter:
    """Requests per second between two snapshots of the same master."""

    def __init__(self) -> None:
        self._last: tuple[Any, float, int] | None = None

    def update(self, doc: dict[str, Any]) -> float | None:
        pid, uptime, requests = doc.get("pid"), float(doc["uptime"]), int(doc["requests"])
        last, self._last = self._last, (pid, uptime, requests)
        if last is None or last[0] != pid or uptime <= last[1] or requests < last[2]:
            return None  # the first frame, or another master since
        return (requests - last[2]) / (uptime - last[1])


def duration(seconds: float) -> str:
    """``59s``, ``12m03s``, ``5h02m``, ``3d04h``: an uptime in at most six characters."""
    s = int(seconds)
    if s < 60:
        return "%ds" % s
    if s < 3600:
        return "%dm%02ds" % divmod(s, 60)
    if s < 86400:
        return "%dh%02dm" % (s // 3600, s % 3600 // 60)
    return "%dd%02dh" % (s // 86400, s % 86400 // 3600)


def _seconds(value: float) -> str:
    return "%dms" % round(value * 1000) if value < 1 else "%.2fs" % value


def _age(seconds: float) -> str:
    return "%.1fs" % seconds if seconds < 100 else duration(seconds)


def _current(worker: dict[str, Any]) -> tuple[str, str]:
    """The request the worker has served longest, and its age; ``-`` when idle."""
    entries = sorted(worker.get("in_flight", []), key=lambda e: -float(e.get("age", 0.0)))
    running = [e for e in entries if not e.get("pipelined")] or entries
    if not running:
        return "-", "-"
    first = running[0]
    what = first.get("request") or "conn %s" % first.get("conn_id", "?")
    more = len(entries) - 1
    return (what + (" (+%d)" % more if more else "")), _age(float(first.get("age", 0.0)))


def worker_row(w: dict[str, Any]) -> str:
    what, age = _current(w)
    return COLUMNS % (
        w.get("id", "?"),
        w.get("pid", "?"),
        w.get("generation", "?"),
        w.get("status", "?"),
        w.get("requests", 0),
        "%s/%s" % (w.get("busy", 0), w.get("threads", "?")),
        "%.1fM" % (w["rss"] / 1e6) if w.get("rss") else "-",
        _seconds(float(w.get("avg_request_time", 0.0))) if w.get("requests") else "-",
        age,
        what,
    )


def render(doc: dict[str, Any], rate: float | None = None) -> list[str]:
    """The frame for one snapshot: four lines of totals, the headings, a row per worker."""
    if not doc.get("ok", True):
        return ["m2gate: the master answered: %s" % doc.get("error", "an error")]
    workers = doc.get("workers", [])
    states: dict[str, int] = {}
    for w in workers:
        states[w.get("status", "?")] = states.get(w.get("status", "?"), 0) + 1
    uptime = float(doc.get("uptime", 0.0))
    requests = int(doc.get("requests", 0))
    master = [
        "m2gate %s" % doc.get("version", ""),
        "master pid %s" % doc.get("pid", "?"),
        "up %s" % duration(uptime),
        "generation %s" % doc.get("generation", "?")
        + (" (reloading to %s)" % doc["reloading_to"] if doc.get("reloading_to") else ""),
    ]
    if doc.get("stopping"):
        master.append("STOPPING")
    by_state = ", ".join("%d %s" % (n, state) for state, n in sorted(states.items()))
    pool = [
        "workers %d%s" % (len(workers), ": " + by_state if by_state else ""),
        "restarts %s" % doc.get("restarts", 0),
        "reloads %s" % doc.get("reloads", 0),
        "harakiri %s" % doc.get("harakiri", 0),
    ]
    traffic = [
        "requests %d" % requests,
        "rate %s" % ("%.1f/s" % rate if rate is not None else "-"),
        "avg %.1f/s" % (requests / uptime if uptime > 0 else 0.0),
        "queued %s" % doc.get("queued", 0),
        "rejected %s" % doc.get("rejected", 0),
    ]
    return [
        "  ".join(master),
        "  ".join(pool),
        "  ".join(traffic),
        waiting_line(doc),
        COLUMNS % HEADINGS,
    ] + [worker_row(w) for w in workers]


def waiting_line(doc: dict[str, Any]) -> str:
    """How long requests wait for a free thread, and what adaptive workers did about it."""
    oldest = float(doc.get("queue_oldest_wait", 0.0))
    recent = int(doc.get("queue_wait_recent", 0))
    parts = [
        "wait: oldest %s" % (_seconds(oldest) if doc.get("queued") else "-"),
        "last %ss: %s"
        % (
            doc.get("queue_wait_window", "?"),
            "%d waited, avg %s, max %s"
            % (
                recent,
                _seconds(float(doc.get("queue_wait_avg", 0.0))),
                _seconds(float(doc.get("queue_wait_max", 0.0))),
            )
            if recent
            else "none waited",
        ),
    ]
    low, high = doc.get("workers_min"), doc.get("workers_max")
    if low is not None and low != high:
        parts.append(
            "adaptive %s..%s: +%s -%s"
            % (low, high, doc.get("workers_spawned", 0), doc.get("workers_retired_idle", 0))
        )
    return "  ".join(parts)


HEADING_LINE = 4  # index of the column headings in :func:`render`'s lines
HINT_LINE = 1  # where the live view says how to quit


# -- the live view ----------------------------------------------------------------


def _live(fetch: Fetch, interval: float, first: dict[str, Any]) -> None:
    import curses

    meter = RateMeter()
    meter.update(first)

    def draw(stdscr: Any, lines: list[str], heading: int) -> None:
        height, width = stdscr.getmaxyx()
        stdscr.erase()
        for y, line in enumerate(lines[:height]):
            attr = curses.A_REVERSE if y == heading else curses.A_NORMAL
            try:
                stdscr.addnstr(y, 0, line.ljust(width), width, attr)
            except curses.error:  # written, but the cursor cannot move past the last cell
                pass
        stdscr.refresh()

    def main(stdscr: Any) -> None:
        try:
            curses.curs_set(0)
        except curses.error:
            pass  # a terminal that cannot hide its cursor
        doc, rate, error = first, None, ""
        while True:
            lines = render(doc, rate)
            heading = HEADING_LINE
            lines[HINT_LINE] += "    (q quits)"
            if error:
                lines = ["! %s (showing the last answer)" % error, *lines]
                heading += 1
            draw(stdscr, lines, heading)
            deadline = time.monotonic() + interval
            while (left := deadline - time.monotonic()) > 0:
                stdscr.timeout(max(1, int(left * 1000)))
                key = stdscr.getch()
                if key in (ord("q"), ord("Q")):
                    return
                if key == curses.KEY_RESIZE:
                    draw(stdscr, lines, heading)
            try:
                doc, error = fetch(), ""
                rate = meter.update(doc) if doc.get("ok", True) else None
            except NotRunning as exc:
                error, rate = str(exc), None

    try:
        curses.wrapper(main)
    except KeyboardInterrupt:
        pass  # Ctrl-C: curses.wrapper restored the terminal on its way out


# -- the command -----------------------------------------------------------------


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError("interval: %r is not 0.1 to 3600 seconds" % text)
    return value


def add_top_command(sub: Any) -> None:
    """Add ``m2gate top`` to the ``m2gate`` parser."""
    top = sub.add_parser("top", help="live view of the running master's workers")
    add_client_arguments(top)
    top.set_defaults(timeout=DEFAULT_TIMEOUT)
    top.add_argument(
        "--stats",
        default="",
        metavar="ADDR",
        help="read the master's --stats listener (HOST:PORT, :PORT or a unix socket path)"
        " instead of its control socket",
    )
    top.add_argument("--once", action="store_true", help="print one frame as text and exit")
    top.add_argument(
        "--interval", type=_interval, default=1.0, metavar="S", help="seconds between refreshes"
    )


def run_top(args: argparse.Namespace) -> int:
    """``m2gate top``: exit 0 when quit (or after ``--once``), 1 when no master answers."""
    try:
        if args.stats:
            fetch = stats_fetch(args.stats, args.timeout)
        else:
            fetch = control_fetch(locate(args.pidfile, args.app_dir, args.socket), args.timeout)
        doc = fetch()
    except NotRunning as exc:
        print("m2gate: %s" % exc, file=sys.stderr)
        return EXIT_NOT_RUNNING
    if args.once:
        print("\n".join(render(doc)))
        return 0
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("m2gate: top needs a terminal; --once prints one frame as text", file=sys.stderr)
        return EXIT_USAGE
    import curses

    try:
        _live(fetch, args.interval, doc)
    except curses.error as exc:
        print("m2gate: top: the terminal cannot be drawn on: %s" % exc, file=sys.stderr)
        return EXIT_USAGE
    return 0
