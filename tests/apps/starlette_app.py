"""A real Starlette app for the ASGI integration tests.

Side effects the tests check from outside go to files under
``$M2GATE_TEST_STATE`` (the SSE generator's progress, websocket close codes),
because the app runs in another process. ``M2GATE_TEST_FAIL_STARTUP=1`` makes
the lifespan startup fail.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

STATE = Path(os.environ.get("M2GATE_TEST_STATE", "/tmp"))
_inflight = {"now": 0, "max": 0}


def _record(name: str, text: str) -> None:
    with (STATE / name).open("a", encoding="utf-8") as fh:
        fh.write(text + "\n")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    if os.environ.get("M2GATE_TEST_FAIL_STARTUP") == "1":
        raise RuntimeError("database unreachable")
    _record("lifespan", "startup")
    yield {"started": "yes"}
    _record("lifespan", "shutdown")


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello, world\n")


async def scope_info(request: Request) -> Response:
    scope = request.scope
    return JSONResponse(
        {
            "method": scope["method"],
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "root_path": scope["root_path"],
            "query_string": scope["query_string"].decode("latin-1"),
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
            "client": list(scope["client"]) if scope["client"] else None,
            "server": list(scope["server"]),
            "scheme": scope["scheme"],
            "http_version": scope["http_version"],
            "asgi": scope["asgi"],
            "state": request.state.started,
            "url": str(request.url),
        }
    )


async def echo(request: Request) -> Response:
    body = await request.body()
    return Response(
        body, media_type="application/octet-stream", headers={"X-Length": str(len(body))}
    )


async def sha256(request: Request) -> Response:
    """Hash the body while it arrives (an upload streams from Mongrel2's temp file)."""
    digest = hashlib.sha256()
    size = chunks = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
        chunks += 1
    return JSONResponse({"sha256": digest.hexdigest(), "size": size, "chunks": chunks})


async def stream(request: Request) -> Response:
    """``n`` chunks of ``size`` bytes; ``record=NAME`` writes how the stream ended there."""
    count = int(request.query_params.get("n", "10"))
    size = int(request.query_params.get("size", "10"))
    record = request.query_params.get("record")

    async def chunks() -> AsyncIterator[bytes]:
        ended = "stopped"  # the client went away (or Mongrel2 dropped it) first
        try:
            for i in range(count):
                yield (b"%d:" % i) + b"x" * size + b"\n"
                await asyncio.sleep(0)
            ended = "done"
        finally:
            if record:
                _record(record, ended)

    return StreamingResponse(chunks(), media_type="text/plain")


async def big(request: Request) -> Response:
    """``mb`` megabytes of a repeating pattern, streamed in 64 KB chunks."""
    total = int(request.query_params.get("mb", "1")) * 1024 * 1024
    block = bytes(range(256)) * 256

    async def chunks() -> AsyncIterator[bytes]:
        sent = 0
        while sent < total:
            piece = block[: total - sent]
            sent += len(piece)
            yield piece

    return StreamingResponse(chunks(), media_type="application/octet-stream")


async def events(request: Request) -> Response:
    """Server-sent events until the client goes away; progress goes to files."""
    name = request.query_params.get("name", "sse")

    async def gen() -> AsyncIterator[str]:
        n = 0
        try:
            while True:
                if await request.is_disconnected():
                    _record(name, "noticed-disconnect")
                    return
                n += 1
                _record(name, "sent %d" % n)
                yield "data: event %d\n\n" % n
                await asyncio.sleep(0.05)
        finally:
            _record(name, "stopped")

    return StreamingResponse(gen(), media_type="text/event-stream")


async def slow(request: Request) -> Response:
    _inflight["now"] += 1
    _inflight["max"] = max(_inflight["max"], _inflight["now"])
    try:
        await asyncio.sleep(float(request.query_params.get("s", "0.5")))
    finally:
        _inflight["now"] -= 1
    return PlainTextResponse("slow %s\n" % request.query_params.get("i", ""))


async def inflight(request: Request) -> Response:
    return JSONResponse(_inflight)


async def boom(request: Request) -> Response:
    raise RuntimeError("boom")


async def ws_echo(websocket: WebSocket) -> None:
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=offered[0] if offered else None)
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                _record("ws", "disconnect %s" % message.get("code"))
                return
            text = message.get("text")
            if text is not None:
                if text.startswith("flood:"):
                    for i in range(int(text[6:])):
                        await websocket.send_bytes(bytes([i % 256]) * 65536)
                    continue
                if text.startswith("close:"):
                    await websocket.close(int(text[6:]), reason="asked to")
                    return
                await websocket.send_text(text)
            else:
                await websocket.send_bytes(message.get("bytes") or b"")
    except WebSocketDisconnect as exc:
        _record("ws", "disconnect %s" % exc.code)


async def ws_reject(websocket: WebSocket) -> None:
    await websocket.close()


async def sub_hello(request: Request) -> Response:
    return JSONResponse({"root_path": request.scope["root_path"], "path": request.scope["path"]})


routes = [
    Route("/", hello),
    Route("/scope", scope_info),
    Route("/echo", echo, methods=["POST", "PUT"]),
    Route("/sha256", sha256, methods=["POST", "PUT"]),
    Route("/stream", stream),
    Route("/big", big),
    Route("/events", events),
    Route("/slow", slow),
    Route("/inflight", inflight),
    Route("/boom", boom),
    Mount("/sub", routes=[Route("/hello", sub_hello)]),
    WebSocketRoute("/ws", ws_echo),
    WebSocketRoute("/ws-reject", ws_reject),
]

app = Starlette(routes=routes, lifespan=lifespan)
