"""ASGI app for the ASGI-under-a-master tests: who served me, slow requests, a websocket echo.

``/pid`` the worker's pid, ``/sleep?s=N`` awaits N seconds (the loop stays
free), ``/block?s=N`` blocks the loop N seconds (what harakiri is for),
``/part?s=N`` streams a first chunk, then waits N seconds before the end,
``/lifespan`` whether this worker's lifespan startup ran; a websocket on any
path echoes each text message prefixed with the worker's pid.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any
from urllib.parse import parse_qs

STARTED: list[int] = []  # the pids whose lifespan startup ran here


async def _reply(send: Any, body: bytes, status: int = 200) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                STARTED.append(os.getpid())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await _echo(receive, send)
        return
    path = scope["path"]
    query = parse_qs(scope["query_string"].decode())
    seconds = float(query.get("s", ["0.1"])[0])
    if path == "/pid":
        await _reply(send, b"%d" % os.getpid())
    elif path == "/sleep":
        await asyncio.sleep(seconds)
        await _reply(send, b"slept %s in %d" % (str(seconds).encode(), os.getpid()))
    elif path == "/block":
        time.sleep(seconds)
        await _reply(send, b"blocked %s" % str(seconds).encode())
    elif path == "/part":  # the head and a first chunk, then nothing for a long time
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first part\n", "more_body": True})
        await asyncio.sleep(seconds)
        await send({"type": "http.response.body", "body": b"the end\n"})
    elif path == "/lifespan":
        await _reply(send, b"%s" % str(os.getpid() in STARTED).encode())
    else:
        await _reply(send, b"Hello from %d\n" % os.getpid())


async def _echo(receive: Any, send: Any) -> None:
    message = await receive()
    assert message["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is not None:
            await send({"type": "websocket.send", "text": "%d %s" % (os.getpid(), text)})
