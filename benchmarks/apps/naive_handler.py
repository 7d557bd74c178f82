"""The floor: a minimal pyzmq Mongrel2 handler answering one fixed response.

No parsing beyond the sender and connection id, no environ, no framing: the
cheapest a Python handler can be while still speaking Mongrel2's protocol
correctly for keep-alive clients. ``bench_wsgi.py`` compares m2gate to it.

Usage: ``python naive_handler.py SEND_SPEC RECV_SPEC IDENTITY``
"""

from __future__ import annotations

import signal
import sys
from email.utils import formatdate
from types import FrameType

import zmq

# Same status, headers and body as m2gate's answer to apps/hello.py (a Date
# and a Server header included, Date fixed at start-up), so both sides move
# the same bytes through Mongrel2.
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 14\r\n"
    b"Date: " + formatdate(usegmt=True).encode("ascii") + b"\r\n"
    b"Server: naive/0.0.0\r\n"
    b"\r\n"
    b"Hello, world!\n"
)


def serve(send_spec: str, recv_spec: str, identity: str) -> int:
    """Answer every request with RESPONSE until SIGTERM/SIGINT."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pub = ctx.socket(zmq.PUB)
    pull.setsockopt(zmq.IDENTITY, identity.encode("ascii"))
    pub.setsockopt(zmq.IDENTITY, identity.encode("ascii"))
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.connect(recv_spec)
    pull.connect(send_spec)
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # A blocking recv that wakes every 100 ms to see the stop flag: the
    # cheapest receive pyzmq offers (no Poller, no Again on an empty queue).
    pull.setsockopt(zmq.RCVTIMEO, 100)
    recv, send = pull.recv, pub.send
    while not stopping:
        try:
            data = recv()
        except zmq.Again:
            continue
        sender, conn_id, path, _ = data.split(b" ", 3)
        if path == b"@*":
            continue  # disconnect notice: answering it would make Mongrel2 send another
        send(b"%s %d:%s, %s" % (sender, len(conn_id), conn_id, RESPONSE))
    pull.close(linger=0)
    pub.close(linger=1000)
    ctx.term()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(serve(sys.argv[1], sys.argv[2], sys.argv[3]))
