"""A websocket chat on a raw Mongrel2 handler: every message goes to everyone.

Not a WSGI or ASGI app: one loop receives from Mongrel2 and answers with the
``m2gate.handler`` API. ``GET /`` serves a small page; its websocket joins the
room, and each text message is broadcast, encoded once, to every connected
client with ``deliver_websocket`` (one reply message per 128 connections).

Route ``/`` of a Mongrel2 host to a handler, e.g.::

    Handler(send_spec='tcp://127.0.0.1:9997', send_ident='chat',
            recv_spec='tcp://127.0.0.1:9996', recv_ident='', protocol='tnetstring')

then run ``python examples/chat.py --send-spec tcp://127.0.0.1:9997
--recv-spec tcp://127.0.0.1:9996`` and open the page in two browser tabs
(``python examples/chat.py --demo`` starts a Mongrel2 of its own).
SIGTERM or Ctrl-C closes every websocket with code 1001 and exits.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from m2gate.handler import OP_PONG, Connection, Request, WebSocketError
from m2gate.protocol.websocket import (
    GOING_AWAY,
    BinaryMessage,
    Close,
    Ping,
    TextMessage,
    encode_close,
)

log = logging.getLogger("chat")

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>m2gate chat</title></head>
<body>
<h1>Chat through Mongrel2</h1>
<p id="status">connecting...</p>
<ul id="log"></ul>
<form id="f"><input id="msg" autocomplete="off" autofocus> <button>Send</button></form>
<script>
const scheme = location.protocol === "https:" ? "wss://" : "ws://";
const ws = new WebSocket(scheme + location.host + "/");
const log = document.getElementById("log");
const statusLine = document.getElementById("status");
ws.onopen = () => { statusLine.textContent = "connected"; };
ws.onmessage = (e) => {
  const li = document.createElement("li"); li.textContent = e.data; log.appendChild(li);
};
// The server stopped (close 1001), Mongrel2 went away (1006), or the network
// did: say so, instead of a page that silently stops working.
ws.onclose = (e) => {
  statusLine.textContent = "disconnected: the server went away (code " + e.code +
    (e.reason ? ", " + e.reason : "") + "). Reload the page to reconnect.";
  document.getElementById("msg").disabled = true;
  document.querySelector("#f button").disabled = true;
};
document.getElementById("f").onsubmit = (e) => {
  e.preventDefault();
  const box = document.getElementById("msg"); ws.send(box.value); box.value = "";
};
</script>
</body></html>
"""


class ChatRoom:
    """Who is connected, per Mongrel2 sender (connection ids are only unique per sender)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.members: dict[str, set[int]] = {}

    def handle(self, req: Request) -> None:
        if req.is_disconnect:
            self.leave(req)
        elif req.is_websocket_handshake:
            self.conn.accept_websocket(req)
            self.members.setdefault(req.sender, set()).add(req.conn_id)
            log.info("%s:%d joined", req.sender, req.conn_id)
        elif req.is_websocket:
            self.frame(req)
        elif req.method in ("GET", "HEAD") and req.path == "/":
            self.conn.reply_http(req, PAGE, headers={"Content-Type": "text/html; charset=utf-8"})
        else:
            self.conn.reply_http(
                req, "Not Found\n", 404, "Not Found", {"Content-Type": "text/plain"}
            )

    def frame(self, req: Request) -> None:
        try:
            event = self.conn.websocket_event(req)
        except WebSocketError as exc:
            log.info("%s:%d broke the protocol: %s", req.sender, req.conn_id, exc)
            self.conn.close_websocket(req, exc.code)
            self.leave(req)
            return
        if isinstance(event, TextMessage):
            self.broadcast(req.sender, event.data)
        elif isinstance(event, BinaryMessage):
            self.broadcast(req.sender, event.data.decode("utf-8", "replace"))
        elif isinstance(event, Ping):
            self.conn.reply_websocket(req, event.payload, OP_PONG)
        elif isinstance(event, Close):
            self.conn.close_websocket(req)
            self.leave(req)

    def broadcast(self, sender: str, text: str) -> None:
        ids = sorted(self.members.get(sender, ()))
        self.conn.deliver_websocket(sender, ids, text)

    def leave(self, req: Request) -> None:
        room = self.members.get(req.sender)
        if room is not None and req.conn_id in room:
            room.discard(req.conn_id)
            log.info("%s:%d left", req.sender, req.conn_id)

    def close_all(self) -> None:
        """Tell every client we are going away, then close their connections."""
        for sender, ids in self.members.items():
            self.conn.deliver(sender, sorted(ids), encode_close(GOING_AWAY, "server stopping"))
            self.conn.close_many(sender, sorted(ids))
        self.members.clear()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Websocket chat on a raw Mongrel2 handler.")
    parser.add_argument("--send-spec", help="the handler's send_spec")
    parser.add_argument("--recv-spec", help="the handler's recv_spec")
    parser.add_argument("--ident", default=None, help="our ZeroMQ identity (default: random)")
    parser.add_argument(
        "--demo", action="store_true", help="start a Mongrel2 of our own on a free port"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.demo:
        import tempfile
        from pathlib import Path

        from m2gate.testing.mongrel2 import Mongrel2

        with tempfile.TemporaryDirectory() as tmp, Mongrel2(Path(tmp) / "mongrel2") as m2:
            log.info("open %s/ in two browser tabs", m2.url)
            return serve(m2.handler.send_spec, m2.handler.recv_spec, args.ident)
    if not (args.send_spec and args.recv_spec):
        parser.error("--send-spec and --recv-spec are required (or --demo)")
    return serve(args.send_spec, args.recv_spec, args.ident)


def serve(send_spec: str, recv_spec: str, ident: str | None) -> int:
    """Run the chat until SIGTERM or Ctrl-C."""

    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with Connection(send_spec, recv_spec, ident) as conn:
        room = ChatRoom(conn)
        log.info("chat handler on %s / %s", send_spec, recv_spec)
        while not stopping:
            req = conn.recv(timeout=0.25)
            if isinstance(req, Request):
                room.handle(req)
        room.close_all()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
