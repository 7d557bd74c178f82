"""A tiny WSGI app for tests that only need *an* application behind Mongrel2."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

StartResponse = Callable[..., Any]


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """``/`` says hello, ``/echo`` returns the body, ``/environ`` the CGI keys as JSON."""
    path = environ.get("PATH_INFO", "/")
    if path == "/echo":
        size = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(size)
        ctype = environ.get("CONTENT_TYPE") or "application/octet-stream"
        start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/environ":
        data = {k: v for k, v in environ.items() if isinstance(v, str)}
        body = json.dumps(data, sort_keys=True).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    body = b"Hello, world!\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


app = application
