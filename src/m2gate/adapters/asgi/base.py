"""What the ASGI adapter's parts share: the types, interface detection, scopes.

The scope follows the WSGI environ's mapping rules (:mod:`m2gate.adapters.common`).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any, Literal

from m2gate.adapters.common import (
    EnvironDefaults,
    is_client_header,
    remote_addr,
    server_address,
    split_path,
)
from m2gate.protocol.messages import Message

log = logging.getLogger("m2gate.asgi")

Scope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
BodySource = AsyncIterator[bytes]

# 2.4: ``send`` raises an OSError once the client is gone; ``http.disconnect``
# is delivered through ``receive`` as well, for apps that listen for it.
ASGI_INFO = {"version": "3.0", "spec_version": "2.4"}


def is_asgi_app(app: Any) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(app):
        return True
    call = getattr(app, "__call__", None)  # noqa: B004 - the method itself is inspected
    return call is not None and inspect.iscoroutinefunction(call)


def resolve_interface(interface: Literal["auto", "wsgi", "asgi"], app: Any) -> str:
    """``"asgi"`` or ``"wsgi"``: the setting, or what ``app`` looks like."""
    if interface != "auto":
        return interface
    return "asgi" if is_asgi_app(app) else "wsgi"


@functools.lru_cache(maxsize=256)
def status_line(code: int) -> str:
    try:
        return "%d %s" % (code, HTTPStatus(code).phrase)
    except ValueError:
        return "%d Unknown" % code


def latin1_to_utf8(text: str) -> str:
    if text.isascii():
        return text  # nearly every path: nothing to re-decode
    return text.encode("latin-1").decode("utf-8", "replace")


# Header name -> its bytes in the scope, b"" for names the app must not see
# (the rules of adapters.common.is_client_header), so each name is checked and
# encoded once, not per request.
_SCOPE_NAMES: dict[str, bytes] = {}


def _scope_name(name: str) -> bytes:
    key = name.encode("latin-1") if is_client_header(name) else b""
    if len(_SCOPE_NAMES) >= 4096:
        _SCOPE_NAMES.clear()  # bounded: names are client-chosen
    _SCOPE_NAMES[name] = key
    return key


def _scope_headers(msg: Message) -> list[tuple[bytes, bytes]]:
    """The client headers (see :func:`~m2gate.adapters.common.client_headers`) as bytes."""
    names = _SCOPE_NAMES
    out: list[tuple[bytes, bytes]] = []
    for name, value in msg.headers.items():
        key = names.get(name)
        if key is None:
            key = _scope_name(name)
        if key:
            text = value if type(value) is str else ", ".join(value)
            out.append((key, text.encode("latin-1")))
    return out


def _base_scope(
    kind: str,
    msg: Message,
    scheme: str,
    http_scheme: str,
    defaults: EnvironDefaults,
    state: dict[str, Any],
) -> dict[str, Any]:
    # split_path gives WSGI's latin-1 strings; ASGI wants the UTF-8 characters.
    root_path, path = split_path(msg)
    root_path, path = latin1_to_utf8(root_path), latin1_to_utf8(path)
    server_name, server_port = server_address(msg, http_scheme, defaults)
    version = msg.header("VERSION") or "HTTP/1.0"
    client = remote_addr(msg, defaults)
    return {
        "type": kind,
        "asgi": dict(ASGI_INFO),
        "http_version": version[5:] if version.startswith("HTTP/") else "1.0",
        "scheme": scheme,
        # ASGI wants the full path with root_path in front of it.
        "path": root_path + path,
        "raw_path": msg.path.encode("latin-1"),
        "root_path": root_path,
        "query_string": (msg.header("QUERY") or "").encode("latin-1"),
        "headers": _scope_headers(msg),
        "client": (client, 0) if client else None,
        "server": (
            server_name,
            int(server_port) if server_port.isascii() and server_port.isdigit() else None,
        ),
        "state": dict(state),
        "extensions": {},
    }


def http_scope(msg: Message, defaults: EnvironDefaults, state: dict[str, Any]) -> dict[str, Any]:
    """The ASGI ``http`` scope of a Mongrel2 request."""
    scheme = msg.header("URL_SCHEME") or "http"
    scope = _base_scope("http", msg, scheme, scheme, defaults, state)
    scope["method"] = msg.method
    return scope


def websocket_scope(
    msg: Message, defaults: EnvironDefaults, state: dict[str, Any]
) -> dict[str, Any]:
    """The ASGI ``websocket`` scope of a Mongrel2 ``WEBSOCKET_HANDSHAKE``."""
    http_scheme = msg.header("URL_SCHEME") or "http"
    scheme = "wss" if http_scheme == "https" else "ws"
    scope = _base_scope("websocket", msg, scheme, http_scheme, defaults, state)
    offered = msg.header("sec-websocket-protocol") or ""
    scope["subprotocols"] = [p.strip() for p in offered.split(",") if p.strip()]
    scope["extensions"] = {"websocket.http.response": {}}
    return scope


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return "%s: %s" % (type(exc).__name__, text[-1]) if text else type(exc).__name__


def last_line(message: Any) -> str:
    """Starlette puts a whole traceback in ``message``: its last line says what failed."""
    lines = [ln.strip() for ln in str(message or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "no reason given"
