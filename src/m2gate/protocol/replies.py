"""Encode what a handler PUBlishes back to Mongrel2.

``UUID SP <len>:ID ID ID, SP BODY``. Mongrel2 drops a whole message that names
more than ``limits.handler_targets`` ids (128 by default), so multi-target
replies are split. An empty BODY closes the client connection: it is only ever
produced by :func:`close`, never by accident.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from m2gate.protocol.tnetstring import dumps as _tnet_dumps

MAX_TARGETS = 128
_UUID_RE = re.compile(rb"[A-Za-z0-9-]+\Z")


def check_uuid(uuid: bytes) -> bytes:
    """Mongrel2 matches replies by this prefix; anything else is dropped by it."""
    if not _UUID_RE.match(uuid):
        raise ValueError("sender identity must match [A-Za-z0-9-]+, got %r" % uuid)
    return uuid


def reply_uuid(recv_ident: str | bytes, sender: str) -> bytes:
    """What a reply to ``sender``'s request starts with.

    Mongrel2's SUB only takes replies prefixed with its handler's
    ``recv_ident`` when that is set, else with the request's sender (the
    handler's ``send_ident``). Replies that answer no request (probes) pass
    the handler's own ``send_ident`` as ``sender``.
    """
    if recv_ident:
        return recv_ident if isinstance(recv_ident, bytes) else recv_ident.encode("latin-1")
    return sender.encode("latin-1")


def reply(uuid: bytes, conn_id: int, body: bytes) -> bytes:
    """One reply to one connection (the hot path). ``body`` must not be empty."""
    if not body:
        raise ValueError("an empty reply closes the connection; use close()")
    ident = b"%d" % conn_id
    return b"%s %d:%s, %s" % (uuid, len(ident), ident, body)


def _id_groups(conn_ids: Iterable[int], max_targets: int) -> list[bytes]:
    ids = [b"%d" % c for c in conn_ids]
    return [b" ".join(ids[i : i + max_targets]) for i in range(0, len(ids), max_targets)]


def deliver(
    uuid: bytes, conn_ids: Sequence[int], body: bytes, max_targets: int = MAX_TARGETS
) -> list[bytes]:
    """The same body to many connections, split at ``max_targets`` ids a message."""
    if not body:
        raise ValueError("an empty reply closes the connection; use close()")
    return [b"%s %d:%s, %s" % (uuid, len(g), g, body) for g in _id_groups(conn_ids, max_targets)]


def close(uuid: bytes, conn_ids: Sequence[int], max_targets: int = MAX_TARGETS) -> list[bytes]:
    """Close the connections after what is already queued for them."""
    return [b"%s %d:%s, " % (uuid, len(g), g) for g in _id_groups(conn_ids, max_targets)]


def ctl(
    uuid: bytes, conn_ids: Sequence[int], args: dict[str, Any], max_targets: int = MAX_TARGETS
) -> list[bytes]:
    """Extended ``ctl`` reply: ``{"keep-alive": True}``, ``{"credits": N}``, ``{"cancel": True}``.

    A malformed inner tnetstring crashes Mongrel2 1.12, so only this tested
    encoder writes them, and only with the keys Mongrel2 knows.
    """
    allowed = {"keep-alive": bool, "credits": int, "cancel": bool}
    for key, value in args.items():
        kind = allowed.get(key)
        if kind is None or type(value) is not kind:
            raise ValueError("unsupported ctl argument %s=%r" % (key, value))
    payload = _tnet_dumps(["ctl", args])
    return [
        b"%s %d:X %s, %s" % (uuid, len(g) + 2, g, payload)
        for g in _id_groups(conn_ids, max_targets)
    ]
