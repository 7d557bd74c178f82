"""The small contracts between the runtime and its transports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class ReplyStalled(Exception):
    """Mongrel2 read nothing for the send timeout: the reply was dropped (counted, logged).

    Raised by a sink whose buffer for Mongrel2 is full, instead of holding
    an unbounded amount of output in memory; the writer gives the connection up.
    """


class ReplySink(Protocol):
    """Where finished reply messages go; ``send`` must be thread-safe.

    Each element is one whole Mongrel2 reply, so messages from different
    threads can never interleave. A bounded sink raises :class:`ReplyStalled`
    when Mongrel2 stopped reading; nothing is ever dropped silently.
    """

    def send(self, messages: Sequence[bytes]) -> None: ...


class RequestSource(Protocol):
    """Where raw request messages come from."""

    def recv(self, timeout_ms: int) -> bytes | None:
        """Next raw message, or ``None`` after ``timeout_ms`` without one."""
        ...

    def stop_receiving(self) -> None:
        """Ask the peer to stop sending us work (what is queued may still arrive)."""
        ...
