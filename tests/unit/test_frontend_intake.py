"""What the PULLs accept and what a probe notice is (issue 9, item 9)."""

from __future__ import annotations

from collections.abc import Sequence

from m2gate.conn.connection import Connection
from m2gate.conn.uploads import Upload
from m2gate.runtime.base import Runtime
from m2gate.supervisor import wire
from m2gate.transports.zmq_common import REQUEST_HEAD_ROOM, pull_limit

from .helpers import SENDER, control, message, request_headers


def test_pull_limit_is_the_content_length_plus_head_room() -> None:
    assert pull_limit(20480) == 20480 + REQUEST_HEAD_ROOM
    assert pull_limit(0) == -1  # no limit


def test_a_probe_notice_is_known_by_its_negative_id_only() -> None:
    probe = wire.new_probe_block() + 5
    notice = control("disconnect", conn_id=wire.echoed(probe))
    assert wire.parse_probe_notice(notice) == probe
    assert wire.parse_probe_notice(control("disconnect", conn_id=5)) is None
    assert wire.parse_probe_notice(control("disconnect", conn_id=-1)) is None  # "no id"
    assert wire.parse_probe_notice(control("credits", conn_id=wire.echoed(probe))) is None
    assert wire.parse_probe_notice(b"garbage") is None


class Recorder(Runtime[Connection]):
    def __init__(self) -> None:
        super().__init__(Connection)
        self.served: list[object] = []

    def _submit(self, conn: Connection, msg: object) -> None:
        self.served.append(msg)


def upload_headers(path: str, done: bool) -> dict[str, str | bytes | Sequence[str | bytes]]:
    extra = {"x-mongrel2-upload-start": path, "content-length": "30000"}
    if done:
        extra["x-mongrel2-upload-done"] = path
    return request_headers("POST", "/up", **extra)


def test_an_upload_done_after_the_answer_is_ignored_quietly() -> None:
    rt = Recorder()
    rt.feed(message(upload_headers("/tmp/upload.AAAAAA", False), conn_id=4))
    conn = rt._conns[(SENDER.decode(), 4)]
    upload = conn.upload
    assert isinstance(upload, Upload) and len(rt.served) == 1
    rt._end_upload(conn, upload)  # the app answered before Mongrel2 said "done"
    rt._done(conn, keep_alive=True)
    rt.feed(message(upload_headers("/tmp/upload.AAAAAA", True), conn_id=4))
    assert len(rt.served) == 1  # no stray 400 served for it
    # A forged one (no upload of ours answered on it) is still served (answered 400).
    rt.feed(message(upload_headers("/tmp/upload.BBBBBB", True), conn_id=4))
    assert len(rt.served) == 2
