"""One ASGI worker process under the master: the asyncio runtime fed by a DEALER.

The master sees no difference from a threaded worker: the same wire
(:mod:`m2gate.supervisor.wire`), the same probes before ``ready``, the same
``d``/``s`` reports and heartbeats, so its dispatch, 502/504 on death,
harakiri, graceful stop, reloads, recycling and stats hold as they are. What
differs is inside: one event loop serves up to ``asgi_connections`` requests
at once (the master's count of this worker's capacity,
:attr:`~m2gate.config.settings.Config.worker_capacity`), and the ASGI
lifespan runs once per worker, before its first probe.

Sockets: the worker's main DEALER (the one that said ``hello``) only
receives here, awaited by the runtime's receiving task; every report and
heartbeat goes on a second DEALER (identity ``WID.0``, which the master
reads as this worker's) that nothing ever polls. A blocking send on a socket
an asyncio reader waits on can consume its edge-triggered wake-up; two
sockets rule that out at no cost per message.

Websockets: the master counts every frame of a connection it routes to the
worker holding it as one more request of that connection (it cannot tell a
frame from a pipelined request without parsing), so the worker reports each
frame done as it takes it, and, while the websocket is open, says again that
the connection's response has started: the master then only closes an open
websocket of a worker that dies, never writes a 502 into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any, Protocol

import zmq
import zmq.asyncio

from m2gate import logs
from m2gate.adapters.asgi import ASGIApp, Lifespan, LifespanError
from m2gate.config.settings import Config
from m2gate.conn.async_connection import AsyncConnection
from m2gate.conn.connection import Connection
from m2gate.protocol import replies
from m2gate.protocol.messages import WebSocketFrame
from m2gate.runtime.asyncio import AsyncioRuntime, runtime_options
from m2gate.supervisor.watch import app_source_files
from m2gate.supervisor.wire import (
    DONE,
    EPOCH,
    EXIT_APP_LOAD,
    FATAL,
    HEARTBEAT,
    HEARTBEAT_INTERVAL,
    LOADED,
    PROBE_INTERVAL,
    PROBE_SPAN,
    READY,
    STARTED,
    STOP,
    Report,
    encode_report,
    encode_reports,
)
from m2gate.transports.zmq_common import PubSink, open_pub

log = logging.getLogger("m2gate.worker")

REPORT_BATCH = 64  # done reports held at most before they are sent


# What this module uses of :mod:`m2gate.supervisor.child`, which calls it
# (so it does not import that module back).
class Spec(Protocol):
    """The fields read of :class:`~m2gate.supervisor.child.WorkerSpec`."""

    cfg: Config
    wid: bytes
    endpoint: str
    master_pid: int
    probe: int


class Greeted(Protocol):
    """:class:`~m2gate.supervisor.child.MasterLink` once it said hello: its DEALER."""

    dealer: zmq.Socket[Any]

    def send(self, *frames: bytes) -> None: ...

    def close(self, linger_s: float) -> None: ...


class Counter(Protocol):
    """:class:`~m2gate.supervisor.child.ExceptionCounter`: a logging filter that counts."""

    count: int

    def filter(self, record: logging.LogRecord) -> bool: ...


class AsyncMasterLink:
    """The asyncio runtime's transport in a worker: requests from the master, replies to Mongrel2.

    Done reports made during one turn of the event loop leave together, in
    one frame, before the loop next waits (``call_soon``), or at
    :data:`REPORT_BATCH`; a ``started`` report flushes them first and goes at
    once, so the master sees every report in the order it was made.
    """

    def __init__(
        self,
        dealer: zmq.Socket[Any],
        ctx: zmq.Context[Any],
        endpoint: str,
        wid: bytes,
        master_pid: int,
        sink: PubSink,
    ) -> None:
        self.wid = wid
        self.master_pid = master_pid
        self._sync = dealer  # non-blocking receives (a burst without a future each)
        self._async: zmq.asyncio.Socket = zmq.asyncio.Socket.from_socket(dealer)
        reports: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
        reports.setsockopt(zmq.IDENTITY, wid + b".0")
        reports.setsockopt(zmq.SNDHWM, 0)
        reports.connect(endpoint)
        self._reports_sock = reports
        self.sink = sink
        self.send = sink.send  # replies to Mongrel2 (the runtime's transport contract)
        self.runtime: AsyncioRuntime | None = None
        self.exceptions: Counter | None = None
        self.rss: Callable[[], int] = lambda: 0
        self.ready = False
        self._reports: list[Report] = []
        self._flush_scheduled = False
        self._probe_uuid = b""
        self._probe_base = 0
        self._closed = False

    def attach(
        self,
        runtime: AsyncioRuntime,
        probe_uuid: bytes,
        base: int,
        exceptions: Counter,
        rss: Callable[[], int],
    ) -> None:
        self.runtime = runtime
        self._probe_uuid = probe_uuid
        self._probe_base = base
        self.exceptions = exceptions
        self.rss = rss

    def report(self, *frames: bytes) -> None:
        """A frame for the master (heartbeat, loaded, fatal), on the reports socket."""
        if not self._closed:
            self._reports_sock.send_multipart(frames)

    # -- reports -----------------------------------------------------------
    def done(self, conn: AsyncConnection) -> None:
        """One request accepted is served or dropped (batched until this loop turn ends)."""
        self.done_report((conn.sender, conn.conn_id, conn.epoch))

    def done_report(self, report: Report) -> None:
        reports = self._reports
        reports.append(report)
        if len(reports) >= REPORT_BATCH:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def started(self, conn: Connection) -> None:
        """A response's first part leaves before its end: the master must not answer for it."""
        self.started_report((conn.sender, conn.conn_id, conn.epoch))

    def started_report(self, report: Report) -> None:
        self.flush()  # the done reports made before it must arrive before it
        self.report(STARTED, encode_report(*report))

    def flush(self) -> None:
        self._flush_scheduled = False
        reports = self._reports
        if not reports:
            return
        self._reports = []
        payload = encode_report(*reports[0]) if len(reports) == 1 else encode_reports(reports)
        self.report(DONE, payload)

    # -- the runtime's transport -------------------------------------------
    async def recv(self, timeout_ms: int | None = None) -> bytes | None:
        """The next Mongrel2 message the master hands us (control frames acted on here)."""
        while True:
            data = self.recv_nowait()
            if data is not None:
                return data
            if timeout_ms is not None and not await self._async.poll(timeout_ms):
                return None
            frames = await self._async.recv_multipart()
            if len(frames) == 1:
                return frames[0]
            self._control(frames)

    def recv_nowait(self) -> bytes | None:
        """A message already queued here, or None; never waits."""
        while True:
            try:
                frames = self._sync.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return None
            if len(frames) == 1:
                return frames[0]
            self._control(frames)

    def stop_receiving(self) -> None:
        """Nothing to do: the master stopped sending before it said ``stop``."""

    def _control(self, frames: list[bytes]) -> None:
        kind = frames[1]
        runtime = self.runtime
        if kind == READY:
            self.ready = True
        elif kind == STOP:
            if runtime is not None:
                runtime.stop()
        elif kind == EPOCH:
            # Mongrel2 went away: forget its old connections before any new request.
            if runtime is not None and len(frames) > 2 and frames[2].isdigit():
                runtime.reset_frontend(int(frames[2]))
        else:
            log.warning("unknown frame from the master: %r", kind[:20])

    # -- housekeeping --------------------------------------------------------
    async def housekeeping(self) -> None:
        """Probes until ready, then heartbeats and the master-alive check, every second."""
        attempt = 0
        next_beat = 0.0
        while True:
            now = time.monotonic()
            if not self.ready:
                probe = self._probe_base + attempt % PROBE_SPAN
                attempt += 1
                self.sink.send(replies.close(self._probe_uuid, [probe]))
            if now >= next_beat:
                next_beat = now + HEARTBEAT_INTERVAL
                if os.getppid() != self.master_pid:
                    log.warning("master %d is gone: stopping", self.master_pid)
                    if self.runtime is not None:
                        self.runtime.stop()
                    return
                self.report(HEARTBEAT, json.dumps(self.heartbeat()).encode())
            wait = next_beat - time.monotonic()
            await asyncio.sleep(min(PROBE_INTERVAL, wait) if not self.ready else max(0.0, wait))

    def heartbeat(self) -> dict[str, Any]:
        runtime = self.runtime
        return {
            "rss": self.rss(),
            "requests": runtime.requests if runtime is not None else 0,
            "exceptions": self.exceptions.count if self.exceptions is not None else 0,
            "disconnects": runtime.disconnects if runtime is not None else 0,
        }

    def close(self, linger_s: float) -> None:
        """The last reports go out (``linger_s``); the main DEALER closes too."""
        with contextlib.suppress(zmq.ZMQError):
            self.flush()
        self._closed = True
        self._reports_sock.close(linger=int(linger_s * 1000))
        self._async.close(linger=int(linger_s * 1000))


