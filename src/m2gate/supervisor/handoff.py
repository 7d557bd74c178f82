"""Which worker gets which Mongrel2 message: the master's hand-off policy.

No sockets and no clocks of its own, so it is unit-tested directly and can be
replaced (idle-aware or sticky routing) without touching the master's I/O.
The master owns the only PULL from Mongrel2; it peeks at each message
(:func:`~m2gate.protocol.peek.peek`: its connection, kind, METHOD and PATH;
the worker parses it), asks :meth:`Dispatcher.assign` where it goes, and
reports what workers say back (:meth:`Dispatcher.on_done`,
:meth:`Dispatcher.mark_ready`, ...).

Rules (each from a measured Mongrel2 fact):

- Everything for a connection that is in flight on a worker goes to that
  worker: pipelined requests (it answers them in order), upload-done,
  disconnect and credits notices. Notices would otherwise never reach it.
  An upload-done after the request was answered goes to the worker that
  answered it: only it can tell a late notice from a forged one. After the
  connection's disconnect nothing of it is late: an upload-done is then a
  new (forged) request, counted like one, and the worker answers it and
  reports it done (:mod:`m2gate.runtime.base`: both sides forget the
  connection at its disconnect, so they agree on what is counted).
- New work goes to the least loaded *ready* worker with a free thread.
  Nothing goes to a worker before its reply path is proven (``ready``):
  ZeroMQ silently drops what a fresh PUB sends before it has connected.
- When every thread is busy the request waits here, in arrival order, so a
  worker that leaves (reload, recycling, harakiri) never strands requests.
- :class:`RoundRobin` (``--dispatch round-robin``) only changes :meth:`~Dispatcher.pick`:
  new work goes to the next ready worker in turn whatever its load (it
  queues in that worker, as Mongrel2's PUSH would queue it), and everything
  else, in-flight tracking included, is the same.
- A worker that dies leaves its running requests to be answered (502/504,
  or closed mid-stream); those still waiting in it for a thread (prefetched)
  go to the others or its replacement (:meth:`Dispatcher.take_waiting`).
- A worker holds an upload's request until Mongrel2's upload-done (unless
  ``stream_uploads``): no app runs meanwhile, so harakiri does not count the
  client's upload time; the request's clock starts at upload-done.
- Sticky routing (``sticky``, off by default; :mod:`.sticky`): a new
  request goes to its slot's worker or waits for it, in a FIFO per slot.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from m2gate.conn.uploads import announced_path
from m2gate.protocol.peek import CONTROL, DISCONNECT, UPLOAD_DONE, Peeked
from m2gate.supervisor.state import InFlight, Key, Worker, WorkerState, stale_key
from m2gate.supervisor.sticky import Sticky, Waiting, target
from m2gate.supervisor.waits import WaitWindow

# Idle keep-alive connections remembered for their notices (credits, disconnect).
LAST_SERVED_MAX = 65536
# Adaptive prefetch (Dispatcher.pick/_pace): how long a request handed to a
# busy worker may expect to wait in it, and how fast the estimate of the
# worker's pace follows new done reports.
PREFETCH_WAIT = 0.005
GAP_WEIGHT = 0.05
# Methods a request of which may run again if it did already (RFC 9110 9.2.2).
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
READY = WorkerState.READY


@dataclass(slots=True)
class Queued:
    """A request waiting in the master for a free worker."""

    peeked: Peeked  # what :func:`~m2gate.protocol.peek.peek` saw of it
    raw: bytes
    arrived: float

    @property
    def key(self) -> Key:
        return (self.peeked[0], self.peeked[1])


# Decisions: one Forward per worker and one of each other kind, made once and
# returned again (a decision per message is only ever read).
@dataclass(frozen=True)
class Forward:
    """Send the raw message to this worker."""

    wid: bytes


@dataclass(frozen=True)
class Hold:
    """Keep the request in the master's queue until a worker is free."""


@dataclass(frozen=True)
class Drop:
    """Nothing to do with it (stale notice, unknown connection)."""


@dataclass(frozen=True)
class Reject:
    """The queue is full: answer 503 now."""


def _stuck(w: Worker, load: int, now: float) -> bool:
    """Whether busy ``w``'s oldest request has run longer than its pace explains.

    The first connection in ``w.inflight`` is the oldest one there (dicts keep
    insertion order): one look, not a scan.
    """
    for q in w.inflight.values():
        return now - q[0].started > PREFETCH_WAIT + load * w.gap * 2
    return False


