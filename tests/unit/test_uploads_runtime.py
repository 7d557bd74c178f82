"""Uploads and app escapes in the runtimes: what is served when, and which file goes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from m2gate.adapters.common import EnvironDefaults
from m2gate.adapters.wsgi import WSGIHandler
from m2gate.conn.uploads import UploadStore
from m2gate.runtime.asyncio import AsyncioRuntime
from m2gate.runtime.threaded import ThreadedRuntime

from .helpers import message, request_headers
from .test_asgi_worker import FakeTransport
from .test_runtime_base import NoSource, Sink, get

START = "x-mongrel2-upload-start"
DONE = "x-mongrel2-upload-done"


def upload(path: Path, conn_id: int = 7, done: str | None = None, **extra: str) -> bytes:
    headers = request_headers("POST", "/up", **{START: str(path), **extra})
    if done is not None:
        headers[DONE] = done
    return message(headers, path=b"/up", conn_id=conn_id)


def spooled(tmp_path: Path, name: str = "upload.Ab12Cd", data: bytes = b"spooled body") -> Path:
    f = tmp_path / name
    f.write_bytes(data)
    return f


Calls = list[str]


def app_recording(calls: Calls) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        calls.append(path)
        if path == "/exit":
            raise SystemExit(3)
        if path == "/interrupt":
            raise KeyboardInterrupt
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body or path.encode()]

    return app


def threaded(
    tmp_path: Path, calls: Calls, threads: int = 1, **store: Any
) -> tuple[ThreadedRuntime, Sink, list[object]]:
    sink = Sink()
    done: list[object] = []
    handler = WSGIHandler(app_recording(calls), EnvironDefaults(), True, False)
    worker = ThreadedRuntime(
        NoSource(),
        sink,
        handler,
        threads=threads,
        flush_interval=0,
        uploads=UploadStore(str(tmp_path), **store),
        on_done=done.append,
    )
    worker._start()
    return worker, sink, done


def settle(worker: ThreadedRuntime) -> None:
    time.sleep(0.2)
    assert worker.drain(5.0)


def test_forged_upload_start_is_400_and_the_file_stays(tmp_path: Path) -> None:
    victim = spooled(tmp_path)
    calls: Calls = []
    worker, sink, done = threaded(tmp_path, calls)
    worker.feed(upload(victim))  # no Content-Length, not chunked: nothing to spool
    worker.feed(upload(victim, conn_id=8, **{"content-length": "0"}))
    settle(worker)
    assert sink.data(7).startswith(b"HTTP/1.1 400") and sink.data(8).startswith(b"HTTP/1.1 400")
    assert victim.read_bytes() == b"spooled body" and calls == [] and len(done) == 2


def test_the_app_is_called_once_the_upload_is_complete(tmp_path: Path) -> None:
    f = spooled(tmp_path)
    calls: Calls = []
    worker, sink, done = threaded(tmp_path, calls, threads=1)
    worker.feed(upload(f, **{"transfer-encoding": "chunked"}))
    worker.feed(get("/other", conn_id=8))  # the only thread is free for it
    time.sleep(0.2)
    assert calls == ["/other"] and sink.data(8).endswith(b"/other") and len(done) == 1
    worker.feed(upload(f, done=str(f), **{"transfer-encoding": "chunked"}))
    settle(worker)
    assert calls == ["/other", "/up"] and sink.data(7).endswith(b"spooled body")
    assert not f.exists() and len(done) == 2


def test_an_upload_past_its_timeout_is_408_and_removed(tmp_path: Path) -> None:
    f = spooled(tmp_path)
    calls: Calls = []
    worker, sink, done = threaded(tmp_path, calls, timeout=0.1)
    worker.feed(upload(f, **{"content-length": "30000"}))
    worker.expire_uploads(time.monotonic())
    assert sink.data(7) == b""  # not yet
    time.sleep(0.15)
    worker.expire_uploads(time.monotonic())
    settle(worker)
    assert sink.data(7).startswith(b"HTTP/1.1 408 Request Timeout")
    assert not f.exists() and calls == [] and len(done) == 1


def test_stop_answers_held_uploads_503_and_removes_them(tmp_path: Path) -> None:
    f = spooled(tmp_path)
    calls: Calls = []
    worker, sink, done = threaded(tmp_path, calls)
    worker.feed(upload(f, **{"content-length": "30000"}))
    worker.release_held()
    settle(worker)
    assert sink.data(7).startswith(b"HTTP/1.1 503")
    assert not f.exists() and calls == [] and len(done) == 1


def test_a_pipelined_upload_is_held_too(tmp_path: Path) -> None:
    f = spooled(tmp_path)
    calls: Calls = []
    worker, sink, _ = threaded(tmp_path, calls)
    worker.feed(get("/first"))
    worker.feed(upload(f, **{"content-length": "12"}))
    time.sleep(0.2)
    assert calls == ["/first"]
    worker.feed(upload(f, done=str(f), **{"content-length": "12"}))
    settle(worker)
    assert calls == ["/first", "/up"] and sink.data(7).endswith(b"spooled body")
    assert not f.exists()


def test_a_client_gone_while_held_ends_the_request(tmp_path: Path) -> None:
    from .helpers import control

    f = spooled(tmp_path)
    calls: Calls = []
    worker, _, done = threaded(tmp_path, calls)
    worker.feed(upload(f, **{"content-length": "30000"}))
    worker.feed(control("disconnect"))
    settle(worker)
    assert calls == [] and len(done) == 1 and not f.exists()


def test_forged_upload_done_on_a_real_upload_is_400_and_removed(tmp_path: Path) -> None:
    f = spooled(tmp_path)
    calls: Calls = []
    worker, sink, _ = threaded(tmp_path, calls)
    worker.feed(upload(f, done="/etc/passwd", **{"content-length": "30000"}))
    settle(worker)
    assert sink.data(7).startswith(b"HTTP/1.1 400") and not f.exists() and calls == []


def test_stream_uploads_calls_the_app_before_the_upload_is_done(tmp_path: Path) -> None:
    f = spooled(tmp_path, data=b"spooled")  # Mongrel2 is still writing it
    calls: Calls = []
    worker, sink, _ = threaded(tmp_path, calls, stream=True)
    worker.feed(upload(f, **{"content-length": "12"}))
    time.sleep(0.2)
    assert calls == ["/up"] and sink.data(7) == b""  # the app reads as it arrives
    with f.open("ab") as fh:
        fh.write(b" body")
    worker.feed(upload(f, done=str(f), **{"content-length": "12"}))
    settle(worker)
    assert sink.data(7).endswith(b"spooled body") and not f.exists()


def test_system_exit_from_the_app_is_500_and_the_thread_goes_on(tmp_path: Path) -> None:
    calls: Calls = []
    worker, sink, done = threaded(tmp_path, calls, threads=1)
    worker.feed(get("/exit", conn_id=1))
    worker.feed(get("/interrupt", conn_id=2))
    worker.feed(get("/ok", conn_id=3))
    settle(worker)
    assert sink.data(1).startswith(b"HTTP/1.1 500") and sink.data(2).startswith(b"HTTP/1.1 500")
    assert sink.data(3).endswith(b"/ok") and len(done) == 3


def test_asgi_system_exit_is_500_and_the_loop_goes_on() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/exit":
            raise SystemExit(3)
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"fine"})

    async def go() -> FakeTransport:
        transport = FakeTransport([get("/exit", conn_id=1), get("/ok", conn_id=2)])
        worker = AsyncioRuntime(transport, app, EnvironDefaults(), flush_interval=0)
        task = asyncio.create_task(worker.run(5.0))
        await asyncio.sleep(0.3)
        worker.stop()
        assert await task
        return transport

    transport = asyncio.run(go())
    assert transport.data(1).startswith(b"HTTP/1.1 500")
    assert transport.data(2).endswith(b"fine")


def test_asgi_upload_is_held_until_done_and_removed(tmp_path: Path) -> None:
    f = spooled(tmp_path)
    seen: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        event = await receive()
        seen.append(event.get("body", b""))
        while event.get("more_body"):
            event = await receive()
            seen[-1] += event.get("body", b"")
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"got it"})

    async def go() -> FakeTransport:
        transport = FakeTransport([upload(f, **{"content-length": "12"})])
        worker = AsyncioRuntime(
            transport, app, EnvironDefaults(), flush_interval=0, uploads=UploadStore(str(tmp_path))
        )
        task = asyncio.create_task(worker.run(5.0))
        await asyncio.sleep(0.2)
        assert seen == []  # held: the upload is not complete
        worker.feed(upload(f, done=str(f), **{"content-length": "12"}))
        await asyncio.sleep(0.2)
        worker.stop()
        assert await task
        return transport

    transport = asyncio.run(go())
    assert seen == [b"spooled body"] and transport.data().endswith(b"got it")
    assert not f.exists()
