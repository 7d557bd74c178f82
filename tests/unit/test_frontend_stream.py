"""A response that started to stream is never answered for by the master (issue 9, item 7).

The worker says ``started`` only when part of a response leaves before its
end (a response sent whole by ``finish`` says nothing: no extra frame on the
hot path); the master then closes such a connection when its worker dies,
instead of publishing a 502/504 into the middle of the body.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from m2gate.conn.connection import Connection, Flusher, Output
from m2gate.supervisor.wire import STARTED, encode_report

from .helpers import SENDER
from .test_supervisor_router import Rig, ready, request, rig  # noqa: F401  (fixture)


class Sink:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.event = threading.Event()

    def send(self, messages: Sequence[bytes]) -> None:
        self.sent.extend(messages)
        self.event.set()


def output(flusher: Flusher | None = None) -> tuple[Output, Sink, list[Connection]]:
    sink, seen = Sink(), []
    out = Output(Connection("s", 1, b"u"), sink, flusher, 1 << 20, 0.005, seen.append)
    return out, sink, seen


def test_a_response_sent_whole_never_says_started() -> None:
    out, sink, seen = output(Flusher())
    out.write(b"small")  # waits for the timer or finish
    out.finish(b"end")
    assert seen == [] and len(sink.sent) == 1


def test_a_large_write_says_started_once_before_it_leaves() -> None:
    out, sink, seen = output()  # no flusher: every write leaves at once
    out.write(b"x" * 10)
    assert seen == [out.conn] and len(sink.sent) == 1
    out.write(b"y")
    out.finish()
    assert seen == [out.conn]


def test_the_timed_flush_of_a_slow_stream_says_started() -> None:
    out, sink, seen = output(Flusher())
    out.write(b"first chunk")
    assert sink.event.wait(2.0)
    assert seen == [out.conn]
    out.finish()


def test_a_dead_workers_streaming_response_is_only_closed(rig: Rig) -> None:  # noqa: F811
    ready(rig)
    rig.deliver(request(5))
    rig.deliver(request(5))  # pipelined behind it: that connection is lost either way
    assert rig.to_worker() == [request(5)]
    rig.dealer.send_multipart([STARTED, encode_report(SENDER.decode(), 5, 0)])
    assert rig.router.router.poll(1000)
    rig.router.on_router(2.0)
    rig.router.worker_gone(rig.worker, -9, 3.0)
    assert rig.published() == SENDER + b" 1:5, "  # a close, no status line
    assert not rig.replies.poll(100)


def test_started_for_an_unknown_connection_is_ignored(rig: Rig) -> None:  # noqa: F811
    ready(rig)
    rig.dealer.send_multipart([STARTED, encode_report(SENDER.decode(), 77, 0)])
    rig.dealer.send_multipart([STARTED, b"garbled"])
    assert rig.router.router.poll(1000)
    rig.router.on_router(2.0)
    assert rig.router.disp.owner == {}
