"""Typed errors of the sans-IO core; callers log and drop, never crash."""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class: something on the wire or in a response broke the protocol."""


class MalformedMessage(ProtocolError):
    """A message from Mongrel2 could not be parsed; log it and drop it."""


class LocalProtocolError(ProtocolError):
    """Our side (the app) tried to produce something invalid; answer 500.

    ``status_hint`` is the status to send when headers have not gone out yet.
    """

    def __init__(self, msg: str, status_hint: int = 500) -> None:
        super().__init__(msg)
        self.status_hint = status_hint


class RemoteProtocolError(ProtocolError):
    """The client's side broke the protocol (a forged upload, say): answer 4xx."""

    def __init__(self, msg: str, status_hint: int = 400) -> None:
        super().__init__(msg)
        self.status_hint = status_hint


class ClientDisconnected(Exception):
    """Mongrel2 told us the client is gone; stop producing the response."""
