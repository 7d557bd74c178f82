"""WSGI app for the master/worker tests: who served me, slow requests, memory, errors."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

StartResponse = Callable[..., Any]

# Memory handed out by /alloc stays referenced: RSS only grows.
_HOARD: list[bytes] = []
LOADED_AT = time.time()


def _reply(start_response: StartResponse, body: bytes, status: str = "200 OK") -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """``/pid`` worker pid, ``/sleep?s=N``, ``/alloc?mb=N``, ``/boom`` raises, ``/`` hello."""
    path = environ.get("PATH_INFO", "/")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/pid":
        return _reply(start_response, b"%d" % os.getpid())
    if path == "/sleep":
        seconds = float(query.get("s", ["0.1"])[0])
        time.sleep(seconds)
        return _reply(start_response, b"slept %s in %d" % (str(seconds).encode(), os.getpid()))
    if path == "/alloc":
        mb = int(query.get("mb", ["10"])[0])
        _HOARD.append(os.urandom(mb * 1024 * 1024))
        return _reply(start_response, b"holding %d MB" % (len(_HOARD) * mb))
    if path == "/boom":
        raise RuntimeError("boom, as requested")
    if path == "/loaded":
        return _reply(start_response, b"%r" % LOADED_AT)
    return _reply(start_response, b"Hello from %d\n" % os.getpid())


app = application
