"""The asyncio runtime fed raw Mongrel2 messages through a fake transport."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from m2gate.adapters.common import EnvironDefaults
from m2gate.conn.uploads import UploadStore
from m2gate.runtime.asyncio import AsyncioRuntime

from .helpers import control, message, request_headers

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


class FakeTransport:
    def __init__(self, incoming: Sequence[bytes] = ()) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        for data in incoming:
            self.queue.put_nowait(data)
        self.sent: list[bytes] = []
        self.stopped = False

    async def recv(self, timeout_ms: int | None = None) -> bytes | None:
        return await self.queue.get()

    def recv_nowait(self) -> bytes | None:
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def send(self, messages: Sequence[bytes]) -> None:
        self.sent.extend(messages)

    def stop_receiving(self) -> None:
        self.stopped = True

    def data(self, conn_id: int = 7) -> bytes:
        prefix = b" %d:%d, " % (len(str(conn_id)), conn_id)
        return b"".join(m.split(prefix, 1)[1] for m in self.sent if prefix in m)


def get(path: str, conn_id: int = 7, **headers: Any) -> bytes:
    return message(request_headers("GET", path, **headers), path=path.encode(), conn_id=conn_id)


async def app(scope: Any, receive: Any, send: Any) -> None:
    """Answers ``/slow`` after a while, ``/wait`` when the client leaves, others at once."""
    if scope["path"] == "/slow":
        await asyncio.sleep(0.05)
    if scope["path"] == "/wait":
        await receive()
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"w", "more_body": True})
        event = await receive()
        app.seen.append(event["type"])  # type: ignore[attr-defined]
        return
    body = scope["path"].encode()
    await send({"type": "http.response.start", "status": 200})
    await send({"type": "http.response.body", "body": body})


app.seen = []  # type: ignore[attr-defined]


def serve(incoming: Sequence[bytes], settle: float = 0.3) -> FakeTransport:
    async def go() -> FakeTransport:
        transport = FakeTransport(incoming)
        worker = AsyncioRuntime(transport, app, EnvironDefaults(), flush_interval=0)
        task = asyncio.create_task(worker.run(5.0))
        await asyncio.sleep(settle)
        worker.stop()
        assert await task
        assert transport.stopped
        return transport

    return asyncio.run(go())


def test_pipelined_requests_answered_in_order() -> None:
    transport = serve([get("/slow"), get("/fast")])
    data = transport.data()
    assert data.index(b"/slow") < data.index(b"/fast")


def test_connections_are_served_concurrently() -> None:
    transport = serve([get("/slow", conn_id=1), get("/fast", conn_id=2)])
    first = [m for m in transport.sent if m.split(b" ", 2)[1] in (b"1:1,", b"1:2,")]
    assert first[0].split(b" ", 2)[1] == b"1:2,"  # the fast one did not wait


def test_disconnect_reaches_the_app() -> None:
    app.seen.clear()  # type: ignore[attr-defined]

    async def go() -> FakeTransport:
        transport = FakeTransport([get("/wait")])
        worker = AsyncioRuntime(transport, app, EnvironDefaults(), flush_interval=0)
        task = asyncio.create_task(worker.run(5.0))
        await asyncio.sleep(0.05)
        transport.queue.put_nowait(control("disconnect"))
        await asyncio.sleep(0.05)
        worker.stop()
        await task
        assert worker.disconnects == 1
        return transport

    transport = asyncio.run(go())
    assert app.seen == ["http.disconnect"]  # type: ignore[attr-defined]
    assert not transport.sent[-1].endswith(b", ")  # no close reply to a gone client


def test_malformed_and_stray_messages_are_dropped() -> None:
    stray_frame = message(
        request_headers("WEBSOCKET", "/ws", FLAGS="0x81"), b"hi", path=b"/ws", conn_id=9
    )
    transport = serve([b"garbage", stray_frame, control("disconnect", conn_id=3), get("/ok")])
    assert transport.data().endswith(b"/ok")
    assert transport.data(9) == b""


def test_unsupported_upload_is_answered_not_hung() -> None:
    upload = message(
        request_headers("POST", "/up", **{"x-mongrel2-upload-start": "/tmp/x"}),
        path=b"/up",
    )
    transport = serve([upload])
    assert transport.data().startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert transport.sent[-1].endswith(b", ")


def test_graceful_stop_waits_for_requests_in_flight() -> None:
    transport = serve([get("/slow")], settle=0.0)
    assert transport.data().endswith(b"/slow")


def test_every_real_mongrel2_message_then_a_request() -> None:
    """The whole captured corpus, in order, and stray bytes: the worker keeps serving."""
    corpus = sorted(CORPUS.glob("*.bin"))
    assert corpus
    incoming = [p.read_bytes() for p in corpus]
    incoming += [b"x 1 / 2:{},0:,", b"", b"\xff" * 100, get("/still-here", conn_id=999)]

    async def go() -> FakeTransport:
        transport = FakeTransport(incoming)
        worker = AsyncioRuntime(transport, app, EnvironDefaults(), flush_interval=0)
        task = asyncio.create_task(worker.run(2.0))
        await asyncio.sleep(0.5)
        worker.stop()
        await task
        return transport

    transport = asyncio.run(go())
    assert transport.data(999).endswith(b"/still-here")


@given(st.lists(st.sampled_from(range(6)), max_size=12), st.binary(max_size=40))
@settings(max_examples=60, deadline=None)
def test_random_websocket_traffic_never_breaks_the_worker(ops: list[int], junk: bytes) -> None:
    """Handshakes, frames with any flags, disconnects, in any order."""

    async def echo_ws(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await app(scope, receive, send)
            return
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            await send({"type": "websocket.send", "bytes": b"ok"})

    def ws(method: str, flags: str = "0x81") -> bytes:
        headers = request_headers(method, "/ws", FLAGS=flags)
        return message(headers, junk if method == "WEBSOCKET" else b"acc=", path=b"/ws")

    choices = [
        ws("WEBSOCKET_HANDSHAKE"),
        ws("WEBSOCKET", "0x81"),
        ws("WEBSOCKET", "0x%x" % (junk[0] if junk else 0)),
        ws("WEBSOCKET", "0x88"),
        ws("WEBSOCKET", "0x89"),
        control("disconnect"),
    ]
    incoming = [choices[i] for i in ops] + [get("/after", conn_id=4242)]

    async def go() -> FakeTransport:
        transport = FakeTransport(incoming)
        worker = AsyncioRuntime(
            transport, echo_ws, EnvironDefaults(), flush_interval=0, ws_close_timeout=0.01
        )
        task = asyncio.create_task(worker.run(1.0))
        await asyncio.sleep(0.05)
        worker.stop()
        await task
        return transport

    transport = asyncio.run(go())
    assert transport.data(4242).endswith(b"/after")


def test_upload_done_right_behind_its_start(tmp_path: Path) -> None:
    """Mongrel2 sends a small chunked upload's start and done back to back."""
    spooled = tmp_path / "upload.AbC123"
    spooled.write_bytes(b"spooled body")
    path = str(spooled)
    start = request_headers(
        "POST", "/up", **{"x-mongrel2-upload-start": path, "transfer-encoding": "chunked"}
    )
    done = dict(start, **{"x-mongrel2-upload-done": path})
    got: list[bytes] = []

    async def reader(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        got.append(body)
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"ok"})

    async def go() -> FakeTransport:
        transport = FakeTransport([message(start, path=b"/up"), message(done, path=b"/up")])
        worker = AsyncioRuntime(
            transport,
            reader,
            EnvironDefaults(),
            flush_interval=0,
            uploads=UploadStore(str(tmp_path)),
        )
        task = asyncio.create_task(worker.run(5.0))
        await asyncio.sleep(0.3)
        worker.stop()
        assert await task
        return transport

    transport = asyncio.run(go())
    assert got == [b"spooled body"]
    assert transport.data().endswith(b"\r\n\r\nok")
    assert not spooled.exists()


