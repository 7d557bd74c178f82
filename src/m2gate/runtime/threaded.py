"""The threaded worker: one receiving loop, N app threads, graceful stop.

A single thread owns the PULL socket and hands requests to the app threads.
This is what keeps the Mongrel2 facts manageable: pipelined requests for a
connection are queued behind the one in flight (replies go out in request
order), and a disconnect notice reaches the connection's state whichever
thread serves it.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import IO, Protocol

from m2gate.conn.connection import Connection, Flusher, Output
from m2gate.conn.table import ConnectionTable
from m2gate.conn.uploads import Upload, UploadRejected, UploadStore, open_upload
from m2gate.protocol.errors import ClientDisconnected, ProtocolError
from m2gate.protocol.http import SERVER_HEADER, request_framing, simple_response
from m2gate.protocol.messages import (
    Credits,
    Disconnect,
    HTTPRequest,
    Message,
    UnknownControl,
    UploadDone,
    UploadStart,
    parse_message,
)
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


class ThreadedRuntime:
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
    ) -> None:
        self.source = source
        self.sink = sink
        self.handler = handler
        self.threads = threads
        self.max_message = max_message
        self.flush_interval = flush_interval
        self.server_header = server_header
        self.uploads = uploads or UploadStore("")
        self.on_done = on_done
        self.stopping = threading.Event()
        self.requests = 0
        self._table: ConnectionTable[Connection] = ConnectionTable(Connection, reply_ident)
        self._conns = self._table.conns
        self._lock = threading.Lock()
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
                self.feed(data)
        # Stop accepting, but serve what Mongrel2 already pushed to us.
        self.source.stop_receiving()
        while (data := self.source.recv(0)) is not None:
            self.feed(data)
        return self.drain(graceful_timeout)

    def stop(self) -> None:
        """Safe from a signal handler: only sets a flag the loop checks."""
        self.stopping.set()

    @property
    def disconnects(self) -> int:
        """Disconnect notices that came while a request was being served."""
        return self._table.disconnects

    def feed(self, data: bytes) -> None:
        """Parse one raw message and act on it; bad input is logged and dropped."""
        try:
            msg = parse_message(data)
        except ProtocolError as exc:
            log.warning("dropped malformed message (%d bytes): %s", len(data), exc)
            return
        if type(msg) is HTTPRequest:  # nearly every message: skip the checks below
            self._dispatch(msg)
        elif isinstance(msg, Disconnect):
            self._disconnected(msg)
        elif isinstance(msg, Credits):
            with self._lock:
                conn = self._conns.get(msg.key)
            if conn is not None:
                conn.add_credits(msg.amount)
        elif isinstance(msg, UnknownControl):
            log.debug("ignored control message of type %s", msg.type)
        elif isinstance(msg, UploadDone) and self._upload_done(msg):
            return
        else:
            self._dispatch(msg)

    def _upload_done(self, msg: UploadDone) -> bool:
        """Complete the upload in flight; False if there is none (forged: 400)."""
        with self._lock:
            conn = self._conns.get(msg.key)
            upload = conn.upload if conn is not None else None
        if upload is None:
            return False
        if msg.start_path != upload.announced:
            upload.error = "upload-start header changed to %r" % msg.start_path
        upload.finish(msg.upload_path)
        return True

    def _disconnected(self, msg: Message) -> None:
        with self._lock:
            found = self._table.disconnected(msg.key)
        if found is None:
            return
        conn, dropped = found
        conn.mark_closed()
        self._report_dropped(conn, dropped)
        log.debug("client %s:%s disconnected", msg.sender, msg.conn_id)

    def _dispatch(self, msg: Message) -> None:
        with self._lock:
            conn, start = self._table.admit(msg)
            if isinstance(msg, UploadStart) and not msg.body and conn.upload is None:
                # Registered here, not by the app thread: upload-done can arrive
                # before a thread (or greenlet) has even started on the request.
                conn.upload = Upload(msg.upload_path, "", _content_length(msg))
        if start:
            self._submit(conn, msg)

    # -- how a unit of work runs (gevent.py overrides these and drain) --
    def _start(self) -> None:
        for t in self._workers:
            t.start()

    def _submit(self, conn: Connection, msg: Message) -> None:
        """Hand a connection's next request to an app thread."""
        self._queue.put((conn, msg))

    def _serve_connection(self, conn: Connection, msg: Message) -> None:
        """Serve ``msg``, then the requests pipelined behind it, in order."""
        next_msg: Message | None = msg
        while next_msg is not None:
            keep = self._serve(conn, next_msg)
            next_msg = self._done(conn, keep)

    # -- app threads -------------------------------------------------------
    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            self._serve_connection(*item)

    def _serve(self, conn: Connection, msg: Message) -> bool:
        out = Output(conn, self.sink, self._flusher, self.max_message, self.flush_interval)
        try:
            if isinstance(msg, HTTPRequest):
                self.handler(msg, out)
            elif isinstance(msg, (UploadStart, UploadDone)):
                self._serve_upload(conn, msg, out)
            else:
                self._unsupported(msg, out)
        except Exception:
            # The adapter answers app errors itself; this is a bug of ours.
            log.exception("internal error serving %s:%s", msg.sender, msg.conn_id)
            out.finish(close=True)
        finally:
            if not out.done:
                out.finish(close=True)
            self.requests += 1
            if self.on_done is not None:
                self.on_done(conn)
        return not out.closing and not conn.closed

    def _serve_upload(self, conn: Connection, msg: Message, out: Output) -> None:
        """Run the app on a body Mongrel2 is still writing to its temp store."""
        if isinstance(msg, UploadDone) or msg.body:
            # Real upload-done only follows an upload-start we serve; a real
            # upload-start has an empty body. Anything else is forged.
            self._reject(msg, out, "upload headers on an ordinary request")
            return
        assert isinstance(msg, UploadStart)
        with self._lock:
            upload = conn.upload  # normally registered by _dispatch
            if upload is None or upload.announced != msg.upload_path:
                upload = conn.upload = Upload(msg.upload_path, "", _content_length(msg))
        length = upload.length
        try:
            try:
                real = upload.path = self.uploads.resolve(msg.upload_path)
            except UploadRejected as exc:
                self._reject(msg, out, str(exc))
                return
            if length is None:
                # Chunked upload: no length to promise the app until it is done.
                upload.wait_done(conn)
                length = os.path.getsize(real)
                upload.length = length
            body = open_upload(upload, conn)
            try:
                self.handler(msg, out, body, length)
            finally:
                body.close()
            if not upload.done.is_set():
                out.finish(close=True)  # the rest of the body is still coming: end here
        except UploadRejected as exc:
            self._reject(msg, out, str(exc))
        except ClientDisconnected:
            out.finish(close=True)
        finally:
            with self._lock:
                conn.upload = None
            if upload.path:  # only a path resolved inside the temp store is ours to delete
                upload.remove()

    def _reject(self, msg: Message, out: Output, reason: str) -> None:
        log.warning("400 for %s:%s: %s", msg.sender, msg.conn_id, reason)
        if out.done:
            return
        version, _ = request_framing(msg)
        payload, _ = simple_response(
            "400 Bad Request", b"Bad Request\n", version, False, self.server_header
        )
        out.finish(payload, close=True)

    def _unsupported(self, msg: Message, out: Output) -> None:
        """Answer the message kinds this worker cannot serve, instead of hanging."""
        status = {
            "UploadStream": "413 Content Too Large",
        }.get(type(msg).__name__, "400 Bad Request")
        log.warning(
            "%s from %s:%s not supported here: %s",
            type(msg).__name__,
            msg.sender,
            msg.conn_id,
            status,
        )
        version, _ = request_framing(msg)
        payload, _ = simple_response(
            status, status[4:].encode() + b"\n", version, False, self.server_header
        )
        out.finish(payload, close=True)

    def _done(self, conn: Connection, keep_alive: bool) -> Message | None:
        with self._lock:
            next_msg, dropped = self._table.done(conn, keep_alive)
        if dropped:
            self._report_dropped(conn, dropped)
        return next_msg

    def _report_dropped(self, conn: Connection, count: int) -> None:
        """``on_done`` once per pipelined request dropped unserved (closed connection).

        So a supervisor counting requests in flight sees exactly one
        ``on_done`` for every request message this worker accepted.
        """
        if self.on_done is not None:
            for _ in range(count):
                self.on_done(conn)

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


def _content_length(msg: Message) -> int | None:
    raw = msg.header("content-length")
    return int(raw) if raw and raw.isdigit() else None
