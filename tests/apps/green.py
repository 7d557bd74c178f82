"""A WSGI app that waits instead of computing, to test the gevent worker.

It only calls the standard library (``time.sleep``, ``threading``): under
``--worker-class gevent`` those are monkey-patched, so its waits cooperate
without the app knowing about gevent.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

StartResponse = Callable[..., Any]

_sleeping = 0  # requests inside /sleep now (greenlets share it, no lock needed)
_peak = 0  # most requests ever inside /sleep at once
_aborted = 0  # streams closed before their end (client gone)


_acks: dict[str, threading.Event] = {}


def _stream(chunks: int, delay: float, token: str) -> Iterator[bytes]:
    """With a token, chunk i+1 waits until the client fetched ``/ack?t=TOKEN-i``."""
    global _aborted
    finished = False
    try:
        yield from _chunks(chunks, delay, token)
        finished = True
    finally:
        if not finished:
            _aborted += 1


def _chunks(chunks: int, delay: float, token: str) -> Iterator[bytes]:
    for i in range(chunks):
        if i:
            if token:
                event = _acks.setdefault("%s-%d" % (token, i - 1), threading.Event())
                if not event.wait(10):
                    return
            else:
                time.sleep(delay)
        yield b"chunk %d\n" % i


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """``/sleep?s=S&n=N`` sleeps, ``/sleeping`` and ``/stats`` count, ``/stream``, ``/info``."""
    path = environ.get("PATH_INFO", "/")
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    global _sleeping, _peak
    if path == "/sleep":
        _sleeping += 1
        _peak = max(_peak, _sleeping)
        try:
            time.sleep(float(query.get("s", "1")))
        finally:
            _sleeping -= 1
        body = ("slept %s\n" % query.get("n", "")).encode()
    elif path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _stream(
            int(query.get("n", "5")), float(query.get("delay", "0.05")), query.get("t", "")
        )
    elif path == "/ack":
        _acks.setdefault(query.get("t", ""), threading.Event()).set()
        body = b"ok\n"
    elif path == "/sleeping":
        body = b"%d\n" % _sleeping
    elif path == "/stats":
        body = b"peak=%d aborted=%d\n" % (_peak, _aborted)
    elif path == "/info":
        from gevent import monkey

        body = (
            "pid=%d patched=%s multithread=%s thread=%s\n"
            % (
                os.getpid(),
                monkey.is_module_patched("threading"),
                environ["wsgi.multithread"],
                type(threading.current_thread()).__name__,
            )
        ).encode()
    else:
        body = b"Hello, green world!\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


app = application
