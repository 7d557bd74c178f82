"""The runtime contract (runtime/base.py), held by the threaded and the asyncio runtime alike."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import zmq

from m2gate.adapters.common import EnvironDefaults
from m2gate.adapters.wsgi import WSGIHandler
from m2gate.conn.async_connection import AsyncOutput
from m2gate.conn.connection import Output, OutputBuffer
from m2gate.conn.uploads import UploadStore
from m2gate.protocol.intake import parse_or_drop
from m2gate.runtime.asyncio import AsyncioRuntime
from m2gate.runtime.base import Runtime
from m2gate.runtime.threaded import ThreadedRuntime
from m2gate.transports.zmq_common import PubSink, open_pub

from .helpers import control, message, request_headers
from .test_asgi_worker import FakeTransport


def get(path: str, conn_id: int = 7) -> bytes:
    return message(request_headers("GET", path), path=path.encode(), conn_id=conn_id)


def upload_pair(tmp_path: Path, conn_id: int = 7) -> tuple[bytes, bytes, Path]:
    spooled = tmp_path / ("upload.%d" % conn_id)
    spooled.write_bytes(b"spooled body")
    start = request_headers(
        "POST",
        "/up",
        **{"x-mongrel2-upload-start": str(spooled), "transfer-encoding": "chunked"},
    )
    done = dict(start, **{"x-mongrel2-upload-done": str(spooled)})
    return (
        message(start, path=b"/up", conn_id=conn_id),
        message(done, path=b"/up", conn_id=conn_id),
        spooled,
    )


# -- one app, both interfaces --------------------------------------------------
def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/slow":
        time.sleep(0.1)
    body = environ["wsgi.input"].read() or environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["path"] == "/slow":
        await asyncio.sleep(0.1)
    body = b""
    while True:
        event = await receive()
        body += event.get("body", b"")
        if not event.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200})
    await send({"type": "http.response.body", "body": body or scope["path"].encode()})


class Sink:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.lock = threading.Lock()

    def send(self, messages: Sequence[bytes]) -> None:
        with self.lock:
            self.sent.extend(messages)

    def data(self, conn_id: int = 7) -> bytes:
        prefix = b" %d:%d, " % (len(str(conn_id)), conn_id)
        return b"".join(m.split(prefix, 1)[1] for m in self.sent if prefix in m)


class NoSource:
    def recv(self, timeout_ms: int) -> bytes | None:
        return None

    def stop_receiving(self) -> None:
        pass


Served = tuple[Callable[[int], bytes], list[object]]


def serve_threaded(incoming: Sequence[bytes], uploads: str = "") -> Served:
    sink = Sink()
    done: list[object] = []
    handler = WSGIHandler(wsgi_app, EnvironDefaults(), multithread=True, multiprocess=False)
    worker = ThreadedRuntime(
        NoSource(),
        sink,
        handler,
        threads=2,
        flush_interval=0,
        uploads=UploadStore(uploads),
        on_done=done.append,
    )
    worker._start()
    for data in incoming:
        worker.feed(data)
    time.sleep(0.4)
    assert worker.drain(5.0)
    return sink.data, done


def serve_asyncio(incoming: Sequence[bytes], uploads: str = "") -> Served:
    done: list[object] = []

    async def go() -> FakeTransport:
        transport = FakeTransport(incoming)
        worker = AsyncioRuntime(
            transport,
            asgi_app,
            EnvironDefaults(),
            flush_interval=0,
            uploads=UploadStore(uploads),
            on_done=done.append,
        )
        task = asyncio.create_task(worker.run(5.0))
        await asyncio.sleep(0.4)
        worker.stop()
        assert await task
        return transport

    return asyncio.run(go()).data, done


RUNTIMES = pytest.mark.parametrize(
    "serve", [serve_threaded, serve_asyncio], ids=["threads", "asyncio"]
)


def test_every_runtime_is_a_runtime_with_one_stopping_event() -> None:
    sink = Sink()
    handler = WSGIHandler(wsgi_app, EnvironDefaults(), multithread=False, multiprocess=False)
    threaded = ThreadedRuntime(NoSource(), sink, handler, threads=0)
    aio = AsyncioRuntime(FakeTransport(), asgi_app, EnvironDefaults())
    for worker in (threaded, aio):
        assert isinstance(worker, Runtime)
        assert isinstance(worker.stopping, threading.Event)
        assert not worker.stopping.is_set()
        worker.stop()
        assert worker.stopping.is_set()


def test_the_asyncio_writer_cannot_block() -> None:
    """No threaded write()/finish() (a Condition wait) reachable inside the loop."""
    assert issubclass(AsyncOutput, OutputBuffer) and issubclass(Output, OutputBuffer)
    assert not issubclass(AsyncOutput, Output)
    for name in ("write", "finish", "timer_flush", "_wait_send_locked"):
        assert not hasattr(AsyncOutput, name)


@RUNTIMES
def test_upload_done_before_its_queued_start_is_served(serve: Any, tmp_path: Path) -> None:
    """The early upload-done race: the start waits behind a slow request on its connection."""
    start, done, spooled = upload_pair(tmp_path)
    data, on_done = serve([get("/slow"), start, done], str(tmp_path))
    answers = data(7)
    assert answers.count(b"HTTP/1.1 200 OK") == 2
    assert answers.index(b"/slow") < answers.index(b"spooled body")
    assert len(on_done) == 2
    assert not spooled.exists()


@RUNTIMES
def test_forged_upload_done_is_refused(serve: Any, tmp_path: Path) -> None:
    _, done, spooled = upload_pair(tmp_path)
    data, on_done = serve([done], str(tmp_path))
    assert data(7).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert data(7).endswith(b"Bad Request\n")
    assert len(on_done) == 1
    assert spooled.exists()  # not ours to delete


@RUNTIMES
def test_upload_outside_the_store_is_refused(serve: Any, tmp_path: Path) -> None:
    start, _, _ = upload_pair(tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    data, _ = serve([start, get("/after", conn_id=8)], str(store))
    assert data(7).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert data(8).endswith(b"/after")


@RUNTIMES
def test_streamed_upload_is_413(serve: Any) -> None:
    stream = message(request_headers("POST", "/s", UPLOAD_STREAM="0"), b"x", path=b"/s")
    data, on_done = serve([stream])
    assert data(7).startswith(b"HTTP/1.1 413 Content Too Large\r\n")
    assert data(7).endswith(b"Content Too Large\n")
    assert len(on_done) == 1


@RUNTIMES
def test_disconnect_drops_pipelined_requests_with_one_on_done_each(serve: Any) -> None:
    incoming = [get("/slow"), get("/a"), get("/b"), control("disconnect")]
    data, on_done = serve(incoming)
    assert b"/a" not in data(7) and b"/b" not in data(7)
    assert len(on_done) == 3


@RUNTIMES
def test_malformed_is_dropped_and_serving_goes_on(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    data, on_done = serve([b"garbage", get("/ok")])
    assert data(7).endswith(b"/ok")
    assert "dropped malformed message (7 bytes)" in caplog.text
    assert len(on_done) == 1


# -- the shared rules below the runtimes -----------------------------------------
def test_parse_or_drop_logs_once_and_returns_none(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("m2gate.test")
    assert parse_or_drop(b"garbage", log) is None
    assert caplog.text.count("dropped malformed message (7 bytes)") == 1
    msg = parse_or_drop(get("/ok"), log)
    assert msg is not None and msg.path == "/ok"


def test_pub_sink_sends_whole_messages_in_order() -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    sink = PubSink(open_pub(ctx, "tcp://127.0.0.1:%d" % port, b"ident-1"))
    try:
        assert sink.pub.getsockopt(zmq.SNDHWM) == 0
        for _ in range(100):  # until the subscription has reached the PUB
            sink.send([b"hello"])
            if sub.poll(50):
                break
        while sub.poll(50):
            sub.recv()
        big = b"x" * 70000  # above COPY_BELOW: sent without a copy
        sink.send([b"a", big, b"c"])
        got = []
        while len(got) < 3 and sub.poll(2000):
            got.append(sub.recv())
        assert got == [b"a", big, b"c"]
    finally:
        sink.close(0.1)
        sub.close(linger=0)
        ctx.term()
