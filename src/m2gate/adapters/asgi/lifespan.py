"""The ASGI ``lifespan`` scope: app start-up and shut-down."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from m2gate.adapters.asgi.base import (
    ASGI_INFO,
    ASGIApp,
    ASGIMessage,
    last_line,
    one_line,
)

log = logging.getLogger("m2gate.asgi")


class LifespanError(Exception):
    """The app's lifespan startup failed; the message is the one line shown."""


class Lifespan:
    """Runs the app's ``lifespan`` scope; apps without lifespan support are fine."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.supported = True
        self._events: asyncio.Queue[ASGIMessage] = asyncio.Queue()
        self._replies: asyncio.Queue[ASGIMessage] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._received = False
        self._error: BaseException | None = None

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": dict(ASGI_INFO), "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except Exception as exc:
            self._error = exc

    async def _receive(self) -> ASGIMessage:
        self._received = True
        return await self._events.get()

    async def _send(self, message: ASGIMessage) -> None:
        await self._replies.put(message)

    async def _reply(self, timeout: float | None) -> ASGIMessage | None:
        """The app's answer, or ``None`` when it returned or raised instead."""
        assert self._task is not None
        getter = asyncio.ensure_future(self._replies.get())
        try:
            done, _ = await asyncio.wait(
                {getter, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not getter.done():
                getter.cancel()
        if getter in done:
            return getter.result()
        if not done:
            raise TimeoutError()
        return None

    async def startup(self) -> None:
        """Raise :class:`LifespanError` if the app reports (or raises) a failed startup."""
        self._task = asyncio.create_task(self._run())
        await self._events.put({"type": "lifespan.startup"})
        reply = await self._reply(None)
        if reply is None:
            if self._error is not None and self._received:
                raise LifespanError("lifespan startup failed: %s" % one_line(self._error))
            # Raised before asking for the event, or returned: no lifespan support.
            self.supported = False
            log.info(
                "the app does not support the ASGI lifespan protocol%s",
                " (%s)" % one_line(self._error) if self._error else "",
            )
            return
        if reply.get("type") == "lifespan.startup.failed":
            raise LifespanError("lifespan startup failed: %s" % last_line(reply.get("message")))
        if reply.get("type") != "lifespan.startup.complete":
            raise LifespanError("lifespan startup: unexpected message %r" % reply.get("type"))

    async def shutdown(self, timeout: float) -> None:
        """Ask the app to shut down; errors and a timeout are logged, not raised."""
        if not self.supported or self._task is None or self._task.done():
            return
        await self._events.put({"type": "lifespan.shutdown"})
        try:
            reply = await self._reply(timeout)
        except TimeoutError:
            log.warning("lifespan shutdown did not finish in %.1fs", timeout)
            self._task.cancel()
            return
        if reply is None:
            if self._error is not None:
                log.error("lifespan shutdown failed: %s", one_line(self._error))
        elif reply.get("type") == "lifespan.shutdown.failed":
            log.error("lifespan shutdown failed: %s", last_line(reply.get("message")))
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()
