"""Write raw Mongrel2 handlers in Python: receive, reply, broadcast.

For programs that are not WSGI or ASGI apps: a chat hub that sends one
message to every connected websocket, a long-poll server holding thousands
of idle connections, a push service. This is what Mongrel2's own Python
library and m2wsgi offered, redone on m2gate's sans-IO core, so parsing
(:mod:`m2gate.protocol.messages`), reply encoding including the 128-ids
split and ``ctl`` replies (:mod:`m2gate.protocol.replies`), HTTP framing and
keep-alive rules (:mod:`m2gate.protocol.http`) and websocket frames
(:mod:`m2gate.protocol.websocket`) are the ones the server itself uses.

    conn = Connection("tcp://127.0.0.1:9997", "tcp://127.0.0.1:9996")
    while True:
        req = conn.recv()
        if isinstance(req, Request) and not req.is_disconnect:
            conn.reply_http(req, b"Hello\\n")

See docs/handler-api.md and examples/chat.py.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import zmq

from m2gate.protocol import replies
from m2gate.protocol.http import SERVER_HEADER, Response, request_framing
from m2gate.protocol.intake import parse_or_drop
from m2gate.protocol.messages import (
    Credits,
    Disconnect,
    Headers,
    Message,
    UnknownControl,
    UploadDone,
    UploadStart,
    WebSocketFrame,
    WebSocketHandshake,
)
from m2gate.protocol.websocket import (
    NORMAL,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Close,
    Event,
    MessageAssembler,
    WebSocketError,
    encode_close,
    encode_frame,
    handshake_response,
)
from m2gate.transports.zmq_common import PubSink, open_pub

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Connection",
    "ControlEvent",
    "Credits",
    "Request",
    "UnknownControl",
    "WebSocketError",
]

log = logging.getLogger("m2gate.handler")

# What recv() returns besides requests: flow-control credits and unknown control types.
ControlEvent = Credits | UnknownControl

Data = bytes | str
HeaderList = Mapping[str, str] | Iterable[tuple[str, str]]


def _bytes(data: Data) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


def _ident(value: str | bytes) -> bytes:
    raw = value.encode("ascii") if isinstance(value, str) else value
    return replies.check_uuid(raw)


class Request:
    """One message from a client connection: an HTTP request, a websocket frame
    or handshake, an upload notice, or the notice that the client went away.

    ``message`` is the parsed protocol event (its class says which); the
    attributes here are the ones handlers use all the time.
    """

    __slots__ = ("message",)

    def __init__(self, message: Message) -> None:
        self.message = message

    @property
    def sender(self) -> str:
        """The handler ident Mongrel2 sent this from (the uuid to reply to)."""
        return self.message.sender

    @property
    def conn_id(self) -> int:
        return self.message.conn_id

    @property
    def key(self) -> tuple[str, int]:
        """``(sender, conn_id)``: identifies the client connection."""
        return self.message.key

    @property
    def path(self) -> str:
        """The raw path, still percent-encoded, without the query (``@*`` for control)."""
        return self.message.path

    @property
    def headers(self) -> Headers:
        """Client headers (lowercase names) plus Mongrel2's own (``METHOD``, ``QUERY``...)."""
        return self.message.headers

    @property
    def body(self) -> bytes:
        return self.message.body

    @property
    def method(self) -> str:
        return self.message.method

    def header(self, name: str, default: str | None = None) -> str | None:
        """First value of header ``name`` (client header names are lowercase)."""
        return self.message.header(name, default)

    @property
    def is_disconnect(self) -> bool:
        """The client went away: forget this connection id."""
        return isinstance(self.message, Disconnect)

    @property
    def is_websocket_handshake(self) -> bool:
        """An upgrade request: answer with :meth:`Connection.accept_websocket`."""
        return isinstance(self.message, WebSocketHandshake)

    @property
    def is_websocket(self) -> bool:
        """A websocket frame; :attr:`opcode` says which kind."""
        return isinstance(self.message, WebSocketFrame)

    @property
    def is_upload(self) -> bool:
        """A big body announced in Mongrel2's temp store (``x-mongrel2-upload-*``)."""
        return isinstance(self.message, (UploadStart, UploadDone))

    @property
    def opcode(self) -> int | None:
        """The websocket frame's opcode (``OP_TEXT``, ``OP_PING``...), else None."""
        msg = self.message
        return msg.opcode if isinstance(msg, WebSocketFrame) else None

    def should_close(self) -> bool:
        """True if the connection must end after the reply (HTTP/1.0, ``Connection: close``)."""
        if self.is_disconnect:
            return True
        return not request_framing(self.message)[1]

    def json(self) -> Any:
        """The body parsed as JSON (Mongrel2's ``@*`` control bodies, JSON APIs)."""
        return json.loads(self.body)

    def __repr__(self) -> str:
        return "<Request %s %s:%d %s %s>" % (
            type(self.message).__name__,
            self.sender,
            self.conn_id,
            self.method,
            self.path,
        )


