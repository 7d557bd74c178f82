"""Mongrel2's messages to the workers, the workers' frames back, the master's own answers.

The policy (who gets what) is :class:`~m2gate.supervisor.handoff.Dispatcher`;
this is its I/O: the PULL from Mongrel2, the ROUTER to the workers and the
master's PUB. Of each message from Mongrel2 it reads only what routing needs
(:func:`~m2gate.protocol.peek.peek`) and forwards the raw bytes: the worker
parses them. Done reports come binary, many to a frame (:mod:`.wire`). A
Python exception for one message or frame is logged and the batch goes on.
On the PUB it answers for workers that cannot: 503 (no worker took it in
time, queue full, stopping, graceful timeout), 504 (harakiri), 502 (a worker
died with it). When it answers a request whose upload Mongrel2 announced, it
removes that temp file (no worker will), with the same checks a worker
makes; while Mongrel2 still reads that upload, the close waits for its
upload-done. Whatever else comes for a connection it answered is dropped,
and what a dead worker had not begun goes to another. What a frame means
for a worker's life goes to the :class:`~m2gate.supervisor.lifecycle.Lifecycle`;
the actions it returns go to ``run`` (the master carries them out).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import zmq

from m2gate.config.settings import Config
from m2gate.conn.table import tagged_reply_uuid
from m2gate.conn.uploads import (
    Identity,
    UploadRejected,
    UploadStore,
    announced_path,
    remove_claimed,
)
from m2gate.protocol import replies
from m2gate.protocol.errors import ProtocolError
from m2gate.protocol.http import error_response, request_framing
from m2gate.protocol.intake import log_dropped
from m2gate.protocol.messages import Message, UploadDone, UploadStart, parse_message
from m2gate.protocol.peek import DISCONNECT, UPLOAD_DONE, peek
from m2gate.supervisor.actions import Action
from m2gate.supervisor.handoff import Dispatcher, Drop, Forward, Hold, Reject
from m2gate.supervisor.lifecycle import Lifecycle
from m2gate.supervisor.state import Key, Worker, WorkerState
from m2gate.supervisor.watch import Watcher
from m2gate.supervisor.wire import (
    DONE,
    EPOCH,
    FATAL,
    HEARTBEAT,
    HELLO,
    LOADED,
    PROBE,
    PROBE_SPAN,
    STARTED,
    decode_reports,
    parse_probe_notice,
    probe_base,
    probe_slot,
)
from m2gate.transports.frontends import FrontendPubs, gen_tag

log = logging.getLogger("m2gate.master")
S = WorkerState

BATCH = 256  # messages handled per socket before looking at the others
PUB_PROBE_INTERVAL = 0.05
GONE_KEYS_MAX = 4096  # connections the master closed, remembered until their disconnect


class Router:
    """Moves messages between Mongrel2, the workers and the dispatcher."""

    def __init__(
        self,
        cfg: Config,
        disp: Dispatcher,
        life: Lifecycle,
        watcher: Watcher,
        sockets: tuple[zmq.Socket[Any], zmq.Socket[Any], zmq.Socket[Any]],
        run: Callable[[list[Action]], None],
    ) -> None:
        self.cfg = cfg
        self.disp = disp
        self.life = life
        self.watcher = watcher
        self.pull, self.router = sockets[0], sockets[1]
        self.pub: Any = sockets[2]  # with several front-ends, a FrontendPubs
        self.run = run
        self.by_probe: dict[int, bytes] = {}  # probe_base -> worker id
        # A worker is ready once both its reply path (probe) and its DEALER (its
        # hello: the ROUTER can reach it) are proven, in whichever order they come.
        self.greeted: set[bytes] = set()
        self.probed: set[bytes] = set()
        self.rejected = 0
        self.pub_ready_at: float | None = None  # the master's own reply path proven
        self._pub_probe = 0
        self._next_pub_probe = 0.0
        self._queue_warned = 0.0
        # The workers pull from Mongrel2 themselves; only probes and heartbeats come here.
        self.direct = cfg.dispatch == "direct"
        self.store = UploadStore(cfg.upload_dir, cfg.mongrel2_chroot)
        disp.hold_uploads = not cfg.stream_uploads
        # Temp files Mongrel2 announced for requests in flight or queued, by connection.
        self.uploads: dict[Key, tuple[str, Identity]] = {}
        # Connections the master answered or closed itself (a worker died, no
        # worker free): whatever of them is still on its way (an upload-done, a
        # pipelined request) is void. Mongrel2 never reuses an id in one incarnation.
        # True: its close waits for Mongrel2 to finish reading the upload.
        self.gone_keys: OrderedDict[Key, bool] = OrderedDict()
        # Uploads Mongrel2 announced and is still reading from its client.
        self.receiving: set[Key] = set()
        # Several front-ends (serve_frontends): a PULL each, the tag of each
        # one's current incarnation, whose PUBs (the master's, the workers')
        # proved their reply path. None: one front-end, nothing tagged.
        self.tags: list[bytes] | None = None
        self.pulls: list[zmq.Socket[Any]] = [self.pull]
        self._gens: list[int] = []
        self._pub_proven: set[int] = set()
        self._probed_on: dict[bytes, set[int]] = {}
        self._uuid = replies.reply_uuid

    # -- several front-ends ----------------------------------------------------
    def serve_frontends(self, pulls: list[zmq.Socket[Any]], pubs: list[zmq.Socket[Any]]) -> None:
        """Serve several Mongrel2s: their messages get tagged senders (transports/frontends.py).

        Each front-end's tag names its incarnation too: when one restarts,
        its new connections get new keys, so only its old ones are voided
        (:meth:`frontend_gone_at`) and no epoch changes for the others.
        """
        self.pulls = list(pulls)
        self.pull = self.pulls[0]
        self._gens = [0] * len(pulls)
        self.tags = [gen_tag(i, 0) for i in range(len(pulls))]
        self.pub = FrontendPubs(pubs, self.tags)
        self._uuid = tagged_reply_uuid

    def on_pull_tagged(self, now: float, index: int) -> None:
        """:meth:`on_pull` for front-end ``index`` of several: each message tagged first."""
        assert self.tags is not None
        pull, tag = self.pulls[index], self.tags[index]
        for _ in range(BATCH):
            try:
                raw = pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self.on_message(tag + raw, now, index)
            except Exception:  # a bug of ours must not end the batch, nor the master
                log.exception("failed to route a message (%d bytes)", len(raw))

    def frontend_gone_at(self, index: int) -> None:
        """Front-end ``index`` of several went away: void its connections, only its."""
        assert self.tags is not None
        old = self.tags[index].decode("ascii")
        self._gens[index] += 1
        self.tags[index] = gen_tag(index, self._gens[index])  # the PUBs share this list
        mine = [k for k in self.uploads if k[0].startswith(old)]
        for key in [k for k in mine if k not in self.disp.owner]:
            self.drop_upload(key)  # queued, so dropped now: nobody else removes it
        for key in mine:
            self.uploads.pop(key, None)  # in flight: their workers remove them
        for key in [k for k in self.gone_keys if k[0].startswith(old)]:
            del self.gone_keys[key]
        self.receiving = {k for k in self.receiving if not k[0].startswith(old)}
        dropped = self.disp.forget_frontend(old)
        self._pub_proven.discard(index)  # the new Mongrel2 must answer our probe again
        log.warning(
            "Mongrel2 front-end %d went away: forgot its connections (%d queued request(s)"
            " dropped)",
            index,
            dropped,
        )
        for w in list(self.life.workers.values()):
            if w.ready_at is not None and w.state is not WorkerState.KILLED:
                self.send(w.wid, b"", EPOCH, b"%d %s" % (self.disp.epoch, old.encode("ascii")))

    # -- Mongrel2's incarnations ---------------------------------------------
    def frontend_gone(self) -> None:
        """Mongrel2 went away (the PULL's monitor said so): its connection ids are void.

        Called before any message of its next incarnation is handled: the
        workers hear ``epoch N`` before the next request on the same pipe,
        so a request for a reused id never joins an old connection, and no
        reply (theirs or ours) goes to an old connection's id.
        """
        for key in [k for k in self.uploads if k not in self.disp.owner]:
            self.drop_upload(key)  # queued, so dropped now: nobody else removes it
        self.uploads.clear()  # the rest are in flight: their workers remove them
        self.gone_keys.clear()
        self.receiving.clear()
        dropped = self.disp.reset_frontend()
        log.warning(
            "Mongrel2 went away: forgot its connections (epoch %d, %d queued request(s) dropped)",
            self.disp.epoch,
            dropped,
        )
        for w in list(self.life.workers.values()):
            if w.ready_at is not None and w.state is not WorkerState.KILLED:
                self.send_epoch(w.wid)

    def send_epoch(self, wid: bytes) -> None:
        """Tell ``wid`` the current epoch (a worker not ready yet hears it with ``ready``)."""
        self.send(wid, b"", EPOCH, b"%d" % self.disp.epoch)

    # -- Mongrel2 -> workers --------------------------------------------------
    def on_pull(self, now: float) -> None:
        for _ in range(BATCH):
            try:
                raw = self.pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self.on_message(raw, now)
            except Exception:  # a bug of ours must not end the batch, nor the master
                log.exception("failed to route a message (%d bytes)", len(raw))

    def on_message(self, raw: bytes, now: float, frontend: int = 0) -> None:
        """Route one message from Mongrel2; only what routing needs is parsed (:func:`peek`)."""
        try:
            p = peek(raw)
        except ProtocolError as exc:
            probe = parse_probe_notice(raw)  # probe ids come back negative: not parsed
            if probe is not None:
                self._on_probe(probe, now, frontend)
            else:
                log_dropped(log, raw, exc)
            return
        kind, msg = p[2], p[5]
        if self.gone_keys and (p[0], p[1]) in self.gone_keys:
            self._after_gone((p[0], p[1]), kind)
            return
        held_by: bytes | None = None  # an upload-done's worker, which holds its request
        if msg is not None and isinstance(msg, (UploadStart, UploadDone)):
            self._announced(msg)
            held_by = self.disp.owner.get((p[0], p[1]))
        elif kind == DISCONNECT and self.receiving:
            self.receiving.discard((p[0], p[1]))
        if self.life.stopping and kind < DISCONNECT and (p[0], p[1]) not in self.disp.owner:
            self.rejected += 1
            self.answer(p[0], p[1], "503 Service Unavailable", msg or raw)
            return
        decision = self.disp.assign(p, raw, now)
        if kind == DISCONNECT and (p[0], p[1]) not in self.disp.owner:
            self.drop_upload((p[0], p[1]))  # queued, or already served: nobody else will
        if type(decision) is Forward:
            try:
                self.router.send_multipart((decision.wid, raw), zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                new = kind < DISCONNECT and (kind != UPLOAD_DONE or held_by is None)
                self.undeliverable(decision.wid, (p[0], p[1]), raw, now, new, exc)
        elif isinstance(decision, Hold):
            if now - self._queue_warned > 5.0:
                self._queue_warned = now
                if not any(w.state is WorkerState.READY for w in self.disp.workers.values()):
                    # Start-up (or a fleet being replaced): not saturation.
                    log.info(
                        "no worker is ready yet: %d request(s) wait in the master for one",
                        len(self.disp.queue),
                    )
                elif self.disp.waiting.count:  # sticky routing: each waits for its own worker
                    log.warning(
                        "%d request(s) wait in the master for a thread of their sticky worker"
                        " (%d for any worker)",
                        self.disp.waiting.count,
                        len(self.disp.queue),
                    )
                else:
                    log.warning(
                        "every worker thread is busy: %d request(s) wait in the master",
                        len(self.disp.queue),
                    )
        elif isinstance(decision, Reject):
            self.rejected += 1
            log.error(
                "master queue full (%d): 503 for %s:%s",
                self.cfg.queue_size,
                p[0],
                p[1],
            )
            self.answer(p[0], p[1], "503 Service Unavailable", msg or raw)
        else:
            assert isinstance(decision, Drop)

    def _after_gone(self, key: Key, kind: int) -> None:
        """A message for a connection the master answered and closed: dropped.

        Its client already has its 502/503/504 (or its cut-off stream); only
        Mongrel2's disconnect notice ends the memory. An upload-done is
        what a close held back for the upload waited for.
        """
        if kind == DISCONNECT:
            del self.gone_keys[key]
            self.receiving.discard(key)
        elif kind == UPLOAD_DONE and self.gone_keys[key]:
            self.gone_keys[key] = False
            self.receiving.discard(key)
            self._send_close(key[0], key[1])
        elif kind < DISCONNECT:
            log.debug("%s:%s was answered by the master: message dropped", *key)
        self.drop_upload(key)

    def _gone(self, key: Key) -> bool:
        """Remember that the master answered ``key``; True if its close must wait.

        While Mongrel2 still reads an upload's body from the client, a close
        would make it drop the connection with the body half read (the
        answer can be lost with it, the client's kernel seeing a reset): the
        answer goes now, the close once the upload is done (or the client gone).
        """
        self.drop_upload(key)  # a cut-off stream's too: its dead worker cannot remove it
        gone = self.gone_keys
        wait = key in self.receiving
        if key not in gone:
            gone[key] = wait
            if len(gone) > GONE_KEYS_MAX:
                gone.popitem(last=False)
        return wait

    def _announced(self, msg: UploadStart | UploadDone) -> None:
        """Remember the temp file Mongrel2 announced for this connection (claimed: dev, ino)."""
        path = announced_path(msg)
        if isinstance(msg, UploadDone):
            self.receiving.discard(msg.key)
        elif path is not None:
            self.receiving.add(msg.key)  # Mongrel2 reads the body until its upload-done
        if path is None or msg.key in self.uploads or not self.store.upload_dir:
            return
        try:
            self.uploads[msg.key] = self.store.claim(path)
        except UploadRejected as exc:
            log.debug("upload for %s:%s not claimed: %s", msg.sender, msg.conn_id, exc)

    def drop_upload(self, key: Key) -> None:
        """The master answered (or lost) ``key``: remove the temp file announced for it."""
        found = self.uploads.pop(key, None)
        if found is not None and remove_claimed(*found):
            log.info("removed the upload of %s:%s", key[0], key[1])

    def _on_probe(self, probe_id: int, now: float, frontend: int = 0) -> None:
        block = self.life.probe_block
        slot = probe_slot(probe_id, block)
        if slot is None:
            log.debug("probe notice %d is another master's", probe_id)
            return
        if slot == probe_base(0, block):
            if self.tags is not None:
                self._pub_proven.add(frontend)
                if len(self._pub_proven) < len(self.tags):
                    return
            if self.pub_ready_at is None:
                self.pub_ready_at = now
                log.debug("master reply path proven")
            return
        wid = self.by_probe.get(slot)
        w = self.life.workers.get(wid) if wid is not None else None
        if w is not None and w.ready_at is None and w.state is not WorkerState.KILLED:
            if self.tags is not None:
                # Ready once proven on every front-end that is up (its Mongrel2
                # answers the master's own probe): one that is down must not
                # keep new workers from serving the others.
                seen = self._probed_on.setdefault(w.wid, set())
                seen.add(frontend)
                if not self._pub_proven or not seen >= self._pub_proven:
                    return
            if w.wid not in self.greeted:
                self.probed.add(w.wid)  # ready when its hello arrives
                return
            self._ready(w, now)

    def _ready(self, w: Worker, now: float) -> None:
        self.probed.discard(w.wid)
        self.run(self.life.on_ready(w, now))
        self.dispatch_queued(now)

    def probe_pub(self, now: float) -> None:
        """Until Mongrel2 answers the master's own PUB, probe it (every 50 ms)."""
        tags = self.tags
        if tags is not None and len(self._pub_proven) < len(tags):
            pass  # a restarted front-end: its PUB is probed again
        elif self.pub_ready_at is not None or now < self._next_pub_probe:
            return
        if now < self._next_pub_probe:
            return
        self._next_pub_probe = now + PUB_PROBE_INTERVAL
        probe = probe_base(0, self.life.probe_block) + self._pub_probe % PROBE_SPAN
        self._pub_probe += 1
        uuid = replies.reply_uuid(self.cfg.recv_ident, self.cfg.send_ident)
        with contextlib.suppress(zmq.ZMQError, ValueError):
            if tags is None:
                self.pub.send(replies.close(uuid, [probe])[0])
                return
            for i, tag in enumerate(tags):
                if i not in self._pub_proven:
                    self.pub.send(replies.close(tag + uuid, [probe])[0])

    def send(self, wid: bytes, *frames: bytes) -> bool:
        try:
            self.router.send_multipart([wid, *frames], zmq.NOBLOCK)
            return True
        except zmq.ZMQError as exc:
            log.warning("worker %s unreachable: %s", wid.decode(), exc)
            return False

    def dispatch_queued(self, now: float) -> None:
        for wid, item in self.disp.dispatch_queued(now):
            try:
                self.router.send_multipart((wid, item.raw), zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                # A queued upload-done follows its upload-start to that worker.
                new = item.peeked[2] != UPLOAD_DONE
                self.undeliverable(wid, item.key, item.raw, now, new, exc)

    def undeliverable(
        self, wid: bytes, key: Key, raw: bytes, now: float, new: bool, exc: Exception
    ) -> None:
        """The ROUTER cannot reach ``wid`` any more: it is dying (its reaping comes later).

        Only a message that opened a connection on it (``new``, the sole
        entry there) is taken back and routed again. Anything of a connection
        it already holds (an upload-done, a pipelined request, a notice)
        stays with it: that connection is answered (502, or closed) when the
        worker is reaped. Re-routing those would hand another worker the
        second half of a request as if it were a new one (an upload-done
        served as a fresh upload while its client waits for the 502), or
        loop on the same dead worker.
        """
        log.warning("worker %s unreachable: %s", wid.decode(), exc)
        self.disp.retire(wid)
        w = self.disp.workers.get(wid)
        entries = w.inflight.get(key) if w is not None else None
        if not new or not entries or len(entries) != 1 or entries[0].pipelined:
            return
        self.disp.unroute(wid, key)
        self.on_message(raw, now)  # to another worker, or the queue

    def expire_queued(self, now: float, timeout: float) -> None:
        """503 for the requests that waited ``timeout`` seconds (-1: every one)."""
        for q in self.disp.expire_queued(now, timeout):
            sender, conn_id = q.key
            if timeout >= 0:
                self.rejected += 1
                log.error("no worker took %s:%s for %ss: 503", sender, conn_id, timeout)
            self.answer(sender, conn_id, "503 Service Unavailable", q.peeked[5] or q.raw)

    def answer(
        self, sender: str, conn_id: int, status: str, msg: Message | bytes | None = None
    ) -> None:
        """Answer for a worker that cannot (killed, or none free), then close.

        ``msg`` (the request, or its raw bytes, parsed only now: this is
        rare) gives the HTTP version and method to answer with. The
        request's upload, if Mongrel2 announced one, is removed: no worker
        will. The connection is closed: what else comes for it is dropped.
        """
        wait = self._gone((sender, conn_id))
        if isinstance(msg, bytes):
            try:
                msg = parse_message(msg)
            except ProtocolError:
                msg = None
        version = request_framing(msg)[0] if msg is not None else "HTTP/1.1"
        method = msg.method if msg is not None else "GET"
        payload, _ = error_response(status, version, method=method)
        uuid = self._uuid(self.cfg.recv_ident, sender)
        closing = () if wait else replies.close(uuid, [conn_id])
        try:
            for m in (replies.reply(uuid, conn_id, payload), *closing):
                self.pub.send(m)
        except (zmq.ZMQError, ValueError) as exc:
            log.warning("could not answer %s to %s:%s: %s", status, sender, conn_id, exc)

    def close(self, sender: str, conn_id: int) -> None:
        """Close a client connection whose response had already begun (nothing else fits)."""
        if not self._gone((sender, conn_id)):
            self._send_close(sender, conn_id)

    def _send_close(self, sender: str, conn_id: int) -> None:
        uuid = self._uuid(self.cfg.recv_ident, sender)
        try:
            for m in replies.close(uuid, [conn_id]):
                self.pub.send(m)
        except (zmq.ZMQError, ValueError) as exc:
            log.warning("could not close %s:%s: %s", sender, conn_id, exc)

    # -- workers -> master ----------------------------------------------------
    def on_router(self, now: float) -> None:
        freed = False
        for _ in range(BATCH * 4):
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                freed = self.on_frames(frames, now) or freed
            except Exception:  # a bug of ours must not end the batch, nor the master
                log.exception("failed to handle a worker's frame %r", frames[1:2])
        if freed:
            self.dispatch_queued(now)

    def on_frames(self, frames: list[bytes], now: float) -> bool:
        """One message from a worker; True if it freed a thread."""
        if len(frames) < 2:
            return False
        wid, kind = frames[0], frames[1]
        if b"." in wid:  # an app thread's own socket: WID.N
            wid = wid.split(b".", 1)[0]
        w = self.life.workers.get(wid)
        if w is None:
            return False
        if kind == DONE:
            return len(frames) == 3 and self._on_done(w, frames[2], now)
        if kind == STARTED:
            if len(frames) == 3:
                epoch = self.disp.epoch
                for sender, report_epoch, ids in decode_reports(frames[2]):
                    if report_epoch == epoch:
                        for conn_id in ids:
                            self.disp.mark_started(wid, (sender, conn_id))
        elif kind == HEARTBEAT:
            self._on_heartbeat(w, frames[2] if len(frames) > 2 else b"{}", now)
        elif kind == FATAL:
            w.fatal = frames[2].decode("utf-8", "replace") if len(frames) > 2 else ""
        elif kind == PROBE:  # --dispatch direct: a probe notice a worker's PULL got
            if len(frames) > 2 and frames[2].isdigit():
                self._on_probe(int(frames[2]), now)
        elif kind == LOADED and len(frames) > 2:
            self.watcher.add_files(frames[2])
        elif kind == HELLO:
            if wid == frames[0]:  # the worker's own DEALER, not an app thread's
                self.greeted.add(wid)
                if wid in self.probed and w.ready_at is None and w.state is not S.KILLED:
                    self._ready(w, now)
        else:
            log.debug("unknown frame %r from worker %s", kind[:20], wid.decode())
        return False

    def _on_done(self, w: Worker, payload: bytes, now: float) -> bool:
        """A ``d`` frame: each request it reports frees a thread of ``w``."""
        disp, uploads, wid = self.disp, self.uploads, w.wid
        freed = 0
        for sender, epoch, ids in decode_reports(payload):
            for conn_id in ids:
                key = (sender, conn_id)
                if disp.on_done(wid, key, now, epoch):
                    freed += 1
                    if uploads and key not in disp.owner:
                        uploads.pop(key, None)  # the worker served it and removed its file
        if not freed:
            return False
        self.run(self.life.on_done(w, now))
        return True

    def _on_heartbeat(self, w: Worker, data: bytes, now: float) -> None:
        try:
            beat = json.loads(data)
            w.rss = int(beat.get("rss", 0))
            w.exceptions = int(beat.get("exceptions", 0))
            w.disconnects = int(beat.get("disconnects", 0))
            served = int(beat.get("requests", 0)) if self.direct else 0
        except (ValueError, TypeError, AttributeError):
            return
        if served > w.requests:
            # --dispatch direct: no done reports, the heartbeat's count is all there is.
            w.requests = served
            self.run(self.life.on_done(w, now))
        self.run(self.life.on_heartbeat(w, now))

    def late_fatal(self, wid: bytes, clock: Callable[[], float]) -> str:
        """The ``fatal`` frame of a worker that already exited, if it is still on its way."""
        deadline = clock() + 0.5
        while clock() < deadline:
            if not self.router.poll(50):
                continue
            frames = self.router.recv_multipart()
            if len(frames) > 2 and frames[0] == wid and frames[1] == FATAL:
                return frames[2].decode("utf-8", "replace")
            self.on_frames(frames, clock())
        return ""

    def worker_gone(self, w: Worker, code: int, now: float) -> None:
        """``w`` exited: answer what it had in flight, hand its queue on."""
        self.by_probe.pop(w.probe, None)
        self.greeted.discard(w.wid)
        self.probed.discard(w.wid)
        # What it had not begun goes to the others (or its replacement) first.
        moved = self.disp.take_waiting(w.wid)
        self._probed_on.pop(w.wid, None)
        lost = self.disp.remove_worker(w.wid)
        expected = w.state is WorkerState.STOPPING and code == 0
        how = "exited with %d" % code if code >= 0 else "killed by signal %d" % -code
        if lost:
            # The first entry of a connection is the one being served; only
            # it can have started to stream. Its client already has a status
            # line and part of a body: another response would land inside
            # that body, so such a connection only gets closed.
            first: dict[Key, bool] = {}
            for e in lost:
                if e.epoch == self.disp.epoch:  # an old incarnation's id is nobody's to answer
                    first.setdefault(e.key, e.streaming)
            cut = sum(first.values())
            log.warning(
                "worker %s (pid %d) %s with %d request(s) in flight: answering %s%s",
                w.wid.decode(),
                w.pid,
                how,
                len(lost),
                w.answer,
                " (%d response(s) already streaming: closed)" % cut if cut else "",
            )
            for key, streaming in first.items():
                if streaming:
                    self.close(key[0], key[1])
                else:
                    self.answer(key[0], key[1], w.answer)
        elif expected:
            log.info(
                "worker %s (pid %d) exited after %d request(s)", w.wid.decode(), w.pid, w.requests
            )
        else:
            quiet = w.state in (S.KILLED, S.RETIRING, S.STOPPING, S.DUMPING)
            (log.info if quiet else log.warning)(
                "worker %s (pid %d) %s", w.wid.decode(), w.pid, how
            )
        if moved:
            log.info(
                "%d request(s) worker %s had not begun go to other workers",
                len(moved),
                w.wid.decode(),
            )
        for raw in moved:
            self.on_message(raw, now)
        self.dispatch_queued(now)
