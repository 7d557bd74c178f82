"""What the life cycle asks the master to do: plain values, carried out by the loop.

:class:`~m2gate.supervisor.lifecycle.Lifecycle` returns these instead of
forking or signalling itself, so its decisions are tested without processes.
"""

from __future__ import annotations

from dataclasses import dataclass

from m2gate.supervisor.state import Worker


@dataclass(frozen=True)
class Spawn:
    """Fork this worker (its record exists already; set its ``pid``)."""

    worker: Worker


@dataclass(frozen=True)
class Kill:
    """SIGKILL this worker."""

    worker: Worker


@dataclass(frozen=True)
class Dump:
    """SIGUSR2 this worker: it writes every thread's traceback (harakiri)."""

    worker: Worker


@dataclass(frozen=True)
class Send:
    """Send this worker a control frame (``ready``, ``stop``)."""

    worker: Worker
    frame: bytes


@dataclass(frozen=True)
class Notify:
    """Tell systemd (sd_notify)."""

    state: str


@dataclass(frozen=True)
class Fatal:
    """Say why the master gives up, on stderr (the exit code is set already)."""

    message: str


Action = Spawn | Kill | Dump | Send | Notify | Fatal
