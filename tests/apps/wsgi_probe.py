"""The WSGI app behind the WSGI integration tests, wrapped in wsgiref's validator.

``application`` is the validated app: every integration test of the WSGI
adapter runs through it, so any PEP 3333 slip of m2gate's (environ types,
input/errors streams, start_response, close()) turns into a failed request.
Validator *warnings* are made errors here, because pytest's
``filterwarnings = error`` does not reach the server subprocess.

``raw`` is the same app without the validator, for the few tests where the app
itself breaks PEP 3333 on purpose (a header value with CR/LF: the validator
would refuse it before m2gate could).

Side channels for the tests, set through the environment of the server:
``M2GATE_TEST_EVENTS`` names a file where the app appends one line per event
(``start <id>``, ``close <id>``), so a test can see that close() ran even after
its client went away.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs
from wsgiref.types import StartResponse
from wsgiref.validate import WSGIWarning, validator

warnings.simplefilter("error", WSGIWarning)

Environ = dict[str, Any]

_events_lock = threading.Lock()


def record(event: str) -> None:
    """Append ``event`` to the file named by M2GATE_TEST_EVENTS (if set)."""
    path = os.environ.get("M2GATE_TEST_EVENTS")
    if not path:
        return
    with _events_lock, open(path, "a", encoding="utf-8") as fh:
        fh.write(event + "\n")
        fh.flush()


def block(index: int, size: int) -> bytes:
    """Deterministic filler block ``index`` of ``size`` bytes (tests recompute it)."""
    seed = hashlib.sha256(index.to_bytes(8, "big")).digest()
    return (seed * (size // len(seed) + 1))[:size]


def sha256_hex(data: bytes) -> str:
    """Hex sha256, sent in a header so the client can check the body."""
    return hashlib.sha256(data).hexdigest()


class Recorded:
    """An app iterable whose close() is recorded, as a test can't see it otherwise."""

    def __init__(self, tag: str, chunks: Iterable[bytes]) -> None:
        self.tag = tag
        self._chunks = iter(chunks)
        record("start " + tag)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next(self._chunks)

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()  # a generator stopped mid-way runs its finally blocks now
        record("close " + self.tag)


def _query(environ: Environ) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _json(start_response: StartResponse, data: object, status: str = "200 OK") -> list[bytes]:
    body = json.dumps(data, sort_keys=True).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _text(start_response: StartResponse, text: str, status: str = "200 OK") -> list[bytes]:
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def environ_view(environ: Environ) -> dict[str, Any]:
    """The JSON-able part of the environ, plus the types of the wsgi.* objects."""
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if isinstance(value, (str, int, bool)) or value is None:
            out[key] = value
        elif isinstance(value, tuple):
            out[key] = list(value)
        else:
            out[key] = "<%s>" % type(value).__name__
    return out


