"""ASGI 3 adapter: ``http``, ``websocket`` and ``lifespan`` over Mongrel2.

The scope follows the WSGI environ's mapping rules (:mod:`m2gate.adapters.common`),
responses go through the same framer (:class:`m2gate.protocol.http.Response`)
and the same coalescing writer, so an ASGI app gets the keep-alive, chunking
and HEAD behaviour a WSGI app gets. The runtime (:mod:`m2gate.runtime.asyncio`)
owns the connections; this module only speaks ASGI for one of them at a time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from m2gate.adapters.asgi.base import (
    ASGIApp,
    http_scope,
    is_asgi_app,
    resolve_interface,
    websocket_scope,
)

if TYPE_CHECKING:
    from m2gate.adapters.asgi.http import HTTPCycle
    from m2gate.adapters.asgi.lifespan import Lifespan, LifespanError
    from m2gate.adapters.asgi.websocket import TRY_AGAIN_LATER, WebSocketSession

# Imported on first use: a WSGI server (which only asks resolve_interface)
# starts without asyncio and the ASGI machinery.
_LAZY = {
    "HTTPCycle": "http",
    "Lifespan": "lifespan",
    "LifespanError": "lifespan",
    "TRY_AGAIN_LATER": "websocket",
    "WebSocketSession": "websocket",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    value = getattr(importlib.import_module("m2gate.adapters.asgi." + module), name)
    globals()[name] = value
    return value


__all__ = [
    "TRY_AGAIN_LATER",
    "ASGIApp",
    "HTTPCycle",
    "Lifespan",
    "LifespanError",
    "WebSocketSession",
    "http_scope",
    "is_asgi_app",
    "resolve_interface",
    "websocket_scope",
]