class WorkerRuntime(AsyncioRuntime):
    """The asyncio runtime with the master's count of websocket frames kept."""

    link: AsyncMasterLink

    def _frame(self, msg: WebSocketFrame) -> None:
        super()._frame(msg)
        key = msg.key
        session = self._websockets.get(key)
        conn = self._conns.get(key)
        report = (msg.sender, msg.conn_id, conn.epoch if conn is not None else self._table.epoch)
        self.link.done_report(report)
        if session is not None and session.state != "connecting":
            # Its 101 went out: the master's next entry for it must say so too.
            self.link.started_report(report)


def serve_asgi_worker(
    spec: Spec,
    ctx: zmq.Context[Any],
    link: Greeted,
    app: ASGIApp,
    counter: Counter,
    rss: Callable[[], int],
) -> int:
    """Run the ASGI worker after its app loaded; the exit code for ``os._exit``.

    ``link``: the worker's hello was sent on it; ``counter`` counts app
    exceptions for the heartbeat, ``rss`` measures the process.
    """
    code = asyncio.run(_serve(spec, ctx, link, app, counter, rss))
    if code == 0:
        ctx.term()  # waits for the replies and reports still queued (linger)
    else:
        ctx.destroy(linger=1000)
    return code


async def _serve(
    spec: Spec,
    ctx: zmq.Context[Any],
    link: Greeted,
    app: ASGIApp,
    counter: Counter,
    rss: Callable[[], int],
) -> int:
    cfg = spec.cfg
    loop = asyncio.get_running_loop()
    stop_requested: list[bool] = []
    runtime: WorkerRuntime | None = None

    def on_term() -> None:
        if runtime is None:
            stop_requested.append(True)  # the lifespan is starting: stop right after
        else:
            runtime.stop()

    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGUSR1, logs.reopen_logs)
    logging.getLogger("m2gate.asgi").addFilter(counter)
    lifespan = Lifespan(app)
    try:
        await lifespan.startup()
    except LifespanError as exc:
        link.send(FATAL, str(exc).encode("utf-8", "replace"))
        link.close(linger_s=2.0)
        return EXIT_APP_LOAD
    identity = b"%s-%s" % (cfg.send_ident.encode("ascii"), spec.wid)
    sink = PubSink(open_pub(ctx, cfg.recv_spec[0], identity, hwm=cfg.send_hwm), cfg.send_timeout)
    alink = AsyncMasterLink(link.dealer, ctx, spec.endpoint, spec.wid, spec.master_pid, sink)
    runtime = WorkerRuntime(
        alink, app, on_done=alink.done, on_started=alink.started, **runtime_options(cfg)
    )
    runtime.link = alink
    runtime.state = lifespan.state
    probe_uuid = replies.reply_uuid(cfg.recv_ident, cfg.send_ident)
    alink.attach(runtime, probe_uuid, spec.probe, counter, rss)
    if stop_requested:
        runtime.stop()
    if cfg.reload_on_change:
        alink.report(LOADED, json.dumps(app_source_files()).encode())
    house = asyncio.create_task(alink.housekeeping())
    try:
        clean = await runtime.run(cfg.graceful_timeout)
    finally:
        house.cancel()
        await asyncio.gather(house, return_exceptions=True)
    await lifespan.shutdown(cfg.graceful_timeout)
    sink.close(linger_s=min(cfg.graceful_timeout, 5.0))
    alink.close(linger_s=1.0)
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        loop.remove_signal_handler(signum)
    log.debug("worker %s exits after %d request(s)", spec.wid.decode(), runtime.requests)
    return 0 if clean else 1
