"""Parsing what Mongrel2 pushes, where bad input is logged and dropped.

Every receiving loop (the runtimes, the handler API, the master) takes a
malformed message the same way: one warning, nothing answered (there is no
trustworthy connection to answer), keep receiving.
"""

from __future__ import annotations

import logging

from m2gate.protocol.errors import ProtocolError
from m2gate.protocol.messages import Message, parse_message


def log_dropped(logger: logging.Logger, data: bytes, exc: ProtocolError) -> None:
    """The one warning for a message that does not parse."""
    logger.warning("dropped malformed message (%d bytes): %s", len(data), exc)


def parse_or_drop(data: bytes, logger: logging.Logger) -> Message | None:
    """The parsed message, or None once it was logged as malformed.

    Hot loops inline the ``try`` and call :func:`log_dropped` themselves (a
    function layer less per request); the rule stays here.
    """
    try:
        return parse_message(data)
    except ProtocolError as exc:
        log_dropped(logger, data, exc)
        return None
