"""Apps that escape the error handling, for test_app_escapes.py and test_upload_safety.py.

WSGI ``application``: ``/exit`` raises SystemExit, ``/interrupt`` KeyboardInterrupt,
``/echo`` returns the body, ``/echo-sleep?s=N`` reads the body then sleeps,
``/sleep?s=N`` sleeps, ``/pid`` the worker pid, anything else says hello.
ASGI ``asgi_app``: ``/exit`` raises SystemExit, anything else says hello.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

StartResponse = Callable[..., Any]


def _reply(start_response: StartResponse, body: bytes, status: str = "200 OK") -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("s", ["0"])[0])
    if path == "/exit":
        raise SystemExit(3)
    if path == "/interrupt":
        raise KeyboardInterrupt
    if path in ("/echo", "/echo-sleep"):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        time.sleep(seconds)
        return _reply(start_response, body)
    if path == "/sleep":
        time.sleep(seconds)
        return _reply(start_response, b"slept")
    if path == "/pid":
        return _reply(start_response, b"%d" % os.getpid())
    return _reply(start_response, b"hello")


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        raise ValueError("only http")
    if scope["path"] == "/exit":
        raise SystemExit(3)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})
