"""A small WSGI app that shows what m2gate hands an application.

Run it behind Mongrel2 with ``make demo`` (or ``m2gate serve examples/hello.py``):

- ``/``         a page with links and a form
- ``/environ``  the WSGI environ m2gate built for this request
- ``/stream``   a response produced piece by piece (watch it with ``curl -N``)
- ``/form``     POST target of the form: echoes the parsed fields
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl

StartResponse = Callable[..., Any]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>m2gate says hello</title></head>
<body>
<h1>Hello from m2gate behind Mongrel2</h1>
<ul>
  <li><a href="/environ?greeting=hi">/environ</a>: the WSGI environ of a request</li>
  <li><a href="/stream">/stream</a>: a streamed response, one line per 0.2 s</li>
</ul>
<form method="post" action="/form">
  <label>Name <input name="name" value="Zoë"></label>
  <label>Message <input name="message" value="bonjour &amp; hello"></label>
  <button>Send</button>
</form>
</body></html>
"""


def _html(start_response: StartResponse, body: str, status: str = "200 OK") -> list[bytes]:
    data = body.encode("utf-8")
    start_response(
        status,
        [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(data)))],
    )
    return [data]


def _environ_page(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    rows = "\n".join(
        f"<tr><th>{html.escape(key)}</th><td><code>{html.escape(repr(value))}</code></td></tr>"
        for key, value in sorted(environ.items())
    )
    return _html(start_response, f"<h1>WSGI environ</h1>\n<table>\n{rows}\n</table>\n")


def _pause(line: int) -> None:
    """The wait after each line of /stream (a test replaces it with a gate it opens)."""
    time.sleep(0.2)


def _stream(start_response: StartResponse) -> Iterator[bytes]:
    # No Content-Length: the server frames it (chunked for HTTP/1.1) and sends
    # each yielded block as soon as it is produced. nosniff: without it Chrome
    # holds back the first 1 KiB or so of a text/plain body to guess its type,
    # and shows these short lines only all at once at the end.
    start_response(
        "200 OK",
        [("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff")],
    )
    for i in range(1, 11):
        yield f"line {i} of 10 at {time.strftime('%H:%M:%S')}\n".encode()
        _pause(i)


def _form(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    if environ["REQUEST_METHOD"] != "POST":
        start_response("405 Method Not Allowed", [("Allow", "POST"), ("Content-Length", "0")])
        return []
    size = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(size).decode("utf-8", "replace")
    fields = "\n".join(
        f"<li><b>{html.escape(k)}</b> = {html.escape(v)}</li>" for k, v in parse_qsl(raw)
    )
    return _html(start_response, f"<h1>Form received</h1>\n<ul>\n{fields}\n</ul>\n")


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Route on PATH_INFO; everything else is a 404."""
    path = environ.get("PATH_INFO", "/")
    if path == "/":
        return _html(start_response, PAGE)
    if path == "/environ":
        return _environ_page(environ, start_response)
    if path == "/stream":
        return _stream(start_response)
    if path == "/form":
        return _form(environ, start_response)
    return _html(start_response, "<h1>Not found</h1>\n", "404 Not Found")
