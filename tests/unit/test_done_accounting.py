"""The master counts a request in flight until its worker's done report: both sides must agree.

The master's :class:`~m2gate.supervisor.handoff.Dispatcher` decides which
messages are requests (counted in flight, a thread taken) and which are
notices for a request already counted (upload-done, disconnect, credits); a
worker's runtime decides the same from its own state and calls ``on_done``
once per request it accepted. Where they disagree, a thread looks busy
forever (no done ever comes), and once every thread does the master queues
everything: the long ``-p 2`` fuzz run found that after ~60k messages.
These tests run a real :class:`~m2gate.runtime.threaded.ThreadedRuntime`
behind a real Dispatcher, with no sockets in between.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from m2gate.adapters.common import EnvironDefaults
from m2gate.adapters.wsgi import WSGIHandler
from m2gate.conn.connection import Connection
from m2gate.conn.uploads import UploadStore
from m2gate.protocol.errors import ProtocolError
from m2gate.protocol.messages import parse_message
from m2gate.protocol.peek import peek
from m2gate.runtime.threaded import ThreadedRuntime
from m2gate.supervisor.handoff import Dispatcher, Forward
from m2gate.supervisor.state import Worker

from .helpers import control, message, request_headers
from .test_runtime_base import NoSource, Sink

START = "x-mongrel2-upload-start"
DONE = "x-mongrel2-upload-done"
WID = b"w0"


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


class Rig:
    """A master's dispatcher and one worker of ``threads`` threads, wired in-process."""

    def __init__(self, tmp_path: Path, threads: int = 2) -> None:
        self.disp = Dispatcher(100)
        self.disp.add_worker(Worker(WID, 1000, 1, threads))
        self.disp.mark_ready(WID)
        self.reports: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        self.sink = Sink()
        self.done = 0
        self.worker = ThreadedRuntime(
            NoSource(),
            self.sink,
            WSGIHandler(app, EnvironDefaults(), True, False),
            threads=threads,
            flush_interval=0,
            uploads=UploadStore(str(tmp_path / "store")),
            on_done=self.reports.put,
        )
        self.worker._start()

    def deliver(self, raw: bytes) -> None:
        """What the master's router does with one message from Mongrel2."""
        try:
            p = peek(raw)
        except ProtocolError:
            return
        decision = self.disp.assign(p, raw, time.monotonic())
        if isinstance(decision, Forward):
            self.worker.feed(raw)
        self.pump()

    def pump(self) -> None:
        """Done reports back to the dispatcher, queued requests on to the worker."""
        while True:
            try:
                conn = self.reports.get_nowait()
            except queue.Empty:
                break
            self.done += 1
            self.disp.on_done(WID, conn.key, time.monotonic(), conn.epoch)
        for _, item in self.disp.dispatch_queued(time.monotonic()):
            self.worker.feed(item.raw)

    def settle(self) -> dict[tuple[str, int], int]:
        """Wait for the worker; what the master still counts in flight."""
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            time.sleep(0.05)
            self.pump()
            if not self.disp.workers[WID].inflight and not self.disp.queue:
                break
        return {k: len(q) for k, q in self.disp.workers[WID].inflight.items()}


def upload(path: Path, conn_id: int = 7, done: bool = False) -> bytes:
    headers = request_headers("POST", "/up", **{START: str(path), "content-length": "5"})
    if done:
        headers[DONE] = str(path)
    return message(headers, path=b"/up", conn_id=conn_id)


def test_an_upload_done_after_the_clients_disconnect_ends_in_one_done(tmp_path: Path) -> None:
    # The upload is answered 400 before it completes (its file is not in the
    # store), the client leaves, then an upload-done for its connection comes:
    # the master no longer knows who answered it and counts it as a request,
    # so the worker must answer it (and report it done), not ignore it as late.
    rig = Rig(tmp_path)
    outside = tmp_path / "upload.Ab12Cd"
    outside.write_bytes(b"hello")
    rig.deliver(upload(outside))
    assert rig.settle() == {}
    assert rig.sink.data(7).startswith(b"HTTP/1.1 400")
    rig.deliver(control("disconnect"))
    rig.deliver(upload(outside, done=True))
    assert rig.settle() == {}, "a request counted in flight got no done report"
    assert rig.done == 2 and rig.sink.data(7).count(b"HTTP/1.1 400") == 2


def test_a_late_upload_done_still_goes_quietly(tmp_path: Path) -> None:
    # Without a disconnect in between it is late: the worker that answered the
    # upload ignores it, and the master did not count it.
    rig = Rig(tmp_path)
    outside = tmp_path / "upload.Ab12Cd"
    outside.write_bytes(b"hello")
    rig.deliver(upload(outside))
    assert rig.settle() == {}
    rig.deliver(upload(outside, done=True))
    assert rig.settle() == {}
    assert rig.done == 1 and rig.sink.data(7).count(b"HTTP/1.1 400") == 1


