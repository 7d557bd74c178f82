"""One worker process as the master sees it, and the one state its life is in.

The states and the moves between them are one table, as h11 keeps its
``_state.py``: every change goes through :meth:`Worker.to`, and a move the
table does not allow raises :class:`IllegalTransition` instead of leaving a
worker half in two states. The routing (:mod:`.handoff`) only gives new work
to ``READY`` workers; the life cycle (:mod:`.lifecycle`) decides the rest.

``ready_at`` is a fact, not a state: the clock at which the worker's reply
path was proven. A worker retired before that (an old generation's respawn
when a reload completes) is ``RETIRING`` without ever having been ``READY``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field

from m2gate.protocol.peek import describe

Key = tuple[str, int]


class WorkerState(enum.Enum):
    STARTING = "starting"  # forked; reply path not proven: gets no work
    READY = "ready"  # serving: the dispatcher gives it new work
    RETIRING = "retiring"  # no new work; finishes what it has in flight
    STOPPING = "stopping"  # retiring and idle: told to exit
    DUMPING = "dumping"  # harakiri: asked for its tracebacks, killed shortly
    KILLED = "killed"  # SIGKILL sent, not reaped yet
    GONE = "gone"  # reaped


S = WorkerState

# Every allowed move. KILLED and GONE are reachable from every live state: a
# kill (forced stop, timeouts) or a crash can come at any time.
TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    S.STARTING: frozenset({S.READY, S.RETIRING, S.KILLED, S.GONE}),
    S.READY: frozenset({S.RETIRING, S.DUMPING, S.KILLED, S.GONE}),
    S.RETIRING: frozenset({S.STOPPING, S.DUMPING, S.KILLED, S.GONE}),
    S.STOPPING: frozenset({S.DUMPING, S.KILLED, S.GONE}),
    S.DUMPING: frozenset({S.KILLED, S.GONE}),
    S.KILLED: frozenset({S.GONE}),
    S.GONE: frozenset(),
}

# No new work for these, and retiring them again changes nothing.
LEAVING = frozenset({S.RETIRING, S.STOPPING, S.DUMPING, S.KILLED, S.GONE})


class IllegalTransition(RuntimeError):
    """A worker was asked to move in a way :data:`TRANSITIONS` forbids (a bug)."""


@dataclass(slots=True)
class InFlight:
    """One request handed to a worker and not reported done yet.

    One is made per request, so it is a slotted dataclass, and METHOD and
    PATH stay the raw bytes the master saw until ``m2gate status`` asks.
    """

    key: Key
    started: float  # when the worker could start it (after the ones before it)
    pipelined: bool
    method: bytes = b""
    path: bytes = b""
    epoch: int = 0  # the Mongrel2 incarnation its connection id belongs to
    streaming: bool = False  # part of its response is out: only a close may follow

    @property
    def what(self) -> str:
        """``"METHOD PATH"``, for status."""
        return describe(self.method, self.path)


def stale_key(epoch: int, key: Key) -> Key:
    """Where a worker's entry of an old Mongrel2 incarnation waits for its done report.

    Its id may already name a new client: the entry keeps the worker's
    thread counted as busy, but no new request joins it and nobody answers it.
    """
    return ("%d %s" % (epoch, key[0]), key[1])


@dataclass
class Worker:
    """Everything the master knows about one worker process."""

    wid: bytes  # ROUTER identity
    pid: int
    generation: int
    capacity: int  # its thread count
    state: WorkerState = S.STARTING
    # routing (kept by the Dispatcher)
    # Each connection's requests in arrival order; the first is being served.
    inflight: dict[Key, list[InFlight]] = field(default_factory=dict)
    turn: int = 0  # when it was last picked for new work (round robin on ties)
    requests: int = 0
    busy_time: float = 0.0  # total seconds of served requests
    last_time: float = 0.0  # duration of the last request
    # adaptive prefetch (kept by the Dispatcher): queue slots beyond its threads
    # it may take now (-1: not known yet), the time between its done reports
    # while busy, the last one
    room: int = -1
    gap: float = 0.0
    last_done: float = 0.0
    # life cycle (kept by the Lifecycle)
    serial: int = 0
    # Its place in the fleet, 0..N-1: a replacement (crash, harakiri, recycling)
    # inherits it and each generation fills the same slots (sticky routing hashes
    # onto slots, not pids).
    slot: int = 0
    probe: int = 0  # its probe_base
    started: float = 0.0
    max_requests: int = 0  # 0: no limit
    ready_at: float | None = None  # when its reply path was proven
    deadline: float | None = None  # RETIRING/STOPPING: kill at; DUMPING: SIGKILL at
    answer: str = "502 Bad Gateway"  # for its requests in flight if it dies
    replaced: bool = False  # someone else covers its work: do not respawn it
    recycling: str = ""  # why a replacement for it is starting
    replaces: bytes = b""  # the worker this one retires once ready
    fatal: str = ""  # why its app could not be loaded
    # heartbeat
    rss: int = 0
    exceptions: int = 0
    disconnects: int = 0  # clients gone while their request was in flight

    def to(self, new: WorkerState) -> None:
        """Move to ``new``; raises :class:`IllegalTransition` if the table forbids it."""
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(
                "worker %s: %s -> %s" % (self.wid.decode(), self.state.name, new.name)
            )
        self.state = new

    @property
    def load(self) -> int:
        """Connections being served: each occupies one app thread."""
        return len(self.inflight)

    @property
    def pending(self) -> int:
        """Every request handed over and not done, pipelined ones included."""
        return sum(len(q) for q in self.inflight.values())

    def entries(self) -> Iterator[InFlight]:
        for q in self.inflight.values():
            yield from q
