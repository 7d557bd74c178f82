"""WSGI app for the front-end tests: slow streams, slow answers that name their request."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

StartResponse = Callable[..., Any]

# A slow import (a big app: its workers cannot prove their reply path before),
# lasting until the test says so (the file appears), at most 2 minutes.
_GATE = os.environ.get("FRONTEND_APP_LOAD_GATE", "")
_deadline = time.monotonic() + 120.0
while _GATE and not os.path.exists(_GATE) and time.monotonic() < _deadline:
    time.sleep(0.05)


def _stream(chunks: int, pause: float) -> Iterator[bytes]:
    yield b"pid %d\n" % os.getpid()
    for i in range(chunks):
        time.sleep(pause)
        yield b"chunk %d\n" % i


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """``/stream?n=N&s=S`` chunked, slowly; ``/slow?s=S&tag=T``; ``/tag?tag=T``; ``/``."""
    path = environ.get("PATH_INFO", "/")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    tag = query.get("tag", ["none"])[0].encode()
    if path == "/stream":
        n = int(query.get("n", ["100"])[0])
        pause = float(query.get("s", ["0.1"])[0])
        start_response("200 OK", [("Content-Type", "text/plain")])  # no length: chunked
        return _stream(n, pause)
    if path == "/slow":
        time.sleep(float(query.get("s", ["1"])[0]))
    if path == "/upload":  # answers once the body is read, before upload-done may come
        length = int(environ.get("CONTENT_LENGTH") or 0)
        got = len(environ["wsgi.input"].read(length))
        body = b"read %d\n" % got
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    body = b"answer for %s from %d\n" % (tag, os.getpid())
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
