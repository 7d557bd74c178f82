"""WSGI app for the scale-out test: names the handler host (and process) that answered."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

HOST = os.environ.get("SCALE_OUT_HOST", "unnamed")


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """``/?s=SECONDS&id=ID``: sleep, then ``host NAME pid PID id ID``."""
    query = parse_qs(environ.get("QUERY_STRING", ""))
    time.sleep(min(float(query.get("s", ["0"])[0]), 30.0))
    body = b"host %s pid %d id %s\n" % (
        HOST.encode(),
        os.getpid(),
        query.get("id", ["-"])[0].encode(),
    )
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
