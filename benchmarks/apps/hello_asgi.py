"""The benchmark's ASGI app: the ASGI twin of ``hello.py``.

Same status, headers and body as the WSGI hello world and the naive handler,
so ``bench_all.py``'s ``asgi`` side compares the two interfaces on identical bytes.
"""

from __future__ import annotations

from typing import Any

BODY = b"Hello, world!\n"
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"14")],
}
END = {"type": "http.response.body", "body": BODY}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Always 200 with a fixed 14-byte body; no lifespan support needed."""
    if scope["type"] != "http":
        return
    await send(START)
    await send(END)
