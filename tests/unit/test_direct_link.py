"""``--dispatch direct``'s worker source (supervisor/child.py DirectLink), on real sockets.

Mongrel2's PUSH is an inproc PUSH here, the master's ROUTER a ROUTER: what
the worker's PULL brings is held until the master says ``ready``, probe
notices (anyone's) go to the master, and a stopping worker hands out what
it held.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from m2gate.supervisor.child import DirectLink
from m2gate.supervisor.wire import HELLO, PROBE, PROBE_LOW, READY, echoed

_names = itertools.count()
WID = b"w1"


class Transport:
    """What DirectLink uses of a ZmqTransport: its PULL, and stop_receiving."""

    def __init__(self, pull: zmq.Socket[Any]) -> None:
        self.pull = pull
        self.stopped = False

    def frontend_changed(self) -> bool:
        return False

    def stop_receiving(self) -> None:
        self.stopped = True


class Runtime:
    """What the link reads of its runtime: stopping, and the heartbeat's counters."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.requests = 0
        self.disconnects = 0


class Rig:
    def __init__(self, ctx: zmq.Context[Any]) -> None:
        n = next(_names)
        self.router = ctx.socket(zmq.ROUTER)
        self.router.bind("inproc://direct-master-%d" % n)
        self.push = ctx.socket(zmq.PUSH)
        self.push.bind("inproc://direct-mongrel2-%d" % n)
        pull = ctx.socket(zmq.PULL)
        pull.connect("inproc://direct-mongrel2-%d" % n)
        self.transport = Transport(pull)
        self.link = DirectLink(ctx, "inproc://direct-master-%d" % n, WID, os.getppid(), hold=2)
        self.link.connect(self.transport)  # type: ignore[arg-type]
        self.runtime = Runtime()
        self.link.worker = self.runtime  # type: ignore[assignment]
        self.link.send(HELLO, b"{}")
        assert self.router.poll(1000) and self.router.recv_multipart()[1] == HELLO

    def from_mongrel2(self, *messages: bytes) -> None:
        for m in messages:
            self.push.send(m)
        assert self.transport.pull.poll(1000)

    def frames(self, kind: bytes) -> list[list[bytes]]:
        out = []
        while self.router.poll(200):
            frames = self.router.recv_multipart()
            if frames[1] == kind:
                out.append(frames[2:])
        return out


@pytest.fixture
def rig() -> Iterator[Rig]:
    ctx: zmq.Context[Any] = zmq.Context()
    r = Rig(ctx)
    try:
        yield r
    finally:
        r.link.close(linger_s=0)
        for sock in (r.router, r.push, r.transport.pull):
            sock.close(linger=0)
        ctx.term()


def probe_notice(probe_id: int) -> bytes:
    return b'S %d @* 16:{"METHOD":"JSON"}21:{"type":"disconnect"},' % echoed(probe_id)


def test_requests_wait_for_ready_then_come_in_order(rig: Rig) -> None:
    rig.from_mongrel2(b"S 1 /a 2:{}0:,", b"S 2 /b 2:{}0:,")
    assert rig.link.recv(100) is None  # held: the reply path is not proven yet
    rig.router.send_multipart([WID, b"", READY])
    assert rig.link.recv(1000) == b"S 1 /a 2:{}0:,"
    assert rig.link.recv(1000) == b"S 2 /b 2:{}0:,"
    rig.from_mongrel2(b"S 3 /c 2:{}0:,")
    assert rig.link.recv(1000) == b"S 3 /c 2:{}0:,"


def test_beyond_the_hold_bound_requests_pass(rig: Rig) -> None:
    rig.from_mongrel2(b"S 1 /a 2:{}0:,", b"S 2 /b 2:{}0:,", b"S 3 /c 2:{}0:,")
    assert rig.link.recv(200) == b"S 3 /c 2:{}0:,"  # hold=2: memory stays bounded


def test_probe_notices_go_to_the_master_not_the_runtime(rig: Rig) -> None:
    mine = PROBE_LOW + 12345
    rig.from_mongrel2(probe_notice(mine), b"S -5 /x 2:{}0:,")
    rig.router.send_multipart([WID, b"", READY])
    # A negative id that is no probe notice is the runtime's to drop as malformed.
    assert rig.link.recv(1000) == b"S -5 /x 2:{}0:,"
    assert rig.frames(PROBE) == [[b"%d" % mine]]


def test_a_stopping_worker_hands_out_what_it_held(rig: Rig) -> None:
    rig.from_mongrel2(b"S 1 /a 2:{}0:,")
    assert rig.link.recv(100) is None
    rig.runtime.stopping.set()
    rig.link.stop_receiving()
    assert rig.transport.stopped
    assert rig.link.recv(0) == b"S 1 /a 2:{}0:,"
    assert rig.link.recv(0) is None


def test_close_sends_the_final_request_count(rig: Rig) -> None:
    rig.runtime.requests = 7
    rig.link.close(linger_s=1.0)
    beats = rig.frames(b"hb")
    assert beats and b'"requests": 7' in beats[-1][0]
