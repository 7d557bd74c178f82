"""One access-log line per request, in a configurable %-format.

The format uses named atoms (``%(h)s %(s)s ...``) in the spirit of gunicorn's
access log; the default is the common log format. Only the atoms the format
mentions are computed, so a request costs one dict, one ``%`` and one write.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any, Final

from m2gate.protocol.messages import Message

DEFAULT_FORMAT: Final = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s'
COMBINED_FORMAT: Final = DEFAULT_FORMAT + ' "%(f)s" "%(a)s"'

#: atom -> what it stands for (also the docs of --access-log-format)
ATOMS: Final = {
    "h": "remote address",
    "l": "'-' (RFC 1413 identity, never known)",
    "u": "'-' (remote user, never known)",
    "t": "time the request ended, [dd/Mon/yyyy:HH:MM:SS +zone]",
    "r": "request line: METHOD PATH?QUERY PROTOCOL",
    "m": "method",
    "U": "path without the query",
    "q": "query string",
    "H": "protocol",
    "s": "status code",
    "b": "body bytes sent, '-' for none",
    "B": "body bytes sent",
    "f": "Referer",
    "a": "User-Agent",
    "T": "request time in whole seconds",
    "M": "request time in milliseconds",
    "D": "request time in microseconds",
    "p": "process id",
}

_NUMERIC: Final = frozenset("sBTMDp")  # may be formatted with %(s)d and such
_ATOM_RE = re.compile(r"%\((\w+)\)")


def check_format(fmt: str) -> set[str]:
    """The atoms ``fmt`` uses; ValueError if it is no valid format of known atoms."""
    used = set(_ATOM_RE.findall(fmt))
    unknown = used - ATOMS.keys()
    if unknown:
        raise ValueError("unknown atom %s" % ", ".join(sorted(unknown)))
    try:
        fmt % {name: 1 if name in _NUMERIC else "x" for name in ATOMS}
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(str(exc)) from None
    return used


class AccessLogger:
    """Formats and writes access lines; :meth:`log` is called once per request."""

    def __init__(
        self,
        fmt: str = DEFAULT_FORMAT,
        logger: logging.Logger | None = None,
        trust_x_forwarded_for: bool = False,
        sink: Callable[[str], None] | None = None,
    ) -> None:
        self.fmt = fmt
        self.used = check_format(fmt)
        self.logger = logger if logger is not None else logging.getLogger("m2gate.access")
        # A sink writes whole lines itself: logging's records and levels would
        # quadruple the cost of a line (16 us instead of 4 us, measured).
        self.sink = sink
        self.trust_xff = trust_x_forwarded_for
        self._stamp_second = -1
        self._stamp = ""

    def _now(self) -> str:
        now = int(time.time())
        if now != self._stamp_second:  # one strftime per second, not per request
            self._stamp = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(now))
            self._stamp_second = now
        return self._stamp

    def atoms(self, msg: Message, status: int, nbytes: int, duration: float) -> dict[str, Any]:
        """The values of the atoms the format uses (all of them when asked by tests)."""
        used = self.used
        atoms: dict[str, Any] = {}
        if "h" in used:
            addr = None
            if self.trust_xff:
                xff = msg.header("x-forwarded-for")
                addr = xff.split(",")[0].strip() if xff else None
            atoms["h"] = addr or msg.header("REMOTE_ADDR") or "-"
        if "l" in used:
            atoms["l"] = "-"
        if "u" in used:
            atoms["u"] = "-"
        if "t" in used:
            atoms["t"] = self._now()
        if used & {"r", "m", "U", "q", "H"}:
            method = msg.method
            if method == "WEBSOCKET_HANDSHAKE":
                # Mongrel2's name for an upgrade; the client's request line said GET.
                method = "GET"
            query = msg.header("QUERY") or ""
            proto = msg.header("VERSION") or "HTTP/1.0"
            atoms["m"] = method
            atoms["U"] = msg.path
            atoms["q"] = query
            atoms["H"] = proto
            atoms["r"] = "%s %s%s %s" % (method, msg.path, "?" + query if query else "", proto)
        if "s" in used:
            atoms["s"] = status
        if "b" in used:
            atoms["b"] = nbytes if nbytes else "-"
        if "B" in used:
            atoms["B"] = nbytes
        if "f" in used:
            atoms["f"] = msg.header("referer") or "-"
        if "a" in used:
            atoms["a"] = msg.header("user-agent") or "-"
        if "T" in used:
            atoms["T"] = int(duration)
        if "M" in used:
            atoms["M"] = int(duration * 1000)
        if "D" in used:
            atoms["D"] = int(duration * 1_000_000)
        if "p" in used:
            atoms["p"] = os.getpid()  # not cached: the logger may be made before fork
        return atoms

    def log(self, msg: Message, status: int, nbytes: int, duration: float) -> None:
        """Write one line for ``msg``; never raises into the request path."""
        try:
            line = self.fmt % self.atoms(msg, status, nbytes, duration)
            if self.sink is not None:
                self.sink(line)
            else:
                self.logger.info("%s", line)
        except Exception:
            logging.getLogger("m2gate").exception("access log line for %s failed", msg.path)