def test_threads_stay_free_over_many_early_answered_uploads(tmp_path: Path) -> None:
    rig = Rig(tmp_path, threads=1)
    outside = tmp_path / "upload.Ab12Cd"
    outside.write_bytes(b"hello")
    for conn_id in range(1, 6):
        rig.deliver(upload(outside, conn_id))
        rig.settle()
        rig.deliver(control("disconnect", conn_id=conn_id))
        rig.deliver(upload(outside, conn_id, done=True))
        rig.settle()
    rig.deliver(message(request_headers("GET", "/"), conn_id=99))
    assert rig.settle() == {}
    assert b"hello" in rig.sink.data(99)


def test_a_disconnect_while_in_flight_forgets_the_connection_in_the_master() -> None:
    # Its worker forgets the connection's answered uploads at the disconnect,
    # so the master must not send it a later upload-done uncounted, as late.
    disp = Dispatcher(100)
    disp.add_worker(Worker(WID, 1000, 1, 2))
    disp.mark_ready(WID)
    start = upload(Path("/tmp/upload.Ab12Cd"))
    assert disp.assign(peek(start), start, 0.0) == Forward(WID)
    bye = control("disconnect")
    assert disp.assign(peek(bye), bye, 0.0) == Forward(WID)
    key = parse_message(start).key
    assert disp.on_done(WID, key, 1.0)
    late = upload(Path("/tmp/upload.Ab12Cd"), done=True)
    assert disp.assign(peek(late), late, 2.0) == Forward(WID)
    assert len(disp.workers[WID].inflight[key]) == 1  # counted: the worker reports it done


def test_a_client_that_acks_no_credits_frees_its_thread(tmp_path: Path) -> None:
    # Granted a 12-byte window and never a credit more: the writer gives the
    # connection up after credits_timeout, and the thread serves the next one.
    reports: queue.SimpleQueue[Connection] = queue.SimpleQueue()
    sink = Sink()
    worker = ThreadedRuntime(
        NoSource(),
        sink,
        WSGIHandler(app, EnvironDefaults(), True, False),
        threads=1,
        flush_interval=0,
        on_done=reports.put,
        credits_timeout=0.3,
    )
    worker._start()
    started = time.monotonic()
    worker.feed(message(request_headers("GET", "/", DOWNLOAD_CREDITS="12"), conn_id=5))
    worker.feed(message(request_headers("GET", "/"), conn_id=6))
    assert reports.get(timeout=5).conn_id == 5
    assert 0.25 < time.monotonic() - started < 3.0
    assert reports.get(timeout=5).conn_id == 6 and b"hello" in sink.data(6)
    assert len(sink.data(5)) == 12  # what the window allowed, then the close
    assert any(m.endswith(b" 1:5, ") for m in sink.sent)  # Mongrel2 is told to close it
    assert worker.drain(2.0)


def test_the_asyncio_writer_gives_up_waiting_for_credits_too() -> None:
    import asyncio

    from m2gate.conn.async_connection import AsyncConnection, AsyncOutput

    conn = AsyncConnection("S", 5, b"S")
    conn.grant(12)
    sink = Sink()
    out = AsyncOutput(conn, sink, 1 << 20, 0, credits_timeout=0.2)
    started = time.monotonic()
    asyncio.run(out.afinish(b"x" * 100, close=True))
    assert 0.15 < time.monotonic() - started < 2.0
    assert conn.closed and out.done and len(sink.data(5)) == 12


def test_a_front_end_reset_ends_the_requests_held_for_their_uploads(tmp_path: Path) -> None:
    # Held until upload-done; Mongrel2 goes away: neither upload-done nor a
    # disconnect can come for the old connection now, so it ends at once
    # (one on_done, its temp file removed), not at the upload timeout.
    store = tmp_path / "store"
    store.mkdir()
    spooled = store / "upload.Ab12Cd"
    spooled.write_bytes(b"hello")
    reports: queue.SimpleQueue[Connection] = queue.SimpleQueue()
    worker = ThreadedRuntime(
        NoSource(),
        Sink(),
        WSGIHandler(app, EnvironDefaults(), True, False),
        flush_interval=0,
        uploads=UploadStore(str(store), timeout=0),
        on_done=reports.put,
    )
    worker._start()
    worker.feed(upload(spooled))
    time.sleep(0.1)
    assert worker._held and reports.empty()
    worker.reset_frontend()
    assert reports.get(timeout=5).conn_id == 7 and not worker._held
    time.sleep(0.1)
    assert reports.empty() and not spooled.exists()
