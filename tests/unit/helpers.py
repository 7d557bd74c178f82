"""Build raw Mongrel2 messages the way Mongrel2 writes them, for the unit tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from m2gate.protocol import tnetstring

SENDER = b"f400bf85-4538-4f7a-8908-67e313d515c2"

RawValue = str | bytes | Sequence[str | bytes]


def request_headers(
    method: str = "GET", path: str = "/hello", /, **extra: RawValue
) -> dict[str, RawValue]:
    """A realistic header dict (names Mongrel2 really sends) for one request."""
    headers: dict[str, RawValue] = {
        "PATH": path,
        "x-forwarded-for": "127.0.0.1",
        "host": "localhost:6767",
        "user-agent": "curl/8.5.0",
        "accept": "*/*",
        "METHOD": method,
        "VERSION": "HTTP/1.1",
        "URI": path,
        "PATTERN": "/",
        "URL_SCHEME": "http",
        "REMOTE_ADDR": "127.0.0.1",
    }
    headers.update(extra)
    return headers


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


def netstring(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


def tnet_headers(headers: Mapping[str, RawValue]) -> bytes:
    """Headers as Mongrel2's ``protocol='tnetstring'`` writes them (binary safe)."""
    out: dict[bytes, bytes | list[bytes]] = {}
    for name, value in headers.items():
        if isinstance(value, (str, bytes)):
            out[_as_bytes(name)] = _as_bytes(value)
        else:
            out[_as_bytes(name)] = [_as_bytes(v) for v in value]
    return tnetstring.dumps(out)


def _json_str(value: str | bytes) -> bytes:
    # Mongrel2 only escapes '"' and '\\'; everything else goes out raw.
    raw = _as_bytes(value).replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + raw + b'"'


def json_headers(headers: Mapping[str, RawValue]) -> bytes:
    """Headers as Mongrel2's default ``protocol='json'`` writes them, as a netstring."""
    items = []
    for name, value in headers.items():
        if isinstance(value, (str, bytes)):
            encoded = _json_str(value)
        else:
            encoded = b"[" + b",".join(_json_str(v) for v in value) + b"]"
        items.append(_json_str(name) + b":" + encoded)
    return netstring(b"{" + b",".join(items) + b"}")


def message(
    headers: Mapping[str, RawValue] | bytes,
    body: bytes = b"",
    *,
    path: bytes = b"/hello",
    conn_id: int = 7,
    sender: bytes = SENDER,
    json: bool = False,
) -> bytes:
    """``SENDER SP CONN_ID SP PATH SP <headers><len>:BODY,``; raw bytes headers pass as is."""
    if isinstance(headers, bytes):
        head = headers
    elif json:
        head = json_headers(headers)
    else:
        head = tnet_headers(headers)
    return b"%s %d %s %s%s" % (sender, conn_id, path, head, netstring(body))


def control(kind: str, conn_id: int = 7, json: bool = False, **extra: RawValue) -> bytes:
    """A ``@*`` control message as Mongrel2 sends it (disconnect, credits, ...)."""
    headers: dict[str, RawValue] = {"METHOD": "JSON", **extra}
    body = b'{"type":"%s"}' % kind.encode("ascii")
    return message(headers, body, path=b"@*", conn_id=conn_id, json=json)
