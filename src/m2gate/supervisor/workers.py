"""Worker processes at the OS level: fork, signal, reap.

The decisions (when, which, why) are :mod:`.lifecycle`'s; this is the only
place the master forks or signals a worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from m2gate.supervisor.child import WorkerSpec, child_main
from m2gate.supervisor.state import Worker

log = logging.getLogger("m2gate.master")


def fork(spec: WorkerSpec) -> int:
    """Fork a worker running ``spec``; returns its pid (the child never returns)."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the master's code
        code = 1
        try:
            code = child_main(spec)
        finally:
            os._exit(code)
    return pid


def signal_worker(w: Worker, signum: int) -> None:
    """Send ``signum`` to ``w`` if it was forked and still exists."""
    if w.pid <= 0:  # never os.kill(0, ...): that is our whole process group
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(w.pid, signum)


def reap() -> Iterator[tuple[int, int]]:
    """Every child that exited, as (pid, exit code or -signal); never blocks."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, os.waitstatus_to_exitcode(status)