class Connection:
    """The two ZeroMQ sockets of one Mongrel2 handler, and the replies you send on them.

    ``send_spec``/``recv_spec`` are the handler's addresses as written in
    Mongrel2's config (Mongrel2 sends on ``send_spec``, we receive there).
    ``ident`` is our socket identity (default: a fresh UUID). Replies are
    addressed to the request's sender unless ``recv_ident`` names the
    handler's ``recv_ident``. ``context`` may be a shared ``zmq.Context`` or a
    ``zmq.green.Context`` (gevent programs); not a ``zmq.asyncio`` one.

    :meth:`recv` must be called from one thread only; every sending method is
    safe from any thread (one lock around the PUB socket, one whole message
    at a time, so replies never interleave).
    """

    def __init__(
        self,
        send_spec: str,
        recv_spec: str,
        ident: str | None = None,
        *,
        recv_ident: str | None = None,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.send_spec = send_spec
        self.recv_spec = recv_spec
        self.ident = ident or str(uuid.uuid4())
        self.reply_ident = _ident(recv_ident) if recv_ident else None
        self._own_context = context is None
        self.context: zmq.Context[Any] = context if context is not None else zmq.Context()
        self._assemblers: dict[tuple[str, int], MessageAssembler] = {}
        identity = _ident(self.ident)
        # PUB first: a request we receive must find our reply path connected.
        self.resp = open_pub(self.context, recv_spec, identity, linger=1000)
        self._sink = PubSink(self.resp)
        self.reqs = self.context.socket(zmq.PULL)
        self.reqs.setsockopt(zmq.IDENTITY, identity)
        self.reqs.setsockopt(zmq.LINGER, 1000)
        self.reqs.connect(send_spec)
        self.closed = False

    # -- receiving ------------------------------------------------------------
    def recv(self, timeout: float | None = None) -> Request | ControlEvent | None:
        """The next message, or None after ``timeout`` seconds (None: wait forever).

        Malformed messages are logged and dropped. A disconnect comes back as a
        :class:`Request` whose ``is_disconnect`` is true.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is not None:
                left_ms = max(0, int((deadline - time.monotonic()) * 1000))
                if not self.reqs.poll(left_ms):
                    return None
            msg = parse_or_drop(self.reqs.recv(), log)
            if msg is None:
                continue
            if isinstance(msg, (Credits, UnknownControl)):
                return msg
            if isinstance(msg, Disconnect):
                self._assemblers.pop(msg.key, None)
            return Request(msg)

    def websocket_event(self, req: Request) -> Event | None:
        """Decode a websocket frame into a message or control event.

        Returns :class:`~m2gate.protocol.websocket.TextMessage`,
        ``BinaryMessage``, ``Ping``, ``Pong`` or ``Close``; None while a
        fragmented message is incomplete. Raises :class:`WebSocketError`
        (with the close ``code`` to send) on a protocol violation.
        """
        msg = req.message
        if not isinstance(msg, WebSocketFrame):
            raise ValueError("%r is not a websocket frame" % req)
        assembler = self._assemblers.get(msg.key)
        if assembler is None:
            assembler = self._assemblers[msg.key] = MessageAssembler()
        event = assembler.feed(msg.flags, msg.body)
        if isinstance(event, Close):
            self._assemblers.pop(msg.key, None)
        return event

    # -- sending --------------------------------------------------------------
    def send(self, messages: Sequence[bytes]) -> None:
        """Publish already-encoded reply messages (see :mod:`m2gate.protocol.replies`)."""
        self._sink.send(messages)

    def _uuid(self, req: Request) -> bytes:
        return replies.check_uuid(replies.reply_uuid(self.reply_ident or b"", req.sender))

    def reply(self, req: Request, data: Data) -> None:
        """Send raw bytes to the request's client (``str`` goes as UTF-8).

        Empty data is refused: to Mongrel2 it means "close the connection",
        which :meth:`close` says explicitly.
        """
        self.send([replies.reply(self._uuid(req), req.conn_id, _bytes(data))])

    def reply_http(
        self,
        req: Request,
        body: Data,
        code: int = 200,
        status: str = "OK",
        headers: HeaderList | None = None,
    ) -> bool:
        """A whole HTTP response with Content-Length; closes the connection when needed.

        The request's version and ``Connection`` header (or a ``Connection:
        close`` in ``headers``) decide keep-alive, as in the WSGI server;
        when the connection must end, the close reply follows the response.
        Returns whether the connection stays open.
        """
        raw = _bytes(body)
        items = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
        if req.method == "HEAD" and not any(k.lower() == "content-length" for k, _ in items):
            items.append(("Content-Length", str(len(raw))))  # what a GET would carry
        version, keep_alive = request_framing(req.message)
        resp = Response(req.method, version, keep_alive, SERVER_HEADER)
        payload = resp.head("%d %s" % (code, status), items, len(raw)) + resp.body(raw) + resp.end()
        uuid_ = self._uuid(req)
        messages = [replies.reply(uuid_, req.conn_id, payload)]
        if not resp.keep_alive:
            messages += replies.close(uuid_, [req.conn_id])
        self.send(messages)
        return resp.keep_alive

    def deliver(self, uuid: str | bytes, conn_ids: Iterable[int], data: Data) -> None:
        """The same bytes to many connections (one message per 128 ids)."""
        ids = list(conn_ids)
        if ids:
            self.send(replies.deliver(_ident(uuid), ids, _bytes(data)))

    def accept_websocket(
        self,
        req: Request,
        subprotocol: str | None = None,
        headers: Iterable[tuple[str, str]] | None = None,
    ) -> None:
        """Answer a handshake with ``101 Switching Protocols`` (Mongrel2 leaves it to us)."""
        msg = req.message
        if not isinstance(msg, WebSocketHandshake):
            raise ValueError("%r is not a websocket handshake" % req)
        self.reply(req, handshake_response(msg.accept, subprotocol, list(headers or ())))

    def reply_websocket(self, req: Request, data: Data, opcode: int | None = None) -> None:
        """One websocket frame to the request's client (default: text for str, else binary)."""
        self.reply(req, _frame(data, opcode))

    def deliver_websocket(
        self, uuid: str | bytes, conn_ids: Iterable[int], data: Data, opcode: int | None = None
    ) -> None:
        """One websocket frame, encoded once, to many clients: the broadcast."""
        self.deliver(uuid, conn_ids, _frame(data, opcode))

    def close_websocket(self, req: Request, code: int = NORMAL, reason: str = "") -> None:
        """Send a close frame, then close the connection."""
        uuid_ = self._uuid(req)
        self._assemblers.pop(req.key, None)
        frame = replies.reply(uuid_, req.conn_id, encode_close(code, reason))
        self.send([frame, *replies.close(uuid_, [req.conn_id])])

    def close(self, req: Request) -> None:
        """Close the client connection after what was already sent to it."""
        self._assemblers.pop(req.key, None)
        self.send(replies.close(self._uuid(req), [req.conn_id]))

    def close_many(self, uuid: str | bytes, conn_ids: Iterable[int]) -> None:
        """Close many connections (one message per 128 ids)."""
        ids = list(conn_ids)
        if ids:
            self.send(replies.close(_ident(uuid), ids))

    def ctl(
        self,
        req: Request,
        *,
        keep_alive: bool | None = None,
        credits: int | None = None,
        cancel: bool | None = None,
    ) -> None:
        """Mongrel2's extended ``ctl`` reply for one connection.

        ``keep_alive=True`` resets its idle timers (long-poll), ``credits=N``
        grants download credits, ``cancel=True`` closes without a disconnect
        notice. Encoded by the tested encoder: a malformed one crashes Mongrel2.
        """
        self.ctl_many(self._uuid(req), [req.conn_id], keep_alive, credits, cancel)

    def ctl_many(
        self,
        uuid: str | bytes,
        conn_ids: Iterable[int],
        keep_alive: bool | None = None,
        credits: int | None = None,
        cancel: bool | None = None,
    ) -> None:
        """:meth:`ctl` for many connections (one message per 128 ids)."""
        args: dict[str, Any] = {}
        if keep_alive is not None:
            args["keep-alive"] = keep_alive
        if credits is not None:
            args["credits"] = credits
        if cancel is not None:
            args["cancel"] = cancel
        if not args:
            raise ValueError("ctl needs keep_alive, credits or cancel")
        ids = list(conn_ids)
        if ids:
            self.send(replies.ctl(_ident(uuid), ids, args))

    # -- lifetime -------------------------------------------------------------
    def shutdown(self, linger: float = 1.0) -> None:
        """Close both sockets, giving queued replies ``linger`` seconds to leave."""
        if self.closed:
            return
        self.closed = True
        self.reqs.close(linger=0)
        self._sink.close(linger)
        if self._own_context:
            self.context.term()

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


def _frame(data: Data, opcode: int | None) -> bytes:
    if opcode is None:
        opcode = OP_TEXT if isinstance(data, str) else OP_BINARY
    return encode_frame(opcode, _bytes(data))
