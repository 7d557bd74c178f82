"""How long requests waited in the master for a free worker thread.

ZeroMQ hides a handler's backlog: what Mongrel2 pushed and nobody took yet
sits in socket buffers nobody can count. Under a master the backlog is the
:class:`~m2gate.supervisor.handoff.Dispatcher`'s queue instead, so it can be
measured: the stats document shows these figures, Prometheus gets them, and
adaptive workers (:mod:`.lifecycle`) start a worker when requests wait.

:class:`WaitWindow` keeps totals since start and the last ``WINDOW`` seconds
in one-second buckets (bounded: at most ``WINDOW + 1`` of them), so a
figure never grows with traffic and costs O(1) per request.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

WINDOW = 10  # seconds the recent figures cover


@dataclass(slots=True)
class _Bucket:
    second: int
    count: int
    total: float
    longest: float


@dataclass(frozen=True)
class Recent:
    """The waits of the requests that left the queue in the last ``window`` seconds."""

    window: int
    count: int
    avg: float
    max: float


class WaitWindow:
    """Waits of requests that left the master's queue (to a worker, or 503 on timeout)."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self.count = 0  # requests that waited, since start
        self.total = 0.0  # seconds they waited, together
        self._buckets: deque[_Bucket] = deque(maxlen=window + 1)

    def add(self, wait: float, now: float) -> None:
        """One request left the queue at ``now`` after waiting ``wait`` seconds."""
        if wait < 0.0:
            wait = 0.0
        self.count += 1
        self.total += wait
        second = int(now)
        b = self._buckets[-1] if self._buckets else None
        if b is not None and b.second == second:
            b.count += 1
            b.total += wait
            if wait > b.longest:
                b.longest = wait
        else:
            self._buckets.append(_Bucket(second, 1, wait, wait))

    def recent(self, now: float) -> Recent:
        """Count, mean and longest wait over the last ``window`` seconds."""
        since = int(now) - self.window
        count, total, longest = 0, 0.0, 0.0
        for b in self._buckets:
            if b.second > since:
                count += b.count
                total += b.total
                longest = max(longest, b.longest)
        return Recent(self.window, count, total / count if count else 0.0, longest)