def test_graceful_timeout_frees_a_streamed_upload_that_never_completes(tmp_path: Path) -> None:
    """stream_uploads, no upload-done ever comes: the stop cancels the request, the thread ends."""
    spooled = tmp_path / "upload.XyZ789"
    spooled.write_bytes(b"partial")
    start = request_headers(
        "POST",
        "/up",
        **{"x-mongrel2-upload-start": str(spooled), "transfer-encoding": "chunked"},
    )

    async def reader(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass

    async def go() -> bool:
        transport = FakeTransport([message(start, path=b"/up")])
        worker = AsyncioRuntime(
            transport, reader, EnvironDefaults(), uploads=UploadStore(str(tmp_path), stream=True)
        )
        task = asyncio.create_task(worker.run(0.2))
        await asyncio.sleep(0.1)
        worker.stop()
        return await task

    assert asyncio.run(go()) is False  # forced, but it returned
    assert not spooled.exists()


class AnsweringClient(FakeTransport):
    """A websocket client behind Mongrel2 that answers our close frame (or never does)."""

    def __init__(self, incoming: Sequence[bytes], answers: bool, meanwhile: bytes = b"") -> None:
        super().__init__(incoming)
        self.answers = answers
        self.meanwhile = meanwhile  # a message that arrives before the reply
        self.answered_while_receiving: bool | None = None

    def send(self, messages: Sequence[bytes]) -> None:
        super().send(messages)
        if self.answers and any(b", \x88" in m for m in messages):  # our close frame
            if self.meanwhile:
                self.queue.put_nowait(self.meanwhile)
            headers = request_headers("WEBSOCKET", "/ws", FLAGS="0x88")
            self.queue.put_nowait(message(headers, b"\x03\xe9", path=b"/ws"))
            self.answered_while_receiving = not self.stopped


async def ws_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        await app(scope, receive, send)
        return
    await receive()
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


def handshake(conn_id: int = 7) -> bytes:
    headers = request_headers("WEBSOCKET_HANDSHAKE", "/ws")
    return message(headers, b"acc=", path=b"/ws", conn_id=conn_id)


def stop_with_a_websocket_open(
    answers: bool, close_timeout: float, meanwhile: bytes = b""
) -> AnsweringClient:
    async def go() -> AnsweringClient:
        transport = AnsweringClient([handshake()], answers, meanwhile)
        worker = AsyncioRuntime(
            transport, ws_app, EnvironDefaults(), flush_interval=0, ws_close_timeout=close_timeout
        )
        task = asyncio.create_task(worker.run(30.0))
        while not any(b"101 Switching Protocols" in m for m in transport.sent):
            await asyncio.sleep(0.01)
        worker.stop()
        assert await task
        return transport

    return asyncio.run(go())


def test_stop_reads_the_clients_close_reply(caplog: Any) -> None:
    """The stop ends with the reply, not the timeout (a long one here, so it cannot pass)."""
    caplog.set_level("INFO", logger="m2gate")
    transport = stop_with_a_websocket_open(answers=True, close_timeout=60.0)
    assert transport.answered_while_receiving is True
    assert transport.stopped  # the PULL is let go only after the handshake
    texts = [r.getMessage() for r in caplog.records]
    assert "websockets closed for the stop: 1 answered the close, 0 timed out, 0 gone" in texts
    assert not any("no close reply" in t for t in texts)


def test_stop_still_times_out_a_client_that_never_answers(caplog: Any) -> None:
    caplog.set_level("INFO", logger="m2gate")
    transport = stop_with_a_websocket_open(answers=False, close_timeout=0.05)
    assert transport.sent[-1].endswith(b", ")  # the connection was closed all the same
    texts = [r.getMessage() for r in caplog.records]
    assert "websockets closed for the stop: 0 answered the close, 1 timed out, 0 gone" in texts
    assert any("no close reply in 0.1s, connection closed" in t for t in texts)


def test_a_new_websocket_during_the_stop_is_refused() -> None:
    transport = stop_with_a_websocket_open(True, 60.0, meanwhile=handshake(conn_id=8))
    assert transport.data(8).startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert transport.answered_while_receiving is True
