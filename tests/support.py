"""Helpers test modules import by name: paths, the m2gate command, waiting.

Not in a conftest.py: tests/ and tests/integration each have one, so
``from conftest import ...`` would depend on which was imported last.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
APPS = Path(__file__).resolve().parent / "apps"

T = TypeVar("T")


def m2gate_command() -> list[str]:
    """The installed console script next to this interpreter, else ``-m m2gate``."""
    script = Path(sys.executable).with_name("m2gate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "m2gate"]


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (``kill(pid, 0)`` succeeds on zombies)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(
    check: Callable[[], T], what: str = "", timeout: float = 20.0, interval: float = 0.05
) -> T:
    """Poll ``check`` until it returns something truthy, and return that.

    Fails the test with AssertionError naming ``what`` after ``timeout``
    seconds; ``check`` is tried once more at the deadline, so a slow poll
    does not lose a condition that became true meanwhile.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what or check))
        time.sleep(interval)


def in_background(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` on a daemon thread; its result (or exception) lands in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception as exc:  # reported by the test's assertions
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out
