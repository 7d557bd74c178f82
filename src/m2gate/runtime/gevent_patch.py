"""Monkey-patching for ``--worker-class gevent``, importable before anything else.

This module imports nothing of m2gate's server, so the CLI can patch the
process before ``socket``, ``ssl``, ``asyncio`` or ``zmq`` are imported by
the server modules or the app.
"""

from __future__ import annotations


def patch() -> None:
    """Monkey-patch the process for gevent (idempotent).

    Call it before the app is imported; m2gate's own modules only look
    ``threading``/``time``/``queue`` names up when called, so they cooperate too.
    """
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        monkey.patch_all()
