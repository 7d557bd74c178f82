"""The benchmark's WSGI app: the smallest useful hello world.

m2gate's answer (with the Date and Server headers it adds) has the same
status, headers and body as the naive handler's fixed one, so the two sides
move the same bytes and the ratio measures m2gate's own overhead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

BODY = b"Hello, world!\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Always 200 with a fixed 14-byte body."""
    start_response("200 OK", list(HEADERS))
    return [BODY]
