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
  upload-done race, solved here only);
- *upload done*: completes the upload in flight; one for an upload whose
  request was already answered (the app did not wait for the whole body)
  is late and ignored quietly; one with no upload announced is forged and
  served as a request (answered 400);
- *disconnect*: the connection is marked closed (writers and upload readers
  stop), pipelined requests behind it are dropped;
- *credits*: added to the connection (flow control);
- *websocket frame*: :meth:`Runtime._frame` (no websockets: answered 400);
- unknown control messages: ignored;
- *Mongrel2 went away* (its connection ids restart at 1): every connection
  of the old incarnation is marked closed and forgotten
  (:meth:`Runtime.reset_frontend`), so no reply of an old request reaches a
  new client that got the same id. The source says so
  (``frontend_changed()``, asked when idle and when a request joins a
  connection already held), or a supervisor does (its reset frame).

And for serving: every request accepted ends in exactly one ``on_done``
call, served or dropped (a supervisor counts requests in flight with it);
:meth:`Runtime._refusal` is the one answer m2gate gives itself (400 for a
forged upload or an unsupported message kind, 413 for a streamed upload)
before closing; the access log is the adapter's (it alone knows status and
bytes). ``stopping`` is a :class:`threading.Event`: :meth:`Runtime.stop` is
safe from a signal handler, and a second signal while it is set forces the
exit (the callers' rule).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from m2gate.conn.connection import Connection
from m2gate.conn.table import ConnectionTable
from m2gate.conn.uploads import Upload, UploadRejected, UploadStore
from m2gate.protocol.errors import ProtocolError
from m2gate.protocol.http import SERVER_HEADER, error_response, request_framing
from m2gate.protocol.intake import log_dropped
from m2gate.protocol.messages import (
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

log = logging.getLogger("m2gate.worker")

C = TypeVar("C", bound=Connection)

FORGED_UPLOAD = "upload headers on an ordinary request"
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
    ) -> None:
        self.uploads = uploads or UploadStore("")
        self.on_done = on_done
        self.server_header = server_header
        self.stopping = threading.Event()
        self.requests = 0
        self._table: ConnectionTable[C] = ConnectionTable(factory, reply_ident)
        self._conns = self._table.conns
        self._lock = threading.Lock()
        self._frontend_changed: Callable[[], bool] | None = None
        # (connection, announced path) of uploads answered before Mongrel2
        # said they were done: their upload-done is late, not forged.
        self._answered_uploads: OrderedDict[tuple[tuple[str, int], str], None] = OrderedDict()

    # -- lifecycle -----------------------------------------------------------
    def stop(self) -> None:
        """Begin a graceful stop; safe from a signal handler (sets a flag)."""
        self.stopping.set()

    @property
    def disconnects(self) -> int:
        """Disconnect notices that came while a request was being served."""
        return self._table.disconnects

    # -- the front-end's incarnations ----------------------------------------
    def watch_frontend(self, changed: Callable[[], bool] | None) -> None:
        """Use ``changed()`` (True once per Mongrel2 gone away) to detect restarts."""
        self._frontend_changed = changed
        self._table.on_held = self._held_changed if changed is not None else None

    def check_frontend(self) -> None:
        """From the receiving loop when idle: reset if Mongrel2 went away."""
        changed = self._frontend_changed
        if changed is not None and changed():
            self.reset_frontend()

    def reset_frontend(self, epoch: int | None = None) -> None:
        """Drop every connection of Mongrel2's old incarnation (receiving thread)."""
        with self._lock:
            self._reset_locked(epoch)

    def _held_changed(self) -> bool:
        # The table's on_held, under _lock: a request joins a held connection.
        changed = self._frontend_changed
        if changed is not None and changed():
            self._reset_locked(None)
            return True
        return False

    def _reset_locked(self, epoch: int | None) -> None:
        old = self._table.reset(epoch)
        for conn, dropped in old:
            conn.mark_closed()  # its writer sends nothing more: the id is no longer its
            self._report_dropped(conn, dropped)
        log.warning(
            "Mongrel2 went away: forgot %d connection(s) of its old incarnation (epoch %d)",
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
        with self._lock:
            conn, start = self._table.admit(msg)
            if isinstance(msg, UploadStart) and not msg.body and conn.upload is None:
                # Registered here, not by what serves it: upload-done can
                # arrive before a thread, greenlet or task has even started.
                conn.upload = Upload(msg.upload_path, "", content_length(msg))
        if start:
            self._submit(conn, msg)

    def _submit(self, conn: C, msg: Message) -> None:
        raise NotImplementedError

    def _upload_done(self, msg: UploadDone) -> bool:
        """Complete the upload in flight; False if there is none (forged: 400)."""
        with self._lock:
            conn = self._conns.get(msg.key)
            upload = conn.upload if conn is not None else None
            late = (
                upload is None
                and self._answered_uploads.pop((msg.key, msg.start_path), True) is None
            )
        if late:
            log.debug("late upload-done for %s:%s ignored", msg.sender, msg.conn_id)
            return True
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

    # -- serving -------------------------------------------------------------
    def _done(self, conn: C, keep_alive: bool) -> Message | None:
        """The next pipelined request to serve on ``conn``, or None."""
        with self._lock:
            next_msg, dropped = self._table.done(conn, keep_alive)
        if dropped:
            self._report_dropped(conn, dropped)
        return next_msg

    def _report_dropped(self, conn: C, count: int) -> None:
        """``on_done`` once per pipelined request dropped unserved (closed connection)."""
        if self.on_done is not None:
            for _ in range(count):
                self.on_done(conn)

    def _start_upload(self, conn: C, msg: UploadStart | UploadDone) -> Upload:
        """The upload ``msg`` announces, its path checked; else :class:`UploadRejected`.

        A real upload-done only follows an upload-start being served, and a
        real upload-start has an empty body: anything else is forged.
        """
        if isinstance(msg, UploadDone) or msg.body:
            raise UploadRejected(FORGED_UPLOAD)
        with self._lock:
            upload = conn.upload  # normally registered by _dispatch
            if upload is None or upload.announced != msg.upload_path:
                upload = conn.upload = Upload(msg.upload_path, "", content_length(msg))
        try:
            upload.path = self.uploads.resolve(msg.upload_path)
        except UploadRejected:
            self._end_upload(conn, upload)
            raise
        return upload

    def _end_upload(self, conn: C, upload: Upload) -> None:
        with self._lock:
            conn.upload = None
            if not upload.done.is_set():  # answered first: its upload-done will be late
                answered = self._answered_uploads
                answered[(conn.key, upload.announced)] = None
                if len(answered) > ANSWERED_UPLOADS_MAX:
                    answered.popitem(last=False)
        if upload.path:  # only a path resolved inside the temp store is ours to delete
            upload.remove()

    def _refusal(self, msg: Message, reason: str | None = None) -> bytes:
        """The answer to a request m2gate refuses itself, logged; send it, then close.

        With ``reason``: a 400 for a bad request (a forged or broken upload).
        Without: the message kind is not served here (413 for a streamed
        upload, 400 for anything else).
        """
        if reason is not None:
            status = "400 Bad Request"
            log.warning("400 for %s:%s: %s", msg.sender, msg.conn_id, reason)
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


def content_length(msg: Message) -> int | None:
    """The announced Content-Length, None if absent or not a plain number."""
    raw = msg.header("content-length")
    return int(raw) if raw and raw.isdigit() else None
