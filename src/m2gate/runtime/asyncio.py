"""The asyncio runtime for ASGI apps: one receiving task, a task per connection.

It keeps the runtime contract (:mod:`m2gate.runtime.base`) on an event loop:
a single task owns the PULL socket, pipelined requests for a connection wait
behind the one in flight so replies go out in request order, websocket
frames go to the connection's session, and a disconnect notice reaches
whatever serves the connection (``http.disconnect`` /
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
from m2gate.conn.connection import CREDITS_TIMEOUT, Connection
from m2gate.conn.uploads import Upload, UploadRejected, UploadStore, open_upload
from m2gate.protocol import replies
from m2gate.protocol.errors import ClientDisconnected
from m2gate.protocol.messages import (
    HTTPRequest,
    Message,
    UploadDone,
    UploadStart,
    WebSocketFrame,
    WebSocketHandshake,
)
from m2gate.runtime.base import Runtime, refusal_status
from m2gate.runtime.options import socket_args, transport_args
from m2gate.transports.zmq_async import AsyncZmqTransport, MultiAsyncZmqTransport

log = logging.getLogger("m2gate.worker")

UPLOAD_CHUNK = 256 * 1024
FRONTEND_CHECK = 0.1  # seconds between checks that Mongrel2 is still the same


class AsyncTransport(Protocol):
    """What the runtime needs from its transport (:class:`AsyncZmqTransport`)."""

    async def recv(self, timeout_ms: int | None = None) -> bytes | None: ...

    def recv_nowait(self) -> bytes | None: ...

    def send(self, messages: Sequence[bytes]) -> None: ...

    def stop_receiving(self) -> None: ...


class AsyncioRuntime(Runtime[AsyncConnection]):
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
        max_pipelined: int = 16,
        websocket_queue: int = 16 * 1024 * 1024,
        credits_timeout: float = CREDITS_TIMEOUT,
        on_started: Callable[[Connection], None] | None = None,
    ) -> None:
        super().__init__(
            AsyncConnection,
            reply_ident,
            uploads,
            on_done,
            max_pipelined=max_pipelined,
            max_message=max_message,
            flush_interval=flush_interval,
            credits_timeout=credits_timeout,
        )
        self.websocket_queue = websocket_queue
        # A response's first part leaves before its end (a supervisor's worker:
        # the master must not answer for it any more).
        self.on_started = on_started
        self.transport = transport
        self.watch_source(transport)
        self.app = app
        self.defaults = defaults
        self.ws_close_timeout = ws_close_timeout
        self.idle_keepalive = idle_keepalive
        self.access_log = access_log
        self.state: dict[str, Any] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop: asyncio.Event | None = None
        self._websockets: dict[tuple[str, int], WebSocketSession] = {}

    # -- lifecycle ---------------------------------------------------------
    def stop(self) -> None:
        """Begin a graceful stop (call from the loop, e.g. a signal handler)."""
        super().stop()
        if self._stop is not None:
            self._stop.set()

    async def run(self, graceful_timeout: float) -> bool:
        """Serve until :meth:`stop`; True if every request finished in time."""
        self._stop = asyncio.Event()
        if self.stopping.is_set():
            self._stop.set()
        receiver = asyncio.create_task(self._receive_loop())
        background = [receiver, asyncio.create_task(self._upload_timer())]
        if self.idle_keepalive > 0:
            background.append(asyncio.create_task(self._keepalive_loop(self.idle_keepalive)))
        if self._frontend_changed is not None:
            background.append(asyncio.create_task(self._frontend_loop()))
        await self._stop.wait()
        await self._close_websockets()  # still receiving: their close replies come this way
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        # Stop accepting, but serve what Mongrel2 already pushed to us.
        self.transport.stop_receiving()
        while (data := self.transport.recv_nowait()) is not None:
            try:
                self.feed(data)
            except Exception:
                log.exception("failed to handle a message (%d bytes)", len(data))
        self.release_held()
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

    async def _upload_timer(self) -> None:
        """Serve a 408 for uploads held past their deadline (see the runtime contract)."""
        if self.uploads.timeout <= 0:
            return
        while True:
            await asyncio.sleep(min(0.25, self.uploads.timeout / 4))
            self.expire_uploads(time.monotonic())

    async def _frontend_loop(self) -> None:
        """Every 100 ms: did Mongrel2 go away? (its connection ids restart at 1)."""
        while True:
            await asyncio.sleep(FRONTEND_CHECK)
            self.check_frontend()

    async def _keepalive_loop(self, interval: float) -> None:
        """Reset Mongrel2's idle timers (limits.min_ping) for connections in use.

        A quiet websocket, a long poll or a stream between events sends
        nothing for a while; Mongrel2 would kill it as idle. In use: the
        adapter is serving it (it set the close hook); a websocket only
        while open.
        """
        while True:
            await asyncio.sleep(interval)
            targets: dict[bytes, list[int]] = {}
            for conn in self._conns.values():
                if conn.on_close is None or conn.closed:
                    continue
                session = self._websockets.get(conn.key)
                if session is not None and session.state != "open":
                    continue
                targets.setdefault(conn.uuid, []).append(conn.conn_id)
            for uuid, conn_ids in targets.items():
                self.transport.send(replies.ctl(uuid, conn_ids, {"keep-alive": True}))

    async def _close_websockets(self) -> None:
        """Send each open websocket 1001 and wait for its close handshake to end.

        The client's close reply comes through Mongrel2 and the PULL, so the
        receiving task keeps running (new requests meanwhile are served; new
        websockets are refused) until each client answered, left, or its
        session's close timeout passed.
        """
        for session in list(self._websockets.values()):
            session.shutdown()
        # Each closing session has its timer; one the app has not accepted yet
        # is left to drain() and the graceful timeout.
        sessions = [s for s in self._websockets.values() if s.state == "closing"]
        if not sessions:
            return
        await asyncio.gather(*(session.wait_closed() for session in sessions))
        log.info(
            "websockets closed for the stop: %d answered the close, %d timed out, %d gone",
            sum(s.close_answered for s in sessions),
            sum(s.close_timed_out for s in sessions),
            sum(not (s.close_answered or s.close_timed_out) for s in sessions),
        )

    async def drain(self, timeout: float) -> bool:
        """Close websockets (1001), let requests finish, cancel what outlives ``timeout``."""
        for session in list(self._websockets.values()):
            session.shutdown()
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
    def _frame(self, msg: WebSocketFrame) -> None:
        session = self._websockets.get(msg.key)
        if session is not None:
            session.feed(msg)
        else:
            log.debug("websocket frame for %s:%s without a session", msg.sender, msg.conn_id)

    def _submit(self, conn: AsyncConnection, msg: Message) -> None:
        task = asyncio.create_task(self._serve_connection(conn, msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, messages: Sequence[bytes]) -> None:
        self.transport.send(messages)

    # -- serving -------------------------------------------------------------
    async def _serve_connection(self, conn: AsyncConnection, msg: Message) -> None:
        next_msg: Message | None = msg
        while next_msg is not None:
            if conn.closed:  # the client left before this started: start nothing for it
                self._not_started(conn, next_msg)
                next_msg = self._done(conn, False)
                continue
            keep = await self._serve(conn, next_msg)
            next_msg = self._done(conn, keep)

    async def _serve(self, conn: AsyncConnection, msg: Message) -> bool:
        out = AsyncOutput(
            conn,
            self.transport,
            self.max_message,
            self.flush_interval,
            self.credits_timeout,
            self.on_started,
        )
        try:
            if isinstance(msg, HTTPRequest):
                cycle = HTTPCycle(msg, conn, out, msg.body, self.access_log)
                await cycle.run(self.app, http_scope(msg, self.defaults, self.state))
            elif isinstance(msg, WebSocketHandshake):
                if self.stopping.is_set():  # it would only get 1001 after the handshake
                    await out.afinish(
                        self._refusal(msg, "server stopping", "503 Service Unavailable"), close=True
                    )
                else:
                    await self._serve_websocket(conn, msg, out)
                return False
            elif isinstance(msg, (UploadStart, UploadDone)):
                await self._serve_upload(conn, msg, out)
            else:
                await out.afinish(self._refusal(msg), close=True)
        except asyncio.CancelledError:
            out.close_now()
            conn.mark_closed()  # also ends upload reads waiting in threads
            raise
        except BaseException:
            # The adapter answers app errors itself (SystemExit included); this
            # is a bug of ours: the loop must go on.
            log.exception("internal error serving %s:%s", msg.sender, msg.conn_id)
            out.close_now()
        finally:
            self.requests += 1
            if self.on_done is not None:
                self.on_done(conn)
        if not out.done:
            await out.afinish(close=True)
        return not out.closing and not conn.closed

    async def _serve_websocket(
        self, conn: AsyncConnection, msg: WebSocketHandshake, out: AsyncOutput
    ) -> None:
        session = WebSocketSession(
            msg,
            conn,
            out,
            self.ws_close_timeout,
            access_log=self.access_log,
            max_queue=self.websocket_queue,
        )
        self._websockets[conn.key] = session
        try:
            await session.serve(self.app, websocket_scope(msg, self.defaults, self.state))
        finally:
            conn.on_close = None
            self._websockets.pop(conn.key, None)

    async def _serve_upload(
        self, conn: AsyncConnection, msg: UploadStart | UploadDone, out: AsyncOutput
    ) -> None:
        """Run the app on a body Mongrel2 spooled to its temp store (complete, or still coming)."""
        try:
            upload = self._start_upload(conn, msg)
        except UploadRejected as exc:
            await self._reject(msg, out, exc)
            return
        except ClientDisconnected:
            await out.afinish(close=True)
            return
        try:
            if upload.length is None:
                # Chunked upload: no length to promise the app until it is done.
                await asyncio.to_thread(upload.wait_done, conn)
                upload.length = os.path.getsize(upload.path)
            cycle = HTTPCycle(msg, conn, out, _upload_chunks(upload, conn), self.access_log)
            await cycle.run(self.app, http_scope(msg, self.defaults, self.state))
            if not upload.done.is_set():
                await out.afinish(close=True)  # the rest of the body is still coming: end here
        except UploadRejected as exc:
            await self._reject(msg, out, exc)
        except ClientDisconnected:
            await out.afinish(close=True)
        finally:
            self._end_upload(conn, upload)

    async def _reject(self, msg: Message, out: AsyncOutput, exc: UploadRejected) -> None:
        payload = self._refusal(msg, str(exc), refusal_status(exc))
        if not out.done:
            await out.afinish(payload, close=True)


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


def runtime_options(cfg: Any) -> dict[str, Any]:
    """The :class:`AsyncioRuntime` arguments the settings give (one process or a worker)."""
    return {
        "defaults": EnvironDefaults(cfg.server_name, cfg.server_port, cfg.trust_x_forwarded_for),
        "reply_ident": cfg.recv_ident.encode("ascii"),
        "max_message": cfg.max_message,
        "flush_interval": cfg.flush_interval,
        "credits_timeout": cfg.credits_timeout,
        "uploads": UploadStore(
            cfg.upload_dir, cfg.mongrel2_chroot, cfg.upload_timeout, cfg.stream_uploads
        ),
        "access_log": logs.access_logger(),
        "idle_keepalive": cfg.idle_keepalive,
        "max_pipelined": cfg.max_pipelined,
        "websocket_queue": cfg.websocket_queue,
    }


async def _main(cfg: Any, app: ASGIApp) -> int:
    loop = asyncio.get_running_loop()
    lifespan = Lifespan(app)
    await lifespan.startup()
    transport: AsyncZmqTransport | MultiAsyncZmqTransport
    if len(cfg.frontends) > 1:
        transport = MultiAsyncZmqTransport(cfg.frontends, *socket_args(cfg))
    else:
        transport = AsyncZmqTransport(*transport_args(cfg))
    worker = AsyncioRuntime(transport, app, **runtime_options(cfg))
    worker.state = lifespan.state

    def on_signal() -> None:
        if worker.stopping.is_set():
            raise SystemExit(1)  # a second signal forces the exit
        worker.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    log.info(
        "serving %s (ASGI): PULL %s, PUB %s, identity %s",
        cfg.app,
        " ".join(cfg.send_spec),
        " ".join(cfg.recv_spec),
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
