"""Request facts shared by the WSGI environ and the ASGI scope.

Mongrel2 gives no server name or port and leaves the path raw, so these
rules live in one place: SCRIPT_NAME from the route's PATTERN (its regex part
stripped), PATH_INFO the percent-decoded rest, SERVER_NAME/PORT from Host.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from m2gate.protocol.messages import Message

# Mongrel2 route patterns are a literal prefix followed by pattern syntax.
_PATTERN_META = re.compile(r"[(\[%.*+?^$]")
_HOST_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]*)(?::([0-9]{1,5}))?\Z")


@dataclass(frozen=True)
class EnvironDefaults:
    """The settings that shape the environ / scope."""

    server_name: str = "localhost"
    server_port: str = ""
    trust_x_forwarded_for: bool = False


@functools.lru_cache(maxsize=256)
def route_prefix(pattern: str | None) -> str:
    """The literal part of a route pattern, without a trailing slash."""
    if not pattern:
        return ""
    match = _PATTERN_META.search(pattern)
    literal = pattern[: match.start()] if match else pattern
    return literal.rstrip("/")


def split_path(msg: Message) -> tuple[str, str]:
    """``(SCRIPT_NAME, PATH_INFO)``, both percent-decoded latin-1 strings."""
    path = msg.path
    decoded = unquote_to_bytes(path).decode("latin-1") if "%" in path else path
    prefix = route_prefix(msg.header("PATTERN"))
    if (
        prefix
        and decoded.startswith(prefix)
        and decoded[len(prefix) : len(prefix) + 1] in ("", "/")
    ):
        return prefix, decoded[len(prefix) :]
    return "", decoded


def server_address(msg: Message, scheme: str, defaults: EnvironDefaults) -> tuple[str, str]:
    """``(SERVER_NAME, SERVER_PORT)`` from the Host header, else the defaults."""
    host = msg.header("host")
    key = (host, scheme, defaults.server_name, defaults.server_port)
    found = _ADDRESSES.get(key)
    if found is None:
        found = _parse_host(host, scheme, defaults)
        if len(_ADDRESSES) >= 1024:
            _ADDRESSES.clear()  # bounded: Host is client-chosen
        _ADDRESSES[key] = found
    return found


def _parse_host(host: str | None, scheme: str, defaults: EnvironDefaults) -> tuple[str, str]:
    default_port = defaults.server_port or ("443" if scheme == "https" else "80")
    if host:
        match = _HOST_RE.match(host.strip())
        if match and match.group(1):
            return match.group(1), match.group(2) or default_port
    return defaults.server_name, default_port


# Every request parses the same few Host values the same way.
_ADDRESSES: dict[tuple[str | None, str, str, str], tuple[str, str]] = {}


def remote_addr(msg: Message, defaults: EnvironDefaults) -> str:
    """Mongrel2's REMOTE_ADDR, or X-Forwarded-For's first hop when trusted."""
    if defaults.trust_x_forwarded_for:
        xff = msg.header("x-forwarded-for")
        if xff:
            return xff.split(",")[0].strip()
    return msg.header("REMOTE_ADDR") or ""


def is_client_header(name: str) -> bool:
    """Whether header ``name`` came from the client (and may reach the app).

    Mongrel2's own keys are uppercase; names with ``_`` would alias ``-``
    names in the environ; ``x-mongrel2-*`` upload headers can be forged.
    """
    return name.lower() == name and "_" not in name and not name.startswith("x-mongrel2-")


def client_headers(msg: Message) -> list[tuple[str, str]]:
    """Client headers (Mongrel2 lowercases them) with repeats joined by ", "."""
    return [
        (name, value if isinstance(value, str) else ", ".join(value))
        for name, value in msg.headers.items()
        if is_client_header(name)
    ]
