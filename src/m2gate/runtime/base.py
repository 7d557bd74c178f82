"""The runtime contract: what every m2gate runtime does with Mongrel2's messages.

A runtime owns the receiving side of one handler connection and serves the
requests it receives. :class:`Runtime` holds the rules all of them share,
written once here; :class:`~m2gate.runtime.threaded.ThreadedRuntime` (and
:class:`~m2gate.runtime.gevent.GeventRuntime`, which only changes how a unit
of work runs) and :class:`~m2gate.runtime.asyncio.AsyncioRuntime` add only
*how* a request is served: on a thread, a greenlet or a task.

The contract, as the receiving loop sees it (:meth:`Runtime.feed`, one raw
message at a time, from one thread or the loop only):

- *malformed*: logged once and dropped (no trustworthy connection to answer);
- *request* (HTTP, websocket handshake, upload start, anything to answer):
  admitted to the :class:`~m2gate.conn.table.ConnectionTable`; it starts
  now (``_submit``) or waits behind the request in flight on the same
  connection, so replies go out in request order;
- *upload start*: its :class:`~m2gate.conn.uploads.Upload` is registered on
  the connection at admission, in the receiving loop, so an *upload done*
  that comes before anything started serving it is never lost (the early
  upload-done race, solved here only); only an upload-start Mongrel2 itself
  sent (:func:`~m2gate.conn.uploads.announced_path`) registers one, a forged
  one is answered 400 and no file of its naming is touched;
- by default the request is *held* here, not served, until its upload is
  complete (a slow client must not pin an app thread), at most
  ``UploadStore.timeout`` seconds (:meth:`Runtime.expire_uploads`, 408);
  with ``UploadStore.stream`` the app is called at once and reads as
  Mongrel2 writes;
- *upload done*: completes the upload in flight (and releases a held
  request); one for an upload whose request was already answered (the app
  did not wait for the whole body) is late and ignored quietly, until that
  connection's disconnect; one with no upload announced (or after the
  disconnect) is forged and served as a request (answered 400). A
  supervisor decides the same way which of them it counts in flight
  (:mod:`m2gate.supervisor.handoff`), so a request it counts always gets
  its ``on_done``;
- *disconnect*: the connection is marked closed (writers and upload readers
  stop), pipelined requests behind it are dropped, and its answered uploads
  are forgotten (nothing of that connection can be late any more);
- *credits*: added to the connection (flow control);
- *websocket frame*: :meth:`Runtime._frame` (no websockets: answered 400);
- unknown control messages: ignored;
- *Mongrel2 went away* (its connection ids restart at 1): every connection
  of the old incarnation is marked closed and forgotten, its requests held
  for their uploads end at once, not started
  (:meth:`Runtime.reset_frontend`), so no reply of an old request reaches a
  new client that got the same id. The source says so
  (``frontend_changed()``, asked when idle and when a request joins a
  connection already held), or a supervisor does (its reset frame).

And for serving: every request accepted ends in exactly one ``on_done``
call, served or dropped (a supervisor counts requests in flight with it);
:meth:`Runtime._refusal` is the one answer m2gate gives itself (400 for a
forged upload or an unsupported message kind, 408 for an upload past its
timeout, 413 for a streamed upload) before closing; every way out of a
request removes the temp file it claimed; the access log is the adapter's
(it alone knows status and bytes). Overload is answered, never queued
without bound: a request beyond the runtime's backlog, or pipelined beyond
``max_pipelined`` on one connection, gets :meth:`Runtime._overloaded`'s 503
and the connection closes; a request whose client left while it waited is
not started. ``stopping`` is a :class:`threading.Event`: :meth:`Runtime.stop` is
safe from a signal handler, and a second signal while it is set forces the
exit (the callers' rule).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Generic, TypeVar

from m2gate.conn.connection import CREDITS_TIMEOUT, Connection
from m2gate.conn.table import ConnectionTable
from m2gate.conn.uploads import (
    Upload,
    UploadRejected,
    UploadStore,
    UploadTimedOut,
    announced_path,
)
from m2gate.protocol.errors import ClientDisconnected, ProtocolError
from m2gate.protocol.http import SERVER_HEADER, error_response, request_framing
from m2gate.protocol.intake import log_dropped
from m2gate.protocol.messages import (
    BadRequest,
    Credits,
    Disconnect,
    HTTPRequest,
    Message,
    UnknownControl,
    UploadDone,
    UploadStart,
    UploadStream,
    WebSocketFrame,
    parse_message,
)
from m2gate.protocol.replies import close, reply
from m2gate.transports.base import ReplyStalled

log = logging.getLogger("m2gate.worker")

C = TypeVar("C", bound=Connection)
# Did Mongrel2 go away? True/False, or (several front-ends) the tags of those that did.
FrontendChanged = Callable[[], "bool | tuple[str, ...]"]

FORGED_UPLOAD = "upload headers on an ordinary request"
FORGED_DONE = "a forged upload-done header on an upload"
OVERLOADED = "503 Service Unavailable"
ANSWERED_UPLOADS_MAX = 1024  # late upload-done notices remembered


class Runtime(Generic[C]):
    """The rules every runtime shares; subclasses say how a request is served.

    Subclasses implement ``_submit(conn, msg)`` (start serving a connection's
    request now), ``run`` and ``drain``; they may override ``_frame``.
    ``_lock`` guards the connection table: app threads and the receiving
    thread share it in the threaded runtime; on an event loop it is never
    contended.
    """

    def __init__(
        self,
        factory: Callable[[str, int, bytes], C],
        reply_ident: bytes = b"",
        uploads: UploadStore | None = None,
        on_done: Callable[[C], None] | None = None,
        server_header: bytes = SERVER_HEADER,
        max_pipelined: int = 16,
        max_message: int = 4 * 1024 * 1024,
        flush_interval: float = 0.005,
        credits_timeout: float = CREDITS_TIMEOUT,
    ) -> None:
        # How every response's writer merges and paces its messages.
        self.max_message = max_message
        self.flush_interval = flush_interval
        self.credits_timeout = credits_timeout
        self.uploads = uploads or UploadStore("")
        self.on_done = on_done
        self.server_header = server_header
        self.stopping = threading.Event()
        self.requests = 0
        self.overloaded = 0  # 503s m2gate answered itself: backlog or pipelining bound
        self._overload_logged = 0.0
        self._table: ConnectionTable[C] = ConnectionTable(factory, reply_ident, max_pipelined)
        self._conns = self._table.conns
        self._lock = threading.Lock()
        # Requests held until their upload is complete, by connection key.
        self._held: dict[tuple[str, int], tuple[C, Message]] = {}
        # Held requests of connections a front-end reset dropped: started (as
        # not started: their clients are gone) once the lock is released.
        self._orphans: list[tuple[C, Message]] = []
        self._frontend_changed: FrontendChanged | None = None
        # The announced path of the upload each connection had answered before
        # Mongrel2 said it was done: its upload-done is late, not forged (until
        # the connection's disconnect: the master forgets it then too).
        self._answered_uploads: OrderedDict[tuple[str, int], str] = OrderedDict()

    # -- lifecycle -----------------------------------------------------------
    def stop(self) -> None:
        """Begin a graceful stop; safe from a signal handler (sets a flag)."""
        self.stopping.set()

    @property
    def disconnects(self) -> int:
        """Disconnect notices that came while a request was being served."""
        return self._table.disconnects

    # -- the front-end's incarnations ----------------------------------------
    def watch_source(self, source: object) -> None:
        """Restart detection and front-end tags, as ``source`` offers them.

        A source of several front-ends (``tagged``) puts each one's tag in
        front of its messages' senders; replies keep it (the sink routes by it).
        """
        if getattr(source, "tagged", False):
            self._table.tag_senders()
        self.watch_frontend(getattr(source, "frontend_changed", None))

    def watch_frontend(self, changed: FrontendChanged | None) -> None:
        """Use ``changed()`` to detect restarts: True once per Mongrel2 gone away.

        A source of several front-ends returns the tags of those that went
        away instead (an empty tuple: none), and only their connections go.
        """
        self._frontend_changed = changed
        self._table.on_held = self._held_changed if changed is not None else None

    def check_frontend(self) -> None:
        """From the receiving loop when idle: reset if Mongrel2 went away."""
        changed = self._frontend_changed
        if changed is not None:
            which = changed()
            if which:
                self.reset_frontend(frontends=which if isinstance(which, tuple) else ())

    def reset_frontend(self, epoch: int | None = None, frontends: tuple[str, ...] = ()) -> None:
        """Drop every connection of Mongrel2's old incarnation (receiving thread).

        ``frontends``: only those front-ends' (their sender tags); else all.
        """
        with self._lock:
            self._reset_locked(epoch, frontends)
        self._start_orphans()

    def _start_orphans(self) -> None:
        """Held requests of a reset's old connections: each ends now (one ``on_done``)."""
        while self._orphans:
            self._submit(*self._orphans.pop())

    def _held_changed(self) -> bool:
        # The table's on_held, under _lock: a request joins a held connection.
        changed = self._frontend_changed
        if changed is not None:
            which = changed()
            if which:
                self._reset_locked(None, which if isinstance(which, tuple) else ())
                return True
        return False

    def _reset_locked(self, epoch: int | None, frontends: tuple[str, ...] = ()) -> None:
        old = self._table.reset(epoch, frontends)
        # The master forgets which worker answered them too.
        if frontends:
            for key in [k for k in self._answered_uploads if k[0].startswith(frontends)]:
                del self._answered_uploads[key]
            gone = [k for k in self._held if k[0].startswith(frontends)]
        else:
            self._answered_uploads.clear()
            gone = list(self._held)
        for key in gone:  # no upload-done or disconnect can reach them
            conn, msg = self._held.pop(key)
            if conn.upload is not None:
                conn.upload.held = False
            self._orphans.append((conn, msg))
        for conn, dropped in old:
            conn.mark_closed()  # its writer sends nothing more: the id is no longer its
            self._report_dropped(conn, dropped)
        log.warning(
            "Mongrel2%s went away: forgot %d connection(s) of its old incarnation (epoch %d)",
            (" front-end %s" % ",".join(t.rstrip("-") for t in frontends)) if frontends else "",
            len(old),
            self._table.epoch,
        )

    # -- receiving -----------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Parse one raw message and act on it (the contract in the module doc)."""
        try:
            msg = parse_message(data)
        except ProtocolError as exc:
            log_dropped(log, data, exc)
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
        elif isinstance(msg, WebSocketFrame):
            self._frame(msg)
        elif isinstance(msg, UploadDone) and self._upload_done(msg):
            return
        else:
            self._dispatch(msg)

    def _frame(self, msg: WebSocketFrame) -> None:
        """A websocket frame; a runtime without websockets answers it as a request."""
        self._dispatch(msg)

    def _dispatch(self, msg: Message) -> None:
        held = False
        with self._lock:
            conn, start = self._table.admit(msg)
            if (
                start is not None
                and isinstance(msg, (UploadStart, UploadDone))
                and conn.upload is None
            ):
                # Registered here, not by what serves it: upload-done can
                # arrive before a thread, greenlet or task has even started.
                path = announced_path(msg)
                if path is not None:
                    timeout = self.uploads.timeout
                    deadline = time.monotonic() + timeout if timeout > 0 else None
                    upload = Upload(path, "", content_length(msg), msg, deadline)
                    if isinstance(msg, UploadDone):
                        upload.rejected = FORGED_DONE
                    else:
                        try:  # refuse at once what will be refused: do not hold it
                            self.uploads.resolve(path)
                        except UploadRejected as exc:
                            upload.rejected = str(exc)
                    conn.upload = upload
                    held = bool(start) and self._hold(conn, msg)
        if self._orphans:  # admit() reset the table (a new Mongrel2)
            self._start_orphans()
        if start and not held:
            self._submit(conn, msg)
        elif start is None:  # beyond the pipelining bound, after the 503: never served
            self._report_dropped(conn, 1)

    def _hold(self, conn: C, msg: Message) -> bool:
        """Keep ``msg`` (about to be served) here until its upload is complete; under _lock."""
        upload = conn.upload
        if (
            upload is None
            or upload.msg is not msg
            or self.uploads.stream
            or upload.rejected is not None
            or upload.done.is_set()
            or conn.closed
        ):
            return False
        upload.held = True
        self._held[conn.key] = (conn, msg)
        return True

    def _release(self, key: tuple[str, int]) -> None:
        """Serve a held request now (its upload is done, timed out or the client left)."""
        with self._lock:
            item = self._held.pop(key, None)
            if item is not None and item[0].upload is not None:
                item[0].upload.held = False
        if item is not None:
            self._submit(*item)

    def release_held(self) -> None:
        """On stop: upload-done can no longer arrive, so held requests are answered 503 now."""
        for key in list(self._held):
            self._release(key)

    def expire_uploads(self, now: float) -> None:
        """Held uploads past their deadline are served a 408; call it from the receiving loop."""
        if not self._held:
            return
        with self._lock:
            late = [
                key
                for key, (conn, _) in self._held.items()
                if conn.upload is not None
                and conn.upload.deadline is not None
                and now > conn.upload.deadline
            ]
            for key in late:
                upload = self._held[key][0].upload
                if upload is not None:
                    upload.timed_out = True
        for key in late:
            self._release(key)

    def _submit(self, conn: C, msg: Message) -> None:
        raise NotImplementedError

    def _upload_done(self, msg: UploadDone) -> bool:
        """Complete the upload in flight; False if there is none (forged: 400)."""
        with self._lock:
            conn = self._conns.get(msg.key)
            upload = conn.upload if conn is not None else None
            late = (
                upload is None
                and self._answered_uploads.get(msg.key) == msg.start_path
                and self._answered_uploads.pop(msg.key) is not None
            )
        if late:
            log.debug("late upload-done for %s:%s ignored", msg.sender, msg.conn_id)
            return True
        if upload is None:
            return False
        if msg.start_path != upload.announced:
            upload.error = "upload-start header changed to %r" % msg.start_path
        upload.finish(msg.upload_path)
        if upload.held:
            self._release(msg.key)
        return True

    def _disconnected(self, msg: Message) -> None:
        with self._lock:
            # An upload-done after the disconnect is no longer late: the
            # master counts it as a request (it forgot the connection), so
            # it must be served, and reported done, like one.
            self._answered_uploads.pop(msg.key, None)
            found = self._table.disconnected(msg.key)
        if found is None:
            return
        conn, dropped = found
        conn.mark_closed()
        with self._lock:  # answered by its app thread just before the close
            self._answered_uploads.pop(msg.key, None)
        self._release(msg.key)  # a held upload ends now (Mongrel2 removes a partial file)
        self._report_dropped(conn, dropped)
        log.debug("client %s:%s disconnected", msg.sender, msg.conn_id)

    # -- serving -------------------------------------------------------------
    def _done(self, conn: C, keep_alive: bool) -> Message | None:
        """The next pipelined request to serve on ``conn``, or None."""
        with self._lock:
            next_msg, dropped = self._table.done(conn, keep_alive)
            overflow = next_msg is not None and next_msg is conn.overflow
            if overflow:
                conn.overflow = None
            elif next_msg is not None and self._hold(conn, next_msg):
                next_msg = None  # a pipelined upload: served when it is complete
        if dropped:
            self._report_dropped(conn, dropped)
        if overflow:
            assert next_msg is not None
            self._overloaded(
                conn, next_msg, "more than %d pipelined requests" % (self._table.max_pipelined)
            )
            return self._done(conn, False)
        return next_msg

    def _send(self, messages: Sequence[bytes]) -> None:
        """Put replies on the runtime's sink (the 503s m2gate answers itself)."""
        raise NotImplementedError

    def _overloaded(self, conn: C, msg: Message, why: str) -> None:
        """Answer ``msg`` 503 at once and close its connection; counts as done.

        Sent as is, without waiting for flow-control credits: it is small,
        and the receiving loop that may call this must never wait. Logged at
        most once a second with the count, as overload comes in floods.
        """
        self.overloaded += 1
        now = time.monotonic()
        if now - self._overload_logged >= 1.0:
            self._overload_logged = now
            log.warning(
                "503 for %s:%s: %s (%d overload 503s so far)",
                msg.sender,
                msg.conn_id,
                why,
                self.overloaded,
            )
        if not conn.closed:
            version = request_framing(msg)[0]
            payload = error_response(
                OVERLOADED, version, method=msg.method, server=self.server_header
            )[0]
            try:
                self._send(
                    [reply(conn.uuid, conn.conn_id, payload), *close(conn.uuid, [conn.conn_id])]
                )
            except ReplyStalled:
                pass  # the sink logged it; the connection is lost either way
        if self.on_done is not None:
            self.on_done(conn)

    def _report_dropped(self, conn: C, count: int) -> None:
        """``on_done`` once per pipelined request dropped unserved (closed connection)."""
        if self.on_done is not None:
            for _ in range(count):
                self.on_done(conn)

    def _start_upload(self, conn: C, msg: UploadStart | UploadDone) -> Upload:
        """The upload ``msg`` announces, its file claimed; else :class:`UploadRejected`.

        Only an upload registered for this very message (one Mongrel2 sent:
        :meth:`_dispatch`) is served; anything else is forged and no file
        it names is opened or removed. A forged upload-done header on a real
        upload is refused too, but its temp file is claimed and removed.
        """
        with self._lock:
            upload = conn.upload
        if upload is None or upload.msg is not msg:
            raise UploadRejected(FORGED_UPLOAD)
        try:
            try:
                upload.path, upload.ident = self.uploads.claim(upload.announced)
            except UploadRejected:
                if conn.closed:  # Mongrel2 removed the partial file of a client gone
                    raise ClientDisconnected() from None
                raise
            if upload.rejected is not None:
                raise UploadRejected(upload.rejected)
            if not self.uploads.stream and not upload.done.is_set():
                if conn.closed:
                    raise ClientDisconnected()
                if not upload.timed_out:  # released by the stop, not by its deadline
                    raise UploadRejected("server stopping before the upload completed", 503)
            upload.check_deadline()
        except BaseException:
            self._end_upload(conn, upload)
            raise
        return upload

    def _not_started(self, conn: C, msg: Message) -> None:
        """The client left before ``msg`` started: serve nothing, but remove its upload.

        Counts as done (one ``on_done``). The temp file of a complete upload is
        still there (Mongrel2 removes only partial ones), and it is ours once
        claimed.
        """
        log.debug("client %s:%s gone before its request started", msg.sender, msg.conn_id)
        with self._lock:
            upload = conn.upload
        if upload is not None and upload.msg is msg:
            try:
                upload.path, upload.ident = self.uploads.claim(upload.announced)
            except UploadRejected:
                pass  # gone already, or never a file of ours: nothing to remove
            self._end_upload(conn, upload)
        if self.on_done is not None:
            self.on_done(conn)

    def _end_upload(self, conn: C, upload: Upload) -> None:
        with self._lock:
            if conn.upload is upload:
                conn.upload = None
            if not upload.done.is_set() and not conn.closed:
                # Answered first: its upload-done will be late (a client gone has none)
                answered = self._answered_uploads
                answered[conn.key] = upload.announced
                answered.move_to_end(conn.key)
                if len(answered) > ANSWERED_UPLOADS_MAX:
                    answered.popitem(last=False)
        upload.remove()  # only a file claimed inside the temp store is ours to delete

    def _refusal(
        self, msg: Message, reason: str | None = None, status: str = "400 Bad Request"
    ) -> bytes:
        """The answer to a request m2gate refuses itself, logged; send it, then close.

        With ``reason``: ``status`` (400) for a bad request (a forged or
        broken upload; 408 for one past its timeout). Without: the message
        kind is not served here (413 for a streamed upload, 400 for anything
        else).
        """
        if reason is None and isinstance(msg, BadRequest):
            reason = msg.reason  # a client-controlled value the parser refused
            status = "%d %s" % (msg.status, HTTPStatus(msg.status).phrase)
        if reason is not None:
            log.warning("%s for %s:%s: %s", status[:3], msg.sender, msg.conn_id, reason)
        else:
            status = "413 Content Too Large" if isinstance(msg, UploadStream) else "400 Bad Request"
            log.warning(
                "%s from %s:%s not supported here: %s",
                type(msg).__name__,
                msg.sender,
                msg.conn_id,
                status,
            )
        return error_response(status, request_framing(msg)[0], server=self.server_header)[0]


_REFUSALS = {408: "408 Request Timeout", 503: "503 Service Unavailable"}


def refusal_status(exc: UploadRejected) -> str:
    """The status m2gate answers a refused upload with: 408 past its timeout, 503 on stop, 400."""
    if isinstance(exc, UploadTimedOut):
        return _REFUSALS[408]
    return _REFUSALS.get(exc.status_hint, "400 Bad Request")


def content_length(msg: Message) -> int | None:
    """The announced Content-Length, None if absent or not plain ASCII digits."""
    raw = msg.header("content-length")
    return int(raw) if raw and raw.isascii() and raw.isdigit() else None