def read_body(environ: Environ) -> bytes:
    """Read exactly CONTENT_LENGTH bytes in small pieces (validator: read(size))."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    stream = environ["wsgi.input"]
    parts = []
    remaining = length
    while remaining > 0:
        data = stream.read(min(remaining, 7000))
        if not data:
            break
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts)


def probe(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Routes, by PATH_INFO (tests/integration/test_wsgi_*.py say what each proves)."""
    path = environ.get("PATH_INFO", "")
    q = _query(environ)
    tag = q.get("id", "-")

    if path in ("/", "/environ") or path.startswith("/environ/"):
        return _json(start_response, environ_view(environ))

    if path == "/echo":
        body = read_body(environ)
        return _json(
            start_response,
            {
                "length": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "content_type": environ.get("CONTENT_TYPE", ""),
                "content_length": environ.get("CONTENT_LENGTH", ""),
                "text": body.decode("latin-1") if len(body) <= 256 else "",
                "after": environ["wsgi.input"].read(10).decode("latin-1"),
            },
        )

    if path == "/lines":
        stream = environ["wsgi.input"]
        first = stream.readline()
        second = stream.readline(3)
        rest = stream.readlines()
        return _json(
            start_response,
            [x.decode("latin-1") for x in [first, second, *rest]],
        )

    if path == "/stream":
        count = int(q.get("n", "5"))
        delay = float(q.get("sleep", "0"))

        def gen() -> Iterator[bytes]:
            for i in range(count):
                if delay:
                    time.sleep(delay)
                yield b"chunk %d;" % i

        start_response("200 OK", [("Content-Type", "text/plain")])
        return Recorded(tag, gen())

    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written-1;")
        write(b"written-2;")
        return [b"returned-3;"]

    if path == "/id":
        delay = float(q.get("sleep", "0"))
        if delay:
            time.sleep(delay)
        return _text(start_response, "id=%s thread=%s" % (tag, threading.get_ident()))

    if path == "/slow":
        record("start " + tag)
        time.sleep(float(q.get("t", "1")))
        record("end " + tag)
        return _text(start_response, "slow done " + tag)

    if path == "/big":
        total = int(q.get("size", str(1024 * 1024)))
        chunk = int(q.get("chunk", "4096"))

        def big() -> Iterator[bytes]:
            sent = 0
            index = 0
            while sent < total:
                part = block(index, min(chunk, total - sent))
                sent += len(part)
                index += 1
                yield part

        headers = [("Content-Type", "application/octet-stream")]
        if q.get("length") == "1":
            headers.append(("Content-Length", str(total)))
        start_response("200 OK", headers)
        return Recorded(tag, big())

    if path == "/forever":
        # Streams until the client goes away (m2gate must then stop and close us).
        limit = time.monotonic() + float(q.get("max", "60"))

        def forever() -> Iterator[bytes]:
            index = 0
            while time.monotonic() < limit:
                yield block(index, 65536)
                index += 1
                time.sleep(0.005)

        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Recorded(tag, forever())

    if path == "/error":
        raise RuntimeError("boom before start_response")

    if path == "/error-iter":
        # The error comes from the first next(): start_response called, nothing sent.
        def failing() -> Iterator[bytes]:
            raise RuntimeError("boom in first chunk")
            yield b""  # pragma: no cover

        start_response("200 OK", [("Content-Type", "text/plain")])
        return Recorded(tag, failing())

    if path == "/error-after":

        def half() -> Iterator[bytes]:
            yield b"first part;"
            time.sleep(0.05)  # the first part reaches the client before the error
            raise RuntimeError("boom after headers")

        start_response("200 OK", [("Content-Type", "text/plain")])
        return Recorded(tag, half())

    if path == "/exc-info":
        # The app's own error page through start_response(..., exc_info).
        try:
            raise ValueError("handled")
        except ValueError:
            import sys

            start_response("200 OK", [("Content-Type", "text/plain")])
            start_response(
                "503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info()
            )
        return [b"app error page"]

    if path == "/exc-info-late":
        # exc_info after the head went out: start_response must re-raise.
        def late() -> Iterator[bytes]:
            yield b"partial;"
            time.sleep(0.05)
            try:
                raise ValueError("late failure")
            except ValueError:
                import sys

                start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
            yield b"never sent"

        start_response("200 OK", [("Content-Type", "text/plain")])
        return Recorded(tag, late())

    if path == "/length":
        # The app's Content-Length against what it really yields.
        promised = int(q.get("promise", "10"))
        actual = int(q.get("actual", "10"))
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(promised))]
        )
        return Recorded(tag, iter([b"x" * (actual // 2), b"y" * (actual - actual // 2)]))

    if path == "/file":
        import io

        data = b"".join(block(i, 1000) for i in range(int(q.get("blocks", "100"))))
        wrapper = environ["wsgi.file_wrapper"](io.BytesIO(data), 4096)
        start_response(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("X-Sha256", sha256_hex(data))],
        )
        return wrapper  # type: ignore[no-any-return]

    if path == "/header":
        # Response header value from the query (percent-decoded as UTF-8).
        value = q.get("value", "")
        start_response(
            "200 OK",
            [("Content-Type", "text/plain"), ("X-Echo", value), ("Content-Length", "2")],
        )
        return [b"ok"]

    if path == "/status":
        code = q.get("code", "204")
        reason = {"204": "No Content", "304": "Not Modified", "404": "Not Found"}.get(code, "X")
        if code in ("204", "304"):
            start_response("%s %s" % (code, reason), [])
            return []
        return _text(start_response, "status " + code, "%s %s" % (code, reason))

    return _text(start_response, "not found: " + path, "404 Not Found")


application = validator(probe)
raw = probe