Decision = Forward | Hold | Drop | Reject
HOLD, DROP, REJECT = Hold(), Drop(), Reject()


class Dispatcher:
    """Tracks workers and requests in flight; decides where messages go."""

    def __init__(self, queue_size: int = 10000, prefetch: int = 0) -> None:
        self.queue_size = queue_size
        # Connections a worker may hold beyond its threads (queued in it), so its
        # next request is there when a thread frees up instead of one master
        # round trip later.
        self.prefetch = prefetch
        self.workers: dict[bytes, Worker] = {}
        self.owner: dict[Key, bytes] = {}
        self.last: OrderedDict[Key, bytes] = OrderedDict()
        self.queue: deque[Queued] = deque()
        self._queued_keys: dict[Key, int] = {}
        self._turn = 0
        self._forward: dict[bytes, Forward] = {}
        # Connections whose request waits in its worker for upload-done (no app runs).
        self.uploading: set[Key] = set()
        # Connections whose disconnect came while in flight: not remembered in
        # ``last`` when done (their worker forgot them already).
        self._left: set[Key] = set()
        self.hold_uploads = True  # False with stream_uploads: the app reads as it arrives
        self.epoch = 0  # Mongrel2 incarnations gone (see reset_frontend)
        # Queue waits, measured (stats, metrics, adaptive workers): see oldest_wait below.
        self.waits = WaitWindow()
        # Sticky routing (None: off) and the requests waiting for their slot's worker.
        self.sticky: Sticky | None = None
        self.waiting: Waiting[Queued] = Waiting()
        # Plain requests handed to a worker whose threads were all busy (a
        # prefetch slot), raw, so that they can go elsewhere if it dies first.
        self.spare: dict[Key, bytes] = {}

    # -- workers -----------------------------------------------------------
    def add_worker(self, w: Worker) -> None:
        self.workers[w.wid] = w

    def mark_ready(self, wid: bytes) -> None:
        w = self.workers.get(wid)
        if w is not None and w.state is WorkerState.STARTING:
            w.to(WorkerState.READY)

    def retire(self, wid: bytes) -> None:
        """No new work for ``wid``; its connections in flight stay with it.

        A worker already leaving (stopping, dumping, killed) stays as it is.
        """
        w = self.workers.get(wid)
        if w is not None and w.state in (WorkerState.STARTING, WorkerState.READY):
            w.to(WorkerState.RETIRING)

    def remove_worker(self, wid: bytes) -> list[InFlight]:
        """Forget a worker that is gone; returns what it had in flight (to answer)."""
        w = self.workers.pop(wid, None)
        self._forward.pop(wid, None)
        if w is None:
            return []
        lost = list(w.entries())
        for key in w.inflight:
            self.spare.pop(key, None)
            if self.owner.get(key) == wid:
                del self.owner[key]
            self.last.pop(key, None)
            self.uploading.discard(key)
            self._left.discard(key)
        return lost

    def take_waiting(self, wid: bytes) -> list[bytes]:
        """Take back from a dead ``wid`` the requests no thread of it had begun (raw, in order).

        The worker runs its connections first come, first served on
        ``capacity`` threads: a connection whose first request came behind
        another is on its thread; the others got a thread in the order their
        request could start (``started``), so all but the first free ones
        were still waiting in its queue. Only a plain request of an
        idempotent method (RFC 9110 9.2.2) alone on its connection is taken:
        if a done report died with the worker, a request counted as waiting
        may have run, and only those may safely run twice. The rest stays,
        for :meth:`remove_worker` (answered 502).
        """
        w = self.workers.get(wid)
        if w is None or not self.spare:
            return []
        on_threads = 0
        order: list[tuple[float, int, Key]] = []
        for i, (key, q) in enumerate(w.inflight.items()):
            if q[0].pipelined:
                on_threads += 1
            elif key not in self.uploading:  # a held upload has no thread yet
                order.append((q[0].started, i, key))
        order.sort()
        taken: list[bytes] = []
        for _, _, key in order[max(0, w.capacity - on_threads) :]:
            q = w.inflight[key]
            raw = self.spare.get(key)
            entry = q[0]
            if (
                raw is None
                or len(q) != 1
                or entry.streaming
                or entry.epoch != self.epoch
                or entry.method not in IDEMPOTENT
                or key in self._left
            ):
                continue
            del self.spare[key], w.inflight[key]
            if self.owner.get(key) == wid:
                del self.owner[key]
            taken.append(raw)  # in the order they would have started
        return taken

    def idle_retiring(self) -> list[Worker]:
        """Retiring workers with nothing left in flight: they may exit now."""
        return [
            w for w in self.workers.values() if w.state is WorkerState.RETIRING and not w.inflight
        ]

    # -- messages ----------------------------------------------------------
    def assign(self, p: Peeked, raw: bytes, now: float) -> Decision:
        """Where the message ``p`` describes goes; a :class:`Forward` of a request is recorded.

        ``p`` is :func:`~m2gate.protocol.peek.peek`'s description of ``raw``.
        The usual message, a new request of a connection no worker holds,
        costs a dict lookup or two, :meth:`pick` and one :class:`InFlight`.
        """
        key = (p[0], p[1])
        kind = p[2]
        wid = self.owner.get(key)
        if kind >= DISCONNECT:  # notices: for whoever serves (or last served) the connection
            if kind == CONTROL:
                return DROP
            if wid is not None:
                if kind == DISCONNECT:
                    self.last.pop(key, None)
                    self._left.add(key)
                return self.forward(wid)
            if kind == DISCONNECT:
                self._unqueue(key)
                wid = self.last.pop(key, None)
            else:
                wid = self.last.get(key)
            if wid is not None and wid in self.workers:
                return self.forward(wid)
            return DROP
        if wid is not None:
            if kind == UPLOAD_DONE:
                self._upload_done(key, now)
                return self.forward(wid)  # completes the upload in flight: not a new request
            self._add(self.workers[wid], key, now, True, p)
            return self._forward.get(wid) or self.forward(wid)
        if kind == UPLOAD_DONE and key not in self._queued_keys:
            last = self.last.get(key)
            if last is not None and last in self.workers:
                # Most likely late: the worker that answered the upload knows.
                # (It ignores it, or answers a forged one 400: not counted.)
                return self.forward(last)
        if self.sticky is not None:
            decision = self._assign_sticky(self.sticky, p, raw, now, key)
            if decision is not None:
                return decision
        if key in self._queued_keys:
            return self._hold(p, raw, now)  # behind an earlier request of this connection
        w = self.pick(now)
        if w is None:
            return self._hold(p, raw, now)
        self._add(w, key, now, False, p, raw)
        return self._forward.get(w.wid) or self.forward(w.wid)

    def forward(self, wid: bytes) -> Forward:
        """The :class:`Forward` to ``wid`` (one per worker, made once)."""
        f = self._forward.get(wid)
        if f is None:
            f = self._forward[wid] = Forward(wid)
        return f

    def pick(self, now: float = 0.0) -> Worker | None:
        """The least loaded ready worker with room (round robin on ties).

        Room is a free thread, or one of the worker's queue slots once every
        worker's threads are all busy (least loaded first, so a queue slot is
        only used when no thread is free anywhere). A busy worker has up to
        ``prefetch`` slots, as many as it serves in :data:`PREFETCH_WAIT` at
        its recent pace (:meth:`_pace`), and none while its oldest request has
        run longer than that pace explains: a request queued behind a slow
        one there would wait while another worker frees a thread sooner, so
        it waits in the master instead.
        """
        best: Worker | None = None
        best_load = 0
        for w in self.workers.values():
            if w.state is not READY:
                continue
            load = len(w.inflight)
            if load >= w.capacity:
                room = w.room
                if room < 0:  # no pace known yet: one slot (see slots)
                    if load >= w.capacity + min(self.prefetch, 1):
                        continue
                elif load >= w.capacity + room or (now and _stuck(w, load, now)):
                    continue
            if best is None or load < best_load or (load == best_load and w.turn < best.turn):
                best, best_load = w, load
        if best is not None:
            self._turn += 1
            best.turn = self._turn
        return best

    def slots(self, w: Worker) -> int:
        """Queue slots ``w`` may fill beyond its threads now (one until its pace is known)."""
        room = w.room
        return room if room >= 0 else min(self.prefetch, 1)

    def _pace(self, w: Worker, now: float) -> None:
        """A request of busy ``w`` is done: learn its pace; its queue slots follow.

        ``gap`` is the time between two of its done reports while all its
        threads were busy (reports come in batches: the average is what
        counts, hence the light weight): about one request's service time
        over its threads. Quick requests (hello world) get deep queues and
        few master round trips; slow or mixed ones get none and wait here
        for the first free thread.
        """
        if w.last_done:
            gap = now - w.last_done
            if w.room >= 0:
                gap = w.gap + (gap - w.gap) * GAP_WEIGHT
            w.gap = gap
            room = self.prefetch
            if gap * room > PREFETCH_WAIT:
                room = int(PREFETCH_WAIT / gap)
            w.room = room
        w.last_done = now

    def on_done(self, wid: bytes, key: Key, now: float, epoch: int | None = None) -> bool:
        """A worker finished (or dropped) one request of ``key``; False if unknown.

        ``epoch``: the Mongrel2 incarnation the worker served it in (None: the current one).
        """
        w = self.workers.get(wid)
        if w is None:
            return False
        if epoch is not None and epoch != self.epoch:
            key = stale_key(epoch, key)
        entries = w.inflight.get(key)
        if not entries:
            return False
        if self.prefetch:
            if len(w.inflight) >= w.capacity:
                self._pace(w, now)
            else:
                w.last_done = 0.0  # a thread was idle: the next gap would include idle time
        entry = entries.pop(0)
        w.requests += 1
        took = now - entry.started
        if took < 0.0:
            took = 0.0
        w.last_time = took
        w.busy_time += took
        if entries:
            entries[0].started = now  # the next pipelined request starts now
            return True
        del w.inflight[key]
        if self.uploading:
            self.uploading.discard(key)
        if self.spare:
            self.spare.pop(key, None)
        if entry.epoch != self.epoch:
            return True  # of an old incarnation: nothing to remember
        if self.owner.get(key) == wid:
            del self.owner[key]
            if self._left and key in self._left:
                self._left.discard(key)
                return True  # the client is gone: nothing more comes for it
        last = self.last
        last.pop(key, None)
        last[key] = wid  # the most recently served last
        if len(last) > LAST_SERVED_MAX:
            last.popitem(last=False)
        return True

    def reset_frontend(self) -> int:
        """Mongrel2 went away: its connection ids are void. Returns requests dropped.

        Queued requests are dropped unanswered (their clients are gone, and
        their ids may name new clients); requests in flight stay counted on
        their workers under :func:`~m2gate.supervisor.state.stale_key`
        until done, but nothing routes to them or answers for them.
        """
        old = self.epoch
        self.epoch += 1
        dropped = len(self.queue) + self.waiting.count
        self.queue.clear()
        self.waiting.clear()
        self._queued_keys.clear()
        self.owner.clear()
        self.last.clear()
        self.uploading.clear()
        self._left.clear()
        self.spare.clear()
        for w in self.workers.values():
            w.inflight = {
                (stale_key(old, k) if q and q[0].epoch == old else k): q
                for k, q in w.inflight.items()
            }
        return dropped

    # -- several front-ends (multi-front-end master) ----------------------------
    def forget_frontend(self, tag: str) -> int:
        """One of several front-ends went away: forget its connections; requests dropped.

        Its senders carry ``tag``, which its next incarnation does not reuse
        (:func:`~m2gate.transports.frontends.gen_tag`): requests in flight
        stay counted under their keys until done, and no epoch changes (the
        other front-ends' reports stay current). Queued requests are dropped
        unanswered, as in :meth:`reset_frontend`.
        """
        gone = [q for q in self.queue if q.key[0].startswith(tag)]
        if gone:
            self.queue = deque(q for q in self.queue if not q.key[0].startswith(tag))
            for q in gone:
                self._queued_keys.pop(q.key, None)
        for keys in (self.owner, self.last, self.spare):  # spare: never taken back to it
            for key in [k for k in keys if k[0].startswith(tag)]:
                del keys[key]
        self.uploading = {k for k in self.uploading if not k[0].startswith(tag)}
        self._left = {k for k in self._left if not k[0].startswith(tag)}
        return len(gone)

    def mark_started(self, wid: bytes, key: Key) -> bool:
        """``wid``'s response to ``key`` began to stream; False if not in flight there."""
        w = self.workers.get(wid)
        entries = w.inflight.get(key) if w is not None else None
        if not entries:
            return False
        entries[0].streaming = True
        return True

    def dispatch_queued(self, now: float) -> list[tuple[bytes, Queued]]:
        """Hand queued requests to workers that have room, oldest first."""
        out = self._dispatch_sticky(now) if self.waiting.count else []
        while self.queue:
            item = self.queue[0]
            key = item.key
            wid = self.owner.get(key)
            if wid is not None:
                if item.peeked[2] != UPLOAD_DONE:  # that one completes the upload
                    self._add(self.workers[wid], key, now, True, item.peeked)
                else:
                    self._upload_done(key, now)
            else:
                w = self.pick(now)
                if w is None:
                    break
                wid = w.wid
                self._add(w, key, now, False, item.peeked, item.raw)
            self._pop_queue()
            self.waits.add(now - item.arrived, now)
            out.append((wid, item))
        return out

    def expire_queued(self, now: float, timeout: float) -> list[Queued]:
        """Requests that waited longer than ``timeout`` (to answer 503)."""
        out: list[Queued] = []
        while self.queue and now - self.queue[0].arrived > timeout:
            item = self._pop_queue()
            self.waits.add(now - item.arrived, now)
            out.append(item)
        if self.waiting.count:
            for item in self.waiting.expire(now, timeout):
                self._unqueued(item.key)
                self.waits.add(now - item.arrived, now)
                out.append(item)
        return out

    def overdue(self, now: float, limit: float) -> list[tuple[Worker, InFlight]]:
        """Requests running longer than ``limit`` seconds (harakiri)."""
        out: list[tuple[Worker, InFlight]] = []
        for w in self.workers.values():
            for key, q in w.inflight.items():
                if len(q) == 1 and key in self.uploading:
                    continue  # held for its upload-done: no app is running yet
                # An open websocket (its 101 went out) lives as long as its client wants.
                if (
                    q
                    and now - q[0].started > limit
                    and not (q[0].streaming and q[0].method[:9] == b"WEBSOCKET")
                ):
                    out.append((w, q[0]))
        return out

    def unroute(self, wid: bytes, key: Key) -> None:
        """Undo the last :meth:`assign` to ``wid`` (the send failed: worker gone)."""
        w = self.workers.get(wid)
        if w is None:
            return
        entries = w.inflight.get(key)
        if entries:
            entries.pop()
            if not entries:
                del w.inflight[key]
                self.uploading.discard(key)
                self.spare.pop(key, None)
                if self.owner.get(key) == wid:
                    del self.owner[key]
                    self._left.discard(key)

    # -- queue wait (stats, metrics, adaptive workers) ----------------------
    # Every request leaving the queue or a sticky slot's FIFO (dispatch_queued,
    # _dispatch_sticky, expire_queued) is added to ``self.waits``.
    def oldest_wait(self, now: float) -> float:
        """Seconds the oldest waiting request has waited so far (0.0: nothing waits)."""
        oldest = self.queue[0].arrived if self.queue else now
        if self.waiting.count:
            for q in self.waiting.by_slot.values():
                if q and q[0].arrived < oldest:
                    oldest = q[0].arrived
        return now - oldest

    # -- internals ---------------------------------------------------------
    def _add(
        self, w: Worker, key: Key, now: float, pipelined: bool, p: Peeked, raw: bytes = b""
    ) -> None:
        entry = InFlight(key, now, pipelined, p[3], p[4], self.epoch)
        entries = w.inflight.get(key)
        if entries is None:
            w.inflight[key] = [entry]
            self.owner[key] = w.wid
            if raw and p[5] is None and len(w.inflight) > w.capacity:
                self.spare[key] = raw  # waits for a thread there: see take_waiting
        else:
            entries.append(entry)
        msg = p[5]  # parsed only when not a plain request (an upload, say)
        if msg is not None and self.hold_uploads and announced_path(msg) is not None:
            self.uploading.add(key)

    def _upload_done(self, key: Key, now: float) -> None:
        """The upload of ``key`` is complete: its app starts now (harakiri's clock too)."""
        if key not in self.uploading:
            return
        self.uploading.discard(key)
        wid = self.owner.get(key)
        q = self.workers[wid].inflight.get(key) if wid in self.workers else None
        if q is not None and len(q) == 1:
            q[0].started = now

    def _hold(self, p: Peeked, raw: bytes, now: float) -> Decision:
        if len(self.queue) + self.waiting.count >= self.queue_size:
            return REJECT
        self.queue.append(Queued(p, raw, now))
        key = (p[0], p[1])
        self._queued_keys[key] = self._queued_keys.get(key, 0) + 1
        return HOLD

    def _pop_queue(self) -> Queued:
        item = self.queue.popleft()
        key = item.key
        n = self._queued_keys.get(key, 0) - 1
        if n > 0:
            self._queued_keys[key] = n
        else:
            self._queued_keys.pop(key, None)
        return item

    def _unqueue(self, key: Key) -> None:
        """The client of queued requests went away: forget them."""
        if key not in self._queued_keys:
            return
        if not (self.waiting.count and self.waiting.drop_key(key)):
            self.queue = deque(q for q in self.queue if q.key != key)
        del self._queued_keys[key]

    # -- sticky routing (only with ``sticky`` set: see .sticky) --------------
    def _assign_sticky(
        self, sticky: Sticky, p: Peeked, raw: bytes, now: float, key: Key
    ) -> Decision | None:
        """A new request's slot worker, or a wait for it; None: not sticky, route as usual.

        A request behind a waiting one of its connection waits with it (same
        slot); one behind a non-sticky queued request stays in the main queue.
        """
        waiting = self.waiting
        slot = waiting.slot_of(key) if waiting.count else None
        if slot is None:
            if key in self._queued_keys:
                return None
            slot = sticky.slot_for(p, raw)
            if slot is None:
                return None
            w = target(self.workers.values(), slot)
            if w is not None and len(w.inflight) < w.capacity + self.slots(w):
                self._add(w, key, now, False, p, raw)
                return self._forward.get(w.wid) or self.forward(w.wid)
        if len(self.queue) + waiting.count >= self.queue_size:
            return REJECT
        waiting.add(slot, Queued(p, raw, now))
        self._queued_keys[key] = self._queued_keys.get(key, 0) + 1
        return HOLD

    def _dispatch_sticky(self, now: float) -> list[tuple[bytes, Queued]]:
        """Requests waiting for their slot's worker that it has room for now, oldest first.

        They go before the main queue: they can go nowhere else, its requests can.
        """
        out: list[tuple[bytes, Queued]] = []
        waiting = self.waiting
        for slot in list(waiting.by_slot):
            w = target(self.workers.values(), slot)
            q = waiting.by_slot[slot]
            while q:
                item = q[0]
                key = item.key
                wid = self.owner.get(key)
                if wid is not None:  # an earlier request of its connection just went
                    if item.peeked[2] != UPLOAD_DONE:
                        self._add(self.workers[wid], key, now, True, item.peeked)
                    else:
                        self._upload_done(key, now)
                else:
                    if w is None or len(w.inflight) >= w.capacity + self.slots(w):
                        break
                    wid = w.wid
                    self._add(w, key, now, False, item.peeked, item.raw)
                waiting.popleft(slot)
                self._unqueued(key)
                self.waits.add(now - item.arrived, now)
                out.append((wid, item))
        return out

    def _unqueued(self, key: Key) -> None:
        """One request of ``key`` left the waiting FIFOs."""
        n = self._queued_keys.get(key, 0) - 1
        if n > 0:
            self._queued_keys[key] = n
        else:
            self._queued_keys.pop(key, None)


class RoundRobin(Dispatcher):
    """``--dispatch round-robin``: each new request to the next ready worker, whatever its load.

    Mongrel2's PUSH behaviour, kept for comparison: a fast request can wait
    in a worker behind a slow one while another worker is idle. The master
    still tracks every request in flight (502/504 on a worker's death,
    harakiri, reloads). A subclass, so the default policy's :meth:`pick`
    pays nothing for this mode. Harakiri's clock of a request starts when it
    is handed over, so it includes the time it waited in its worker's queue.
    """

    def pick(self, now: float = 0.0) -> Worker | None:
        """The ready worker picked longest ago (a new one first): strict rotation."""
        best: Worker | None = None
        for w in self.workers.values():
            if w.state is READY and (best is None or w.turn < best.turn):
                best = w
        if best is not None:
            self._turn += 1
            best.turn = self._turn
        return best


def make_dispatcher(mode: str, queue_size: int = 10000, prefetch: int = 0) -> Dispatcher:
    """The policy of the ``dispatch`` setting (``direct``: the master routes no requests)."""
    if mode == "round-robin":
        return RoundRobin(queue_size, prefetch)
    return Dispatcher(queue_size, prefetch)
