#!/usr/bin/env python3
"""``make demo``: a real Mongrel2 plus ``m2gate serve examples/hello.py``.

Mongrel2 runs in the foreground from ``./demo-run/`` (config, logs, uploads), on
``PORT`` or a free port; m2gate connects to its handler sockets. Ctrl-C or
SIGTERM stops both, each by its own PID.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from m2gate.testing.mongrel2 import HandlerSpec, Mongrel2, Mongrel2Error

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("demo")


def m2gate_command() -> list[str]:
    """The venv's console script, else this interpreter's ``-m m2gate``."""
    script = ROOT / ".venv" / "bin" / "m2gate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "m2gate"]


def answered(port: int) -> bool:
    """True once GET / came back from the app (not a Mongrel2 error page)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return not (resp.getheader("Server") or "").startswith("Mongrel2")
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM by PID, then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            log.warning("m2gate pid %s did not stop in %ss, killing it", proc.pid, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the hello example behind Mongrel2.")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 0))
    parser.add_argument("--app", default=os.environ.get("APP", "examples/hello.py:application"))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("THREADS") or 4))
    parser.add_argument("--workdir", type=Path, default=ROOT / "demo-run")
    parser.add_argument("--timeout", type=float, default=30.0, help="startup timeout (s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="demo: %(message)s")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    m2 = Mongrel2(args.workdir, handlers=[HandlerSpec(route="/")], port=args.port or None)
    proc: subprocess.Popen[bytes] | None = None
    try:
        try:
            m2.start()
        except Mongrel2Error as exc:
            log.error("%s", exc)
            return 1
        spec = m2.handler
        cmd = [
            *m2gate_command(),
            "serve",
            args.app,
            "--send-spec",
            spec.send_spec,
            "--recv-spec",
            spec.recv_spec,
            "--send-ident",
            spec.send_ident,
            "--threads",
            str(args.threads),
        ]
        log.info("mongrel2 pid %s, logs in %s", m2.pid, m2.workdir / "logs")
        log.info("starting: %s", " ".join(cmd))
        # Own session: the terminal's Ctrl-C reaches us, and we stop m2gate first.
        proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, start_new_session=True)

        deadline = time.monotonic() + args.timeout
        while not answered(m2.port):
            if proc.poll() is not None:
                log.error("m2gate exited with status %s", proc.returncode)
                return 1
            if stop.is_set():
                return 0
            if time.monotonic() > deadline:
                log.error("no answer through Mongrel2 after %ss", args.timeout)
                return 1
            time.sleep(0.1)

        banner = f"m2gate demo ready:  {m2.url}/"
        print(
            f"\n{'=' * len(banner)}\n{banner}\n{'=' * len(banner)}\n"
            f"  try  {m2.url}/environ  {m2.url}/stream  (curl -N)\n"
            "  Ctrl-C to stop.\n",
            flush=True,
        )
        while not stop.wait(0.5):
            if proc.poll() is not None:
                log.error("m2gate exited with status %s", proc.returncode)
                return 1
            if not m2.running:
                log.error("mongrel2 exited; see %s", m2.error_log)
                return 1
        log.info("stopping")
        return 0
    finally:
        if proc is not None:
            stop_process(proc)
        m2.stop()


if __name__ == "__main__":
    sys.exit(main())
