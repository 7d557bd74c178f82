"""The tail-latency benchmark's WSGI app: requests that take as long as they ask.

``GET /<route>/work?ms=N`` sleeps N milliseconds (at most 10 s) in the app
thread, as a view waiting on a database would, then answers; any other path
answers at once. Every answer is the 14-byte body of ``hello.py``, so the
harness's readiness check (``wait_answering``) works on it unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

BODY = b"Hello, world!\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]
MAX_MS = 10_000


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Sleep ``ms`` milliseconds on ``.../work``, then 200 with a fixed body."""
    if environ.get("PATH_INFO", "").endswith("/work"):
        query = environ.get("QUERY_STRING", "")
        ms = 0.0
        for part in query.split("&"):
            name, _, value = part.partition("=")
            if name == "ms":
                try:
                    ms = min(max(float(value), 0.0), MAX_MS)
                except ValueError:
                    ms = 0.0
        if ms:
            time.sleep(ms / 1000)
    start_response("200 OK", list(HEADERS))
    return [BODY]
