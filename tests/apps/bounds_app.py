"""Apps for the bounds tests (tests/integration/test_bounds.py).

``ws_app`` (ASGI) accepts websockets and never reads them; ``wsgi_app``
blocks ``/block`` until the file ``$M2GATE_TEST_STATE/release`` exists and
streams ``/big?mb=N`` in 1 MB chunks as fast as it can.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STATE = Path(os.environ.get("M2GATE_TEST_STATE", "/tmp"))


async def ws_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await asyncio.sleep(120)  # never reads: the client's messages pile up
        return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok\n"})


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    path = environ["PATH_INFO"]
    if path == "/block":
        while not (STATE / "release").exists():
            time.sleep(0.02)
    if path == "/big":
        mb = int(environ.get("QUERY_STRING", "mb=1").partition("=")[2] or 1)
        start_response("200 OK", [("Content-Length", str(mb << 20))])
        return (b"x" * (1 << 20) for _ in range(mb))  # a new buffer each time
    start_response("200 OK", [("Content-Type", "text/plain")])
    return iter([b"ok\n"])
