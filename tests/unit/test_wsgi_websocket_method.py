"""A WSGI app sees a websocket upgrade as the GET its client sent."""

from __future__ import annotations

import io
from pathlib import Path

from m2gate.adapters.common import EnvironDefaults
from m2gate.adapters.wsgi import WSGIHandler
from m2gate.protocol.messages import WebSocketHandshake, parse_message

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def test_upgrade_is_a_get_with_its_upgrade_header() -> None:
    """Mongrel2 renames the method WEBSOCKET_HANDSHAKE (captured message); PEP 3333 wants GET."""
    for name in ("tnetstring_ws_handshake.bin", "json_ws_handshake.bin"):
        msg = parse_message((CORPUS / name).read_bytes())
        assert isinstance(msg, WebSocketHandshake)
        handler = WSGIHandler(lambda e, s: [], EnvironDefaults(), True, False)
        env = handler.environ(msg, io.BytesIO(b""))
        assert env["REQUEST_METHOD"] == "GET"
        assert env["HTTP_UPGRADE"] == "websocket"
