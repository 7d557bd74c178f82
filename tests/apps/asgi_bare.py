"""A minimal ASGI app without lifespan support (it refuses other scope types)."""

from __future__ import annotations

from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        raise ValueError("only http is supported, not %s" % scope["type"])
    body = b"bare %s %s" % (scope["path"].encode(), scope["query_string"])
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": body})
