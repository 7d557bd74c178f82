"""Sticky routing: which worker *slot* a connection or a cookie value belongs to.

``--sticky conn`` keeps every message of a client connection on one worker;
``--sticky-cookie NAME`` sends requests carrying that cookie to the worker
its value hashes to. Both hash a key onto a :class:`Ring` of worker slots
(0..N-1, with virtual nodes), never onto pids or ROUTER identities: a
worker's replacement (crash, harakiri, recycling) inherits its slot, and a
reload's new generation takes the same slots, so the same keys land on the
same slot's new worker; a changed worker count moves only ~1/N of the keys.

Which worker of a slot serves (:func:`target`): the ready worker of the
newest generation. During a reload both generations hold each slot; a
slot's keys move to the new worker as soon as it is ready (the old one only
finishes what it has in flight), so at every moment each key has one
target. A slot with no ready worker (starting, dead and respawning) is not
replaced by another: its requests wait for it, up to ``queue_timeout`` (then
503), because breaking stickiness is what a stateful app cannot survive.

Requests waiting for their worker queue per slot (:class:`Waiting`), so a
busy worker's waiting requests never hold up those bound for the others.
The policy stays in :class:`~m2gate.supervisor.handoff.Dispatcher`, whose
hooks call this module only when sticky routing is on.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Generic, Protocol, TypeVar

from m2gate.config.settings import Config
from m2gate.protocol.cookies import cookie_value
from m2gate.protocol.peek import Peeked
from m2gate.supervisor.state import Key, Worker, WorkerState

VNODES = 160  # points per slot: keys spread within a few percent of 1/N each
READY = WorkerState.READY


def hash64(data: bytes) -> int:
    """A stable 64-bit hash (the same in every process and every run, unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class Ring:
    """Consistent hashing of keys onto slots ``0..slots-1``."""

    def __init__(self, slots: int, vnodes: int = VNODES) -> None:
        if slots < 1:
            raise ValueError("a ring needs at least one slot")
        self.slots = slots
        points = sorted(
            (hash64(b"slot %d vnode %d" % (s, v)), s) for s in range(slots) for v in range(vnodes)
        )
        self._points = [h for h, _ in points]
        self._owners = [s for _, s in points]

    def slot(self, key: bytes) -> int:
        """The slot of ``key``: the first point at or after its hash, clockwise."""
        i = bisect.bisect_left(self._points, hash64(key))
        return self._owners[i if i < len(self._points) else 0]


class Sticky:
    """The sticky policy of one master: its mode, cookie name and ring."""

    def __init__(self, mode: str, cookie: str, slots: int) -> None:
        if mode not in ("conn", "cookie"):
            raise ValueError("sticky mode %r" % mode)
        self.conn = mode == "conn"
        self.cookie = cookie.encode("ascii")
        self.ring = Ring(slots)

    @classmethod
    def from_config(cls, cfg: Config) -> Sticky | None:
        """The policy ``cfg`` asks for, None for ``sticky = none``."""
        if cfg.sticky == "none":
            return None
        return cls(cfg.sticky, cfg.sticky_cookie, cfg.workers)

    def resize(self, slots: int) -> None:
        """A new worker count: ~1/N of the keys move (none if it did not change)."""
        if slots != self.ring.slots:
            self.ring = Ring(slots)

    def slot_for(self, p: Peeked, raw: bytes) -> int | None:
        """The slot a new request belongs to; None: not sticky (no such cookie)."""
        if self.conn:
            return self.ring.slot(b"%s %d" % (p[0].encode("latin-1"), p[1]))
        value = cookie_value(raw, self.cookie, p[5])
        if value is None:
            return None
        return self.ring.slot(value)


def target(workers: Iterable[Worker], slot: int) -> Worker | None:
    """The worker serving ``slot`` now: ready, of the newest generation."""
    best: Worker | None = None
    for w in workers:
        if w.slot == slot and w.state is READY and (best is None or w.generation > best.generation):
            best = w
    return best


class _Item(Protocol):
    @property
    def key(self) -> Key: ...

    arrived: float


T = TypeVar("T", bound=_Item)


class Waiting(Generic[T]):
    """Requests waiting for their slot's worker: one FIFO per slot.

    A connection whose request waits here has its later requests wait in
    the same FIFO, behind it (:meth:`slot_of`), so they reach one worker
    in order.
    """

    def __init__(self) -> None:
        self.by_slot: dict[int, deque[T]] = {}
        self.count = 0
        self._keys: dict[Key, list[int]] = {}  # key -> [slot, requests waiting]

    def __iter__(self) -> Iterator[T]:
        for q in self.by_slot.values():
            yield from q

    def slot_of(self, key: Key) -> int | None:
        """The slot a request of ``key`` waits for, if one does."""
        entry = self._keys.get(key)
        return entry[0] if entry is not None else None

    def add(self, slot: int, item: T) -> None:
        q = self.by_slot.get(slot)
        if q is None:
            q = self.by_slot[slot] = deque()
        q.append(item)
        self.count += 1
        entry = self._keys.get(item.key)
        if entry is None:
            self._keys[item.key] = [slot, 1]
        else:
            entry[1] += 1

    def popleft(self, slot: int) -> T:
        q = self.by_slot[slot]
        item = q.popleft()
        if not q:
            del self.by_slot[slot]
        self._forget(item)
        return item

    def expire(self, now: float, timeout: float) -> list[T]:
        """Requests that waited longer than ``timeout`` (each FIFO is in arrival order)."""
        out: list[T] = []
        for slot in list(self.by_slot):
            q = self.by_slot[slot]
            while q and now - q[0].arrived > timeout:
                out.append(self.popleft(slot))
                if slot not in self.by_slot:
                    break
        return out

    def drop_key(self, key: Key) -> int:
        """Forget every request of ``key`` (its client went away); returns how many."""
        entry = self._keys.pop(key, None)
        if entry is None:
            return 0
        slot, n = entry
        q = self.by_slot[slot]
        kept = deque(item for item in q if item.key != key)
        if kept:
            self.by_slot[slot] = kept
        else:
            del self.by_slot[slot]
        self.count -= n
        return n

    def clear(self) -> None:
        self.by_slot.clear()
        self._keys.clear()
        self.count = 0

    def _forget(self, item: T) -> None:
        self.count -= 1
        entry = self._keys[item.key]
        entry[1] -= 1
        if not entry[1]:
            del self._keys[item.key]
