"""The asyncio runtime for ASGI apps: one receiving task, a task per connection.

It keeps the threaded worker's rules (:mod:`m2gate.runtime.threaded`) on an
event loop: a single task owns the PULL socket, pipelined requests for a
connection wait behind the one in flight so replies go out in request order,
websocket frames go to the connection's session, and a disconnect notice
reaches whatever serves the connection (``http.disconnect`` /
``websocket.disconnect``). Stopping is graceful: stop receiving, serve what
Mongrel2 already pushed, close websockets with 1001, wait at most
``graceful_timeout`` for the rest, then run the lifespan shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from m2gate import logs
from m2gate.adapters.accesslog import AccessLogger
from m2gate.adapters.asgi import (
    ASGIApp,
    HTTPCycle,
    Lifespan,
    LifespanError,
    WebSocketSession,
    http_scope,
    websocket_scope,
)
from m2gate.adapters.common import EnvironDefaults
from m2gate.conn.async_connection import AsyncConnection, AsyncOutput
from m2gate.conn.table import ConnectionTable
from m2gate.conn.uploads import Upload, UploadRejected, UploadStore, open_upload
from m2gate.protocol import replies
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
    WebSocketFrame,
    WebSocketHandshake,
    parse_message,
)
from m2gate.transports.zmq_async import AsyncZmqTransport

log = logging.getLogger("m2gate.worker")

UPLOAD_CHUNK = 256 * 1024


class AsyncTransport(Protocol):
    """What the runtime needs from its transport (:class:`AsyncZmqTransport`)."""

    async def recv(self, timeout_ms: int | None = None) -> bytes | None: ...

    def recv_nowait(self) -> bytes | None: ...

    def send(self, messages: Sequence[bytes]) -> None: ...

    def stop_receiving(self) -> None: ...


class AsyncioRuntime:
    """Serves an ASGI app for the messages ``transport`` receives."""

    def __init__(
        self,
        transport: AsyncTransport,
        app: ASGIApp,
        defaults: EnvironDefaults,
        reply_ident: bytes = b"",
        max_message: int = 4 * 1024 * 1024,
        flush_interval: float = 0.005,
        uploads: UploadStore | None = None,
        ws_close_timeout: float = 5.0,
        idle_keepalive: float = 30.0,
        on_done: Callable[[AsyncConnection], None] | None = None,
        access_log: AccessLogger | None = None,
    ) -> None:
        self.transport = transport
        self.app = app
        self.defaults = defaults
        self.max_message = max_message
        self.flush_interval = flush_interval
        self.uploads = uploads or UploadStore("")
        self.ws_close_timeout = ws_close_timeout
        self.idle_keepalive = idle_keepalive
        self.on_done = on_done
        self.access_log = access_log
        self.state: dict[str, Any] = {}
        self.requests = 0
        self._table: ConnectionTable[AsyncConnection] = ConnectionTable(
            AsyncConnection, reply_ident
        )
        self._conns = self._table.conns
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop: asyncio.Event | None = None
        # Messages dispatched to a task that has not started serving them yet,
        # and upload-done notices that came before their upload was set up.
        self._starting: dict[tuple[str, int], Message] = {}
        self._early_done: dict[tuple[tuple[str, int], str], UploadDone] = {}
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def disconnects(self) -> int:
        """Disconnect notices that came while a request was being served."""
        return self._table.disconnects

    def stop(self) -> None:
        """Begin a graceful stop (call from the loop, e.g. a signal handler)."""
        self._stopping = True
        if self._stop is not None:
            self._stop.set()

    async def run(self, graceful_timeout: float) -> bool:
        """Serve until :meth:`stop`; True if every request finished in time."""
        self._stop = asyncio.Event()
        if self._stopping:
            self._stop.set()
        receiver = asyncio.create_task(self._receive_loop())
        background = [receiver]
        if self.idle_keepalive > 0:
            background.append(asyncio.create_task(self._keepalive_loop(self.idle_keepalive)))
        await self._stop.wait()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        # Stop accepting, but serve what Mongrel2 already pushed to us.
        self.transport.stop_receiving()
        while (data := self.transport.recv_nowait()) is not None:
            self.feed(data)
        return await self.drain(graceful_timeout)

    async def _receive_loop(self) -> None:
        recv, recv_nowait, feed = self.transport.recv, self.transport.recv_nowait, self.feed
        while True:
            data = await recv()
            while data is not None:
                try:
                    feed(data)
                except Exception:  # a bug of ours must not stop the receiving
                    log.exception("failed to handle a message (%d bytes)", len(data))
                data = recv_nowait()  # the rest of a burst, without a future each
            await asyncio.sleep(0)  # let the requests just started run first

    async def _keepalive_loop(self, interval: float) -> None:
        """Reset Mongrel2's idle timers (limits.min_ping) for connections in use.

        A quiet websocket, a long poll or a stream between events sends
        nothing for a while; Mongrel2 would kill it as idle.
        """
        while True:
            await asyncio.sleep(interval)
            targets: dict[bytes, list[int]] = {}
            for conn in self._conns.values():
                session = conn.session
                if session is None or conn.closed:
                    continue
                if isinstance(session, WebSocketSession) and session.state != "open":
                    continue
                targets.setdefault(conn.uuid, []).append(conn.conn_id)
            for uuid, conn_ids in targets.items():
                self.transport.send(replies.ctl(uuid, conn_ids, {"keep-alive": True}))

    async def drain(self, timeout: float) -> bool:
        """Close websockets (1001), let requests finish, cancel what outlives ``timeout``."""
        for conn in list(self._conns.values()):
            if isinstance(conn.session, WebSocketSession):
                conn.session.shutdown()
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        if not pending:
            return True
        log.warning("graceful timeout (%.1fs): %d request(s) still busy", timeout, len(pending))
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=5.0)
        return False

    # -- receiving ---------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Parse one raw message and act on it; bad input is logged and dropped."""
        try:
            msg = parse_message(data)
        except ProtocolError as exc:
            log.warning("dropped malformed message (%d bytes): %s", len(data), exc)
            return
        if isinstance(msg, Disconnect):
            self._disconnected(msg)
        elif isinstance(msg, Credits):
            conn = self._conns.get(msg.key)
            if conn is not None:
                conn.add_credits(msg.amount)
        elif isinstance(msg, UnknownControl):
            log.debug("ignored control message of type %s", msg.type)
        elif isinstance(msg, WebSocketFrame):
            conn = self._conns.get(msg.key)
            if conn is not None and isinstance(conn.session, WebSocketSession):
                conn.session.feed(msg)
            else:
                log.debug("websocket frame for %s:%s without a session", msg.sender, msg.conn_id)
        elif isinstance(msg, UploadDone) and self._upload_done(msg):
            return
        else:
            self._dispatch(msg)

    def _upload_done(self, msg: UploadDone) -> bool:
        """Complete the upload in flight; False if there is none (forged: 400).

        A small upload's done notice can arrive before the task serving its
        upload-start has even begun: it is kept for that task then.
        """
        conn = self._conns.get(msg.key)
        if conn is None:
            return False
        upload = conn.upload
        if upload is None:
            waiting = [m for m in conn.pending if isinstance(m, UploadStart)]
            current = self._starting.get(msg.key)
            if isinstance(current, UploadStart):
                waiting.append(current)
            if not any(m.upload_path == msg.start_path for m in waiting):
                return False
            self._early_done[(msg.key, msg.start_path)] = msg
            return True
        _finish_upload(upload, msg)
        return True

    def _disconnected(self, msg: Message) -> None:
        found = self._table.disconnected(msg.key)
        if found is None:
            return
        conn = found[0]
        self._forget_early(msg.key)
        conn.mark_closed()
        log.debug("client %s:%s disconnected", msg.sender, msg.conn_id)

    def _forget_early(self, key: tuple[str, int]) -> None:
        for early in [k for k in self._early_done if k[0] == key]:
            del self._early_done[early]

    def _dispatch(self, msg: Message) -> None:
        conn, start = self._table.admit(msg)
        if not start:
            return
        self._starting[msg.key] = msg
        task = asyncio.create_task(self._serve_connection(conn, msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- serving -------------------------------------------------------------
    async def _serve_connection(self, conn: AsyncConnection, msg: Message) -> None:
        next_msg: Message | None = msg
        while next_msg is not None:
            keep = await self._serve(conn, next_msg)
            next_msg = self._done(conn, keep)

    def _output(self, conn: AsyncConnection) -> AsyncOutput:
        return AsyncOutput(conn, self.transport, self.max_message, self.flush_interval)

    async def _serve(self, conn: AsyncConnection, msg: Message) -> bool:
        self._starting.pop(conn.key, None)
        out = self._output(conn)
        try:
            if isinstance(msg, HTTPRequest):
                cycle = HTTPCycle(msg, conn, out, msg.body)
                await self.app_call(cycle, http_scope(msg, self.defaults, self.state))
            elif isinstance(msg, WebSocketHandshake):
                session = WebSocketSession(msg, conn, out, self.ws_close_timeout)
                started = time.perf_counter()
                try:
                    await session.run(self.app, websocket_scope(msg, self.defaults, self.state))
                    await session.wait_closed()  # the client's close frame, or a timeout
                finally:
                    conn.session = None
                    if self.access_log is not None:
                        duration = time.perf_counter() - started
                        self.access_log.log(msg, session.status_code, 0, duration)
                return False
            elif isinstance(msg, (UploadStart, UploadDone)):
                await self._serve_upload(conn, msg, out)
            else:
                await self._unsupported(msg, out)
        except asyncio.CancelledError:
            out.close_now()
            conn.mark_closed()  # also ends upload reads waiting in threads
            raise
        except Exception:
            # The adapter answers app errors itself; this is a bug of ours.
            log.exception("internal error serving %s:%s", msg.sender, msg.conn_id)
            out.close_now()
        finally:
            self.requests += 1
            if self.on_done is not None:
                self.on_done(conn)
        if not out.done:
            await out.afinish(close=True)
        return not out.closing and not conn.closed

    async def app_call(self, cycle: HTTPCycle, scope: dict[str, Any]) -> None:
        started = time.perf_counter()
        try:
            await cycle.run(self.app, scope)
        finally:
            if self.access_log is not None:
                duration = time.perf_counter() - started
                self.access_log.log(cycle.msg, cycle.status_code, cycle.nbytes, duration)

    async def _serve_upload(
        self, conn: AsyncConnection, msg: UploadStart | UploadDone, out: AsyncOutput
    ) -> None:
        """Run the app on a body Mongrel2 is still writing to its temp store."""
        if isinstance(msg, UploadDone) or msg.body:
            # Real upload-done only follows an upload-start we serve; a real
            # upload-start has an empty body. Anything else is forged.
            await self._reject(msg, out, "upload headers on an ordinary request")
            return
        try:
            real = self.uploads.resolve(msg.upload_path)
        except UploadRejected as exc:
            await self._reject(msg, out, str(exc))
            return
        length_raw = msg.header("content-length")
        length = int(length_raw) if length_raw and length_raw.isdigit() else None
        upload = Upload(msg.upload_path, real, length)
        conn.upload = upload
        early = self._early_done.pop((conn.key, msg.upload_path), None)
        if early is not None:
            _finish_upload(upload, early)
        try:
            if length is None:
                # Chunked upload: no length to promise the app until it is done.
                await asyncio.to_thread(upload.wait_done, conn)
                upload.length = length = os.path.getsize(real)
            cycle = HTTPCycle(msg, conn, out, _upload_chunks(upload, conn))
            await self.app_call(cycle, http_scope(msg, self.defaults, self.state))
            if not upload.done.is_set():
                await out.afinish(close=True)  # the rest of the body is still coming: end here
        except UploadRejected as exc:
            await self._reject(msg, out, str(exc))
        except ClientDisconnected:
            await out.afinish(close=True)
        finally:
            conn.upload = None
            self._early_done.pop((conn.key, msg.upload_path), None)
            upload.remove()

    async def _reject(self, msg: Message, out: AsyncOutput, reason: str) -> None:
        log.warning("400 for %s:%s: %s", msg.sender, msg.conn_id, reason)
        if out.done:
            return
        version, _ = request_framing(msg)
        payload, _ = simple_response(
            "400 Bad Request", b"Bad Request\n", version, False, SERVER_HEADER
        )
        await out.afinish(payload, close=True)

    async def _unsupported(self, msg: Message, out: AsyncOutput) -> None:
        """Answer the message kinds this worker cannot serve, instead of hanging."""
        status = (
            "413 Content Too Large" if type(msg).__name__ == "UploadStream" else ("400 Bad Request")
        )
        log.warning(
            "%s from %s:%s not supported here: %s",
            type(msg).__name__,
            msg.sender,
            msg.conn_id,
            status,
        )
        version, _ = request_framing(msg)
        payload, _ = simple_response(
            status, status[4:].encode() + b"\n", version, False, SERVER_HEADER
        )
        await out.afinish(payload, close=True)

    def _done(self, conn: AsyncConnection, keep_alive: bool) -> Message | None:
        if not keep_alive:
            self._forget_early(conn.key)
        return self._table.done(conn, keep_alive)[0]


def _finish_upload(upload: Upload, msg: UploadDone) -> None:
    if msg.start_path != upload.announced:
        upload.error = "upload-start header changed to %r" % msg.start_path
    upload.finish(msg.upload_path)


async def _upload_chunks(upload: Upload, conn: AsyncConnection) -> AsyncIterator[bytes]:
    """The upload file in chunks, read in a thread while Mongrel2 still writes it."""
    body = await asyncio.to_thread(open_upload, upload, conn)
    try:
        while True:
            chunk = await asyncio.to_thread(body.read1, UPLOAD_CHUNK)
            if not chunk:
                return
            yield chunk
    finally:
        body.close()


def serve_asgi(cfg: Any, app: ASGIApp) -> int:
    """``m2gate serve`` for an ASGI app: lifespan, connect, serve, stop cleanly.

    A failed lifespan startup raises :class:`~m2gate.loading.AppLoadError`,
    which the CLI turns into one line and a non-zero exit.
    """
    from m2gate.loading import AppLoadError

    try:
        return asyncio.run(_main(cfg, app))
    except LifespanError as exc:
        raise AppLoadError(str(exc)) from None


async def _main(cfg: Any, app: ASGIApp) -> int:
    loop = asyncio.get_running_loop()
    lifespan = Lifespan(app)
    await lifespan.startup()
    defaults = EnvironDefaults(cfg.server_name, cfg.server_port, cfg.trust_x_forwarded_for)
    transport = AsyncZmqTransport(cfg.send_spec, cfg.recv_spec, cfg.send_ident)
    worker = AsyncioRuntime(
        transport,
        app,
        defaults,
        reply_ident=cfg.recv_ident.encode("ascii"),
        max_message=cfg.max_message,
        flush_interval=cfg.flush_interval,
        uploads=UploadStore(cfg.upload_dir, cfg.mongrel2_chroot),
        access_log=logs.access_logger(),
        idle_keepalive=cfg.idle_keepalive,
    )
    worker.state = lifespan.state

    def on_signal() -> None:
        if worker.stopping:
            raise SystemExit(1)  # a second signal forces the exit
        worker.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    log.info(
        "serving %s (ASGI): PULL %s, PUB %s, identity %s",
        cfg.app,
        cfg.send_spec,
        cfg.recv_spec,
        cfg.send_ident,
    )
    try:
        clean = await worker.run(cfg.graceful_timeout)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    await lifespan.shutdown(cfg.graceful_timeout)
    transport.close(linger_s=min(cfg.graceful_timeout, 5.0))
    log.info(
        "stopped after %d request(s), %d client(s) gone mid-request%s",
        worker.requests,
        worker.disconnects,
        "" if clean else " (forced)",
    )
    return 0
