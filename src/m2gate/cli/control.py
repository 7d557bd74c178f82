"""``m2gate status|stop|reload``: the client side of the master's control socket.

The master is found through its pidfile (or ``--app-dir``, whose pidfile is
``DIR/run/m2gate.pid``), or ``--socket``; when none answers, the command says
why (no pidfile, stale pidfile, no answer) and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import Any

from m2gate.ops.pidfile import control_path_for, is_locked, pidfile_for_app_dir, read_pid

EXIT_NOT_RUNNING = 1


class NotRunning(Exception):
    """No master answers; the message is the one line shown."""


def request(path: str, command: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
    """Send one command to the master listening on ``path``; its JSON answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(json.dumps({"command": command, **args}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise NotRunning(
            "no answer on control socket %s: %s" % (path, exc.strerror or exc)
        ) from None
    finally:
        sock.close()
    return json_document(data, "control socket %s gave no valid answer" % path)


def json_document(data: bytes, failure: str) -> dict[str, Any]:
    """``data`` as a JSON object (a master's answer); else NotRunning saying ``failure``."""
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise NotRunning(failure)
    return doc


def locate(pidfile: str, app_dir: str, sock: str) -> str:
    """The control socket to use, or NotRunning saying clearly why there is none."""
    if sock:
        if not os.path.exists(sock):
            raise NotRunning("m2gate is not running (no control socket %s)" % sock)
        return sock
    if not pidfile:
        if not app_dir:
            raise NotRunning("pass --pidfile FILE, --app-dir DIR or --socket PATH")
        pidfile = pidfile_for_app_dir(app_dir)
    if not os.path.exists(pidfile):
        raise NotRunning("m2gate is not running (no pidfile %s)" % pidfile)
    if not is_locked(pidfile):
        pid = read_pid(pidfile)
        raise NotRunning(
            "m2gate is not running (stale pidfile %s%s)"
            % (pidfile, ", pid %d" % pid if pid else "")
        )
    return control_path_for(pidfile)


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pidfile",
        default="",
        metavar="FILE",
        help="the master's pidfile (one of --pidfile, --app-dir, --socket is needed)",
    )
    parser.add_argument(
        "--app-dir", default="", metavar="DIR", help="app folder (pidfile DIR/run/m2gate.pid)"
    )
    parser.add_argument("--socket", default="", metavar="PATH", help="the control socket itself")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the master's answer (default: %(default)s)",
    )


def _age(seconds: float) -> str:
    return "%.1fs" % seconds


def format_status(doc: dict[str, Any]) -> str:
    """Human-readable ``m2gate status``."""
    lines = [
        "m2gate master pid %s, generation %s%s, %d worker(s), %d request(s) queued, "
        "%d served"
        % (
            doc["pid"],
            doc["generation"],
            " (reloading to %s)" % doc["reloading_to"] if doc.get("reloading_to") else "",
            len(doc["workers"]),
            doc["queued"],
            doc["requests"],
        )
    ]
    lines.append(
        "  %-6s %-8s %-4s %-9s %-9s %-9s %s"
        % ("worker", "pid", "gen", "state", "requests", "rss", "in flight")
    )
    for w in doc["workers"]:
        inflight = ", ".join(
            " ".join(
                part
                for part in (
                    "conn %s" % e["conn_id"],
                    e.get("request", ""),
                    _age(e["age"]),
                    "(pipelined)" if e["pipelined"] else "",
                )
                if part
            )
            for e in w["in_flight"]
        )
        lines.append(
            "  %-6s %-8s %-4s %-9s %-9s %-9s %s"
            % (
                w["id"],
                w["pid"],
                w["generation"],
                w["status"],
                w["requests"],
                "%.1fMB" % (w["rss"] / 1e6) if w["rss"] else "-",
                inflight or "-",
            )
        )
    return "\n".join(lines)


def _wait_gone(path: str, pidfile: str, timeout: float) -> bool:
    """Until the master let go of its control socket and pidfile lock.

    (Not ``kill(pid, 0)``: an exited master stays a zombie until its parent reaps it.)
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(path) and not (pidfile and is_locked(pidfile)):
            return True
        time.sleep(0.05)
    return False


def run_command(command: str, args: argparse.Namespace) -> int:
    """``m2gate status|stop|reload``: print the master's acknowledgement."""
    try:
        path = locate(args.pidfile, args.app_dir, args.socket)
        if command == "status":
            doc = request(path, "status", args.timeout)
            print(json.dumps(doc, indent=2) if args.json else format_status(doc))
            return 0
        if command == "reload":
            ack = request(path, "reload", args.timeout)
            if not ack.get("ok"):
                print("m2gate: reload refused: %s" % ack.get("error"), file=sys.stderr)
                return 1
            print(
                "m2gate (pid %s): reloading, generation %s starting"
                % (ack["pid"], ack["generation"])
            )
            if args.wait:
                return _wait_reloaded(path, int(ack["generation"]), args.timeout)
            return 0
        ack = request(path, "stop", args.timeout)
        pid = int(ack["pid"])
        print("m2gate (pid %d): stopping" % pid)
        if args.wait:
            pidfile = args.pidfile or (pidfile_for_app_dir(args.app_dir) if args.app_dir else "")
            if not _wait_gone(path, pidfile, args.timeout):
                print(
                    "m2gate: pid %d still running after %ss" % (pid, args.timeout), file=sys.stderr
                )
                return 1
            print("m2gate (pid %d): stopped" % pid)
        return 0
    except NotRunning as exc:
        print("m2gate: %s" % exc, file=sys.stderr)
        return EXIT_NOT_RUNNING


def _wait_reloaded(path: str, generation: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = request(path, "status", timeout)
        if doc["generation"] >= generation and not doc.get("reloading_to"):
            print("m2gate (pid %s): generation %s serving" % (doc["pid"], doc["generation"]))
            return 0
        if doc["generation"] < generation and not doc.get("reloading_to"):
            print(
                "m2gate: reload to generation %d failed (see the log)" % generation, file=sys.stderr
            )
            return 1
        time.sleep(0.1)
    print("m2gate: reload not finished after %ss" % timeout, file=sys.stderr)
    return 1


def add_commands(sub: Any) -> None:
    """Add the status, stop and reload sub-commands to the ``m2gate`` parser."""
    status = sub.add_parser("status", help="show the running master's workers")
    add_client_arguments(status)
    status.add_argument("--json", action="store_true", help="print the raw JSON answer")
    stop = sub.add_parser("stop", help="stop the running master gracefully")
    add_client_arguments(stop)
    stop.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait until it exited (default)",
    )
    reload = sub.add_parser("reload", help="reload the running master's workers gracefully")
    add_client_arguments(reload)
    reload.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="wait until the new generation serves",
    )
