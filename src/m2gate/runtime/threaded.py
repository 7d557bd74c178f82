"""The threaded runtime: one receiving loop, N app threads, graceful stop.

A single thread owns the PULL socket and hands requests to the app threads.
This is what keeps the Mongrel2 facts manageable: pipelined requests for a
connection are queued behind the one in flight (replies go out in request
order), and a disconnect notice reaches the connection's state whichever
thread serves it. The queue to the app threads is bounded by ``backlog``:
beyond it a request is answered 503 at once by the receiving thread (which
must never block: it reads the disconnect notices too), and a request whose
client left while it waited is dropped when a thread takes it. What happens
to each message is the runtime contract (:mod:`m2gate.runtime.base`); this
module only runs requests on threads.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Protocol

from m2gate.conn.connection import CREDITS_TIMEOUT, Connection, Flusher, Output
from m2gate.conn.uploads import UploadRejected, UploadStore, open_upload
from m2gate.protocol import replies
from m2gate.protocol.errors import ClientDisconnected
from m2gate.protocol.http import SERVER_HEADER
from m2gate.protocol.messages import HTTPRequest, Message, UploadDone, UploadStart
from m2gate.runtime.base import Runtime, refusal_status
from m2gate.transports.base import ReplySink, RequestSource

log = logging.getLogger("m2gate.worker")


class RequestHandler(Protocol):
    """An app adapter: serve one request, always finishing ``out``."""

    def __call__(
        self,
        msg: Message,
        out: Output,
        body: IO[bytes] | None = None,
        content_length: int | None = None,
    ) -> None: ...


POLL_MS = 100


class ThreadedRuntime(Runtime[Connection]):
    """Receives from ``source``, runs ``handler`` on ``threads`` threads."""

    def __init__(
        self,
        source: RequestSource,
        sink: ReplySink,
        handler: RequestHandler,
        threads: int = 1,
        reply_ident: bytes = b"",
        max_message: int = 4 * 1024 * 1024,
        flush_interval: float = 0.005,
        server_header: bytes = SERVER_HEADER,
        uploads: UploadStore | None = None,
        on_done: Callable[[Connection], None] | None = None,
        backlog: int = 1000,
        max_pipelined: int = 16,
        on_started: Callable[[Connection], None] | None = None,
        credits_timeout: float = CREDITS_TIMEOUT,
        busy_keepalive: float = 0.0,
    ) -> None:
        super().__init__(
            Connection,
            reply_ident,
            uploads,
            on_done,
            server_header,
            max_pipelined,
            max_message,
            flush_interval,
            credits_timeout,
        )
        self.on_started = on_started  # a response's first part leaves before its end
        self.source = source
        self.watch_source(source)
        self.sink = sink
        self.handler = handler
        self.threads = threads
        self.backlog = backlog
        self.busy_keepalive = busy_keepalive
        self._next_keepalive = time.monotonic() + busy_keepalive
        self._queue: queue.SimpleQueue[tuple[Connection, Message] | None] = queue.SimpleQueue()
        self._flusher = Flusher()
        self._workers = [
            threading.Thread(target=self._work, name="m2gate-app-%d" % i, daemon=True)
            for i in range(threads)
        ]

    # -- receiving ---------------------------------------------------------
    def run(self, graceful_timeout: float) -> bool:
        """Serve until :meth:`stop`; returns True if every request finished."""
        self._start()
        while not self.stopping.is_set():
            data = self.source.recv(POLL_MS)
            if data is not None:
                try:
                    self.feed(data)
                except Exception:  # a bug of ours must not stop the receiving
                    log.exception("failed to handle a message (%d bytes)", len(data))
            else:
                self.check_frontend()  # idle: e.g. Mongrel2 is gone
            now = time.monotonic()
            self.expire_uploads(now)
            if self.busy_keepalive > 0 and now >= self._next_keepalive:
                self._next_keepalive = now + self.busy_keepalive
                self.send_keepalives()
        # Stop accepting, but serve what Mongrel2 already pushed to us.
        self.source.stop_receiving()
        while (data := self.source.recv(0)) is not None:
            try:
                self.feed(data)
            except Exception:
                log.exception("failed to handle a message (%d bytes)", len(data))
        self.release_held()
        return self.drain(graceful_timeout)

    def send_keepalives(self) -> int:
        """One ``ctl`` keep-alive per request being served; returns how many.

        Mongrel2's idle reaper (``limits.min_ping``) only counts what the
        client sends and these keep-alives, not the response bytes: without
        them a request (or a stream) running past min_ping is closed, the
        same fate as a request lost with a dead handler host. A connection
        whose client left is skipped (Mongrel2 answers a ctl for an unknown
        id with one more disconnect notice).
        """
        targets: dict[bytes, list[int]] = {}
        with self._lock:
            for conn in self._conns.values():
                if conn.busy and not conn.closed:
                    targets.setdefault(conn.uuid, []).append(conn.conn_id)
        for uuid, conn_ids in targets.items():  # one send per front-end tag
            self.sink.send(replies.ctl(uuid, conn_ids, {"keep-alive": True}))
        return sum(len(ids) for ids in targets.values())

    # -- how a unit of work runs (gevent.py overrides these and drain) --
    def _start(self) -> None:
        for t in self._workers:
            t.start()

    def _submit(self, conn: Connection, msg: Message) -> None:
        """Hand a connection's next request to an app thread; 503 if the backlog is full."""
        if self._queue.qsize() < self.backlog:
            self._queue.put((conn, msg))
        else:
            self._refuse(conn, msg)

    def _refuse(self, conn: Connection, msg: Message) -> None:
        """Overload: 503 now and end the connection (its pipelined requests too)."""
        self._overloaded(conn, msg, "%d requests already wait for a thread" % self.backlog)
        self._done(conn, False)

    def _send(self, messages: Sequence[bytes]) -> None:
        self.sink.send(messages)

    def _serve_connection(self, conn: Connection, msg: Message) -> None:
        """Serve ``msg``, then the requests pipelined behind it, in order."""
        next_msg: Message | None = msg
        while next_msg is not None:
            if conn.closed:  # the client left while this waited: start nothing for it
                self._not_started(conn, next_msg)
                next_msg = self._done(conn, False)
                continue
            keep = self._serve(conn, next_msg)
            next_msg = self._done(conn, keep)

    # -- app threads -------------------------------------------------------
    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._serve_connection(*item)
            except BaseException:  # SystemExit here would end the thread silently
                log.exception("internal error on an app thread; it goes on")

    def _serve(self, conn: Connection, msg: Message) -> bool:
        out = Output(
            conn,
            self.sink,
            self._flusher,
            self.max_message,
            self.flush_interval,
            self.on_started,
            self.credits_timeout,
        )
        try:
            if isinstance(msg, HTTPRequest):
                self.handler(msg, out)
            elif isinstance(msg, (UploadStart, UploadDone)):
                self._serve_upload(conn, msg, out)
            else:
                out.finish(self._refusal(msg), close=True)
        except BaseException:
            # The adapter answers app errors itself (SystemExit included); this
            # is a bug of ours, and the thread must go on serving.
            log.exception("internal error serving %s:%s", msg.sender, msg.conn_id)
            if not out.done:
                out.finish(close=True)
        finally:
            if not out.done:
                out.finish(close=True)
            self.requests += 1
            if self.on_done is not None:
                self.on_done(conn)
        return not out.closing and not conn.closed

    def _serve_upload(self, conn: Connection, msg: UploadStart | UploadDone, out: Output) -> None:
        """Run the app on a body Mongrel2 spooled to its temp store (complete, or still coming)."""
        try:
            upload = self._start_upload(conn, msg)
        except UploadRejected as exc:
            self._reject(msg, out, exc)
            return
        except ClientDisconnected:
            out.finish(close=True)
            return
        try:
            length = upload.length
            if length is None:
                # Chunked upload: no length to promise the app until it is done.
                upload.wait_done(conn)
                length = upload.length = os.path.getsize(upload.path)
            body = open_upload(upload, conn)
            try:
                self.handler(msg, out, body, length)
            finally:
                body.close()
            if not upload.done.is_set():
                out.finish(close=True)  # the rest of the body is still coming: end here
        except UploadRejected as exc:
            self._reject(msg, out, exc)
        except ClientDisconnected:
            out.finish(close=True)
        finally:
            self._end_upload(conn, upload)

    def _reject(self, msg: Message, out: Output, exc: UploadRejected) -> None:
        payload = self._refusal(msg, str(exc), refusal_status(exc))
        if not out.done:
            out.finish(payload, close=True)

    def drain(self, timeout: float) -> bool:
        """Let queued and in-flight requests finish, at most ``timeout`` seconds."""
        for _ in self._workers:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))
        busy = sum(t.is_alive() for t in self._workers)
        if busy:
            log.warning("graceful timeout (%.1fs): %d thread(s) still busy", timeout, busy)
        return busy == 0
