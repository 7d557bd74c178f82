"""PEP 3333 adapter: a Mongrel2 request in, a framed HTTP response out."""

from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import IO, Any

from m2gate.adapters.accesslog import AccessLogger
from m2gate.adapters.common import (
    EnvironDefaults,
    is_client_header,
    remote_addr,
    server_address,
    split_path,
)
from m2gate.conn.connection import Output
from m2gate.protocol.errors import ClientDisconnected, LocalProtocolError, RemoteProtocolError
from m2gate.protocol.http import SERVER_HEADER, Response, request_framing
from m2gate.protocol.messages import Message

log = logging.getLogger("m2gate.wsgi")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], None]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_SPECIAL = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}
# Header name -> environ key, "" for names the app must not see.
_ENVIRON_KEYS: dict[str, str] = {}
_APP_LOG = logging.getLogger("m2gate.app")


def _environ_key(name: str) -> str:
    if not is_client_header(name):
        key = ""
    else:
        key = _SPECIAL.get(name) or "HTTP_" + name.upper().replace("-", "_")
    if len(_ENVIRON_KEYS) >= 4096:
        _ENVIRON_KEYS.clear()  # bounded: names are client-chosen
    _ENVIRON_KEYS[name] = key
    return key


class FileWrapper:
    """``wsgi.file_wrapper``: iterate a file in blocks; close() closes the file."""

    def __init__(self, filelike: IO[bytes], blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            block = read(self.blksize)
            if not block:
                return
            yield block


class ErrorStream:
    """``wsgi.errors``: text written by the app goes to the ``m2gate.app`` log."""

    __slots__ = ("_partial",)

    def __init__(self) -> None:
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            _APP_LOG.error("%s", line)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._partial:
            _APP_LOG.error("%s", self._partial)
            self._partial = ""


class WSGIHandler:
    """Runs one WSGI app for requests handed over by the runtime."""

    def __init__(
        self,
        app: WSGIApp,
        defaults: EnvironDefaults,
        multithread: bool,
        multiprocess: bool,
        access_log: AccessLogger | None = None,
    ) -> None:
        self.app = app
        self.defaults = defaults
        self.access_log = access_log
        self.base = {
            "wsgi.version": (1, 0),
            "wsgi.multithread": multithread,
            "wsgi.multiprocess": multiprocess,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": FileWrapper,
            "SERVER_SOFTWARE": SERVER_HEADER.decode("ascii"),
        }

    def environ(self, msg: Message, body: IO[bytes]) -> dict[str, Any]:
        """Build the PEP 3333 environ for ``msg`` with ``body`` as wsgi.input."""
        headers = msg.headers
        get = headers.get
        env: dict[str, Any] = self.base.copy()
        # Mongrel2's own (uppercase) keys come once, as strings; a list (a
        # repeated key, never seen from Mongrel2) takes the general path.
        values: tuple[Any, ...] = (
            get("METHOD"),
            get("QUERY", ""),
            get("VERSION", "HTTP/1.0"),
            get("PATTERN", ""),
            get("URL_SCHEME", "http"),
        )
        method, query, version, pattern, scheme = values
        if not (
            type(method) is str
            and type(query) is str
            and type(version) is str
            and type(pattern) is str
            and type(scheme) is str
        ):
            header = msg.header
            method = header("METHOD")
            query = header("QUERY")
            version = header("VERSION")
            pattern = header("PATTERN")
            scheme = header("URL_SCHEME")
        scheme = scheme or "http"
        script_name, path_info = split_path(msg)
        server_name, server_port = server_address(msg, scheme, self.defaults)
        if method == "WEBSOCKET_HANDSHAKE":
            method = "GET"  # Mongrel2's name for an upgrade; the client sent GET (RFC 6455)
        env["REQUEST_METHOD"] = method or ""
        env["SCRIPT_NAME"] = script_name
        env["PATH_INFO"] = path_info
        env["QUERY_STRING"] = query or ""
        env["SERVER_NAME"] = server_name
        env["SERVER_PORT"] = server_port
        env["SERVER_PROTOCOL"] = version or "HTTP/1.0"
        env["REMOTE_ADDR"] = remote_addr(msg, self.defaults)
        env["wsgi.url_scheme"] = scheme
        env["wsgi.input"] = body
        env["wsgi.errors"] = ErrorStream()
        env["m2gate.sender"] = msg.sender
        env["m2gate.conn_id"] = msg.conn_id
        env["m2gate.pattern"] = pattern or ""
        keys = _ENVIRON_KEYS
        for name, value in headers.items():
            key = keys.get(name)
            if key is None:
                key = _environ_key(name)
            if key:
                env[key] = value if type(value) is str else ", ".join(value)
        if "CONTENT_LENGTH" not in env and msg.body:
            env["CONTENT_LENGTH"] = str(len(msg.body))
        return env

    def __call__(
        self,
        msg: Message,
        out: Output,
        body: IO[bytes] | None = None,
        content_length: int | None = None,
    ) -> None:
        """Serve ``msg``; always finishes ``out`` (and closes the app's iterable).

        ``body`` and ``content_length`` replace the inline body for uploads
        that Mongrel2 spooled to a file.
        """
        started = time.perf_counter()
        version, keep_alive = request_framing(msg)
        resp = Response(msg.method, version, keep_alive, SERVER_HEADER)
        env = self.environ(msg, body if body is not None else io.BytesIO(msg.body))
        if content_length is not None:
            env["CONTENT_LENGTH"] = str(content_length)
        call = _Call(resp, out)
        result: Iterable[bytes] | None = None
        try:
            result = self.app(env, call.start_response)
            call.run(result)
        except ClientDisconnected:
            log.info("client %s:%s went away during the response", msg.sender, msg.conn_id)
            out.finish(close=True)
        except BaseException as exc:
            # SystemExit, KeyboardInterrupt & co. from the app are its errors
            # too: a 500, and the thread serving it goes on.
            call.fail(exc, msg)
        finally:
            if result is not None and hasattr(result, "close"):
                try:
                    result.close()
                except BaseException:
                    log.exception("close() of the app's iterable failed")
                    if not out.done:
                        call.fail(None, msg)
            if self.access_log is not None:
                self.access_log.log(
                    msg, resp.status_code, call.nbytes, time.perf_counter() - started
                )


class _Call:
    """State of one app call: start_response, write() and the body loop."""

    __slots__ = ("headers", "nbytes", "out", "resp", "status")

    def __init__(self, resp: Response, out: Output) -> None:
        self.resp = resp
        self.out = out
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.nbytes = 0  # body bytes sent, for the access log

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.resp.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self.status is not None:
            raise AssertionError("start_response() called twice without exc_info")
        if not isinstance(status, str):
            raise TypeError("status must be a str, got %r" % (status,))
        if not isinstance(headers, list):
            raise TypeError("headers must be a list, got %r" % (headers,))
        self.status = status
        self.headers = headers
        return self.write

    def _head(self, content_length: int | None = None) -> bytes:
        if self.status is None:
            raise AssertionError("the app returned data before calling start_response()")
        return self.resp.head(self.status, self.headers, content_length)

    def write(self, data: bytes) -> None:
        """PEP 3333's write(): sent before it returns (as far as we can tell)."""
        if not isinstance(data, bytes):
            raise TypeError("write() takes bytes, got %s" % type(data).__name__)
        if not self.resp.head_sent:
            self.out.write(self._head())
        framed = self.resp.body(data)
        if framed:
            self.nbytes += len(data)
        self.out.write(framed)

    def run(self, result: Iterable[bytes]) -> None:
        resp = self.resp
        if isinstance(result, (list, tuple)) and not resp.head_sent:
            # The whole body is here: one message, with a Content-Length.
            for chunk in result:
                if not isinstance(chunk, bytes):
                    raise TypeError("the app yielded %s, not bytes" % type(chunk).__name__)
            body = b"".join(result)
            payload = self._head(len(body)) + resp.body(body) + resp.end()
            self.nbytes = 0 if resp.method == "HEAD" else len(body)
            self.out.finish(payload, close=not resp.keep_alive)
            return
        for chunk in result:
            if not isinstance(chunk, bytes):
                raise TypeError("the app yielded %s, not bytes" % type(chunk).__name__)
            if not chunk:
                continue
            if not resp.head_sent:
                self.out.write(self._head())
            framed = resp.body(chunk)
            if framed:
                self.nbytes += len(chunk)
            self.out.write(framed)
        tail = b"" if resp.head_sent else self._head(0)
        tail += resp.end()
        self.out.finish(tail, close=not resp.keep_alive)

    def fail(self, exc: BaseException | None, msg: Message) -> None:
        """500 if nothing was sent yet; otherwise the connection is cut."""
        status = "500 Internal Server Error"
        if exc is not None:
            if isinstance(exc, RemoteProtocolError):
                log.warning("bad request %s %s: %s", msg.method, msg.path, exc)
                status = "400 Bad Request"
            elif isinstance(exc, LocalProtocolError):
                log.error("invalid response for %s %s: %s", msg.method, msg.path, exc)
            else:
                log.error("error in app for %s %s", msg.method, msg.path, exc_info=sys.exc_info())
        if self.out.done:
            return
        payload = self.resp.error(status)  # sets status_code, for the access log
        if payload is None:
            self.out.finish(close=True)  # the head went out: cut the connection
            return
        self.nbytes = 0 if self.resp.method == "HEAD" else len(status) - 3
        self.out.finish(payload, close=not self.resp.keep_alive)
