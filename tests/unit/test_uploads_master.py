"""The master removes the temp file of an upload it answers itself (supervisor/router.py)."""

from __future__ import annotations

from pathlib import Path

from m2gate.conn.uploads import UploadStore
from m2gate.supervisor.wire import DONE, encode_report

from .helpers import SENDER, message, request_headers
from .test_supervisor_router import Rig, ready, rig  # noqa: F401  (the fixture)


def upload_start(path: Path, conn_id: int, **extra: str) -> bytes:
    headers = request_headers(
        "POST", "/up", **{"x-mongrel2-upload-start": str(path), "content-length": "30000", **extra}
    )
    return message(headers, path=b"/up", conn_id=conn_id)


def upload_done(path: Path, conn_id: int) -> bytes:
    headers = request_headers(
        "POST",
        "/up",
        **{
            "x-mongrel2-upload-start": str(path),
            "x-mongrel2-upload-done": str(path),
            "content-length": "30000",
        },
    )
    return message(headers, path=b"/up", conn_id=conn_id)


def answer_mid_upload(rig: Rig, path: Path, conn_id: int) -> bytes:  # noqa: F811
    """The master's answer to an upload Mongrel2 still reads: the close waits for upload-done.

    Closing while Mongrel2 reads the body drops the connection half read,
    and the answer can go with it.
    """
    reply = rig.published()
    assert not rig.replies.poll(100), "closed while Mongrel2 still reads the upload"
    queued = len(rig.router.disp.queue)
    rig.deliver(upload_done(path, conn_id))
    close = rig.published()
    assert close.endswith(b", ") and close.split(b" ")[0] == reply.split(b" ")[0]
    assert len(rig.router.disp.queue) == queued  # the upload-done is no new request
    return reply


def store(rig: Rig, tmp_path: Path) -> Path:  # noqa: F811
    rig.router.store = UploadStore(str(tmp_path))
    f = tmp_path / "upload.Q1w2E3"
    f.write_bytes(b"partial")
    return f


def test_a_full_queue_503_removes_the_upload(rig: Rig, tmp_path: Path) -> None:  # noqa: F811
    f = store(rig, tmp_path)
    rig.deliver(message(request_headers("GET", "/x"), conn_id=1))  # queued: worker not ready
    rig.deliver(upload_start(f, 2))  # the queue holds one: 503
    assert b"503 Service Unavailable" in answer_mid_upload(rig, f, 2)
    assert not f.exists() and rig.router.uploads == {}


def test_a_stopping_master_503_removes_the_upload(rig: Rig, tmp_path: Path) -> None:  # noqa: F811
    f = store(rig, tmp_path)
    rig.life.begin_stop("test", 2.0)
    rig.deliver(upload_start(f, 3))
    assert b"503 Service Unavailable" in answer_mid_upload(rig, f, 3)
    assert not f.exists()


def test_a_queue_timeout_503_removes_the_upload(rig: Rig, tmp_path: Path) -> None:  # noqa: F811
    f = store(rig, tmp_path)
    rig.deliver(upload_start(f, 4))  # queued: the worker is not ready
    rig.router.expire_queued(100.0, 1.0)
    assert b"503 Service Unavailable" in answer_mid_upload(rig, f, 4)
    assert not f.exists()


def test_a_worker_gone_mid_upload_removes_it(rig: Rig, tmp_path: Path) -> None:  # noqa: F811
    f = store(rig, tmp_path)
    ready(rig)
    rig.deliver(upload_start(f, 5))
    assert rig.to_worker()
    rig.worker.answer = "502 Bad Gateway"
    rig.router.worker_gone(rig.worker, -9, 3.0)
    assert b"502 Bad Gateway" in answer_mid_upload(rig, f, 5)
    assert not f.exists()


def test_a_served_upload_is_forgotten_and_a_forged_one_never_claimed(
    rig: Rig,  # noqa: F811
    tmp_path: Path,
) -> None:
    f = store(rig, tmp_path)
    ready(rig)
    rig.deliver(upload_start(f, 6))
    assert rig.to_worker() and (SENDER.decode(), 6) in rig.router.uploads
    rig.dealer.send_multipart([DONE, encode_report(SENDER.decode(), 6, 0)])
    assert rig.router.router.poll(1000)
    rig.router.on_router(2.0)
    assert rig.router.uploads == {}
    forged = message(request_headers("GET", "/x", **{"x-mongrel2-upload-start": str(f)}), conn_id=7)
    rig.deliver(forged)
    assert rig.to_worker() and rig.router.uploads == {}
    rig.worker.answer = "502 Bad Gateway"
    rig.router.worker_gone(rig.worker, -9, 3.0)
    assert b"502 Bad Gateway" in rig.answer()
    assert f.exists()  # a forged header names no file of ours


def test_harakiri_does_not_count_a_held_upload() -> None:
    """The worker holds the request until upload-done: the clock starts there."""
    from m2gate.protocol.peek import peek
    from m2gate.supervisor.handoff import Dispatcher
    from m2gate.supervisor.state import Worker

    d = Dispatcher()
    w = Worker(b"w0", 1000, 1, 2)
    d.add_worker(w)
    d.mark_ready(b"w0")
    start = upload_start(Path("/t/upload.1"), 9)
    done_headers = request_headers(
        "POST",
        "/up",
        **{
            "x-mongrel2-upload-start": "/t/upload.1",
            "x-mongrel2-upload-done": "/t/upload.1",
            "content-length": "30000",
        },
    )
    done = message(done_headers, path=b"/up", conn_id=9)
    d.assign(peek(start), start, 0.0)
    assert d.overdue(100.0, 30.0) == []  # a slow client, no app running
    d.assign(peek(done), done, 100.0)
    assert d.overdue(120.0, 30.0) == []
    assert [e.key[1] for _, e in d.overdue(131.0, 30.0)] == [9]
    d.on_done(b"w0", (SENDER.decode(), 9), 132.0)
    assert d.uploading == set()
    d.hold_uploads = False  # stream_uploads: the app runs while the body arrives
    d.assign(peek(start), start, 200.0)
    assert [e.key[1] for _, e in d.overdue(231.0, 30.0)] == [9]
