"""Validators of setting values: each raises ValueError with what is wrong.

:func:`~m2gate.config.declare.convert` turns that into the one start-up line
naming the setting and its accepted values.
"""

from __future__ import annotations

import re

_SPEC_RE = re.compile(r"(tcp://[^\s:/]+:\d{1,5}|ipc://\S+|inproc://\S+)\Z")
_IDENT_RE = re.compile(r"[A-Za-z0-9-]+\Z")
SPEC_ACCEPTED = "tcp://HOST:PORT, ipc://PATH or inproc://NAME, optionally IDENT@ before the address"


def split_spec(value: str) -> tuple[str, str | None]:
    """``proto://[IDENT@]endpoint`` (m2wsgi's syntax) -> ``(endpoint, ident)``."""
    proto, sep, rest = value.partition("://")
    ident = None
    if sep and "@" in rest.split("/", 1)[0]:
        ident, _, rest = rest.partition("@")
    spec = proto + sep + rest
    if not _SPEC_RE.match(spec) or (ident is not None and not _IDENT_RE.match(ident)):
        raise ValueError(value)
    if spec.startswith("tcp://") and not 0 < int(spec.rsplit(":", 1)[1]) < 65536:
        raise ValueError(value)
    return spec, ident


def check_spec(value: str) -> str:
    if value:
        split_spec(value)
    return value


def check_ident(value: str) -> str:
    if value and not _IDENT_RE.match(value):
        raise ValueError(value)
    return value


def positive(value: int) -> int:
    if value < 1:
        raise ValueError(value)
    return value


def non_negative(value: float) -> float:
    if not value >= 0:  # also rejects NaN
        raise ValueError(value)
    return value


def positive_seconds(value: float) -> float:
    if not value > 0:  # also rejects NaN
        raise ValueError(value)
    return value


def check_listen_addr(value: str) -> str:
    """``HOST:PORT`` (tcp) or a path with a ``/`` (unix socket)."""
    if value and "/" not in value:
        _host, sep, port = value.rpartition(":")
        if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ValueError(value)
    return value


_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def check_env(value: str) -> str:
    key, sep, _ = value.partition("=")
    if not sep or not _ENV_KEY_RE.match(key):
        raise ValueError(value)
    return value


def check_user(value: str) -> str:
    if value and not (value.isascii() and value.isdigit()):
        import pwd

        try:
            pwd.getpwnam(value)
        except KeyError:
            raise ValueError(value) from None
    return value


def check_group(value: str) -> str:
    if value and not (value.isascii() and value.isdigit()):
        import grp

        try:
            grp.getgrnam(value)
        except KeyError:
            raise ValueError(value) from None
    return value


def check_log_endpoint(value: str) -> str:
    if value and not re.match(r"(tcp://[^\s/]+:\d{1,5}|ipc://\S+)\Z", value):
        raise ValueError(value)
    return value


def check_access_format(value: str) -> str:
    from m2gate.adapters.accesslog import check_format

    check_format(value)
    return value


def check_paste(value: str) -> str:
    if value.startswith("egg:"):
        raise ValueError(value)
    return value


# RFC 6265 cookie-name: an RFC 2616 token.
_COOKIE_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}\Z")


def check_cookie_name(value: str) -> str:
    """A name a browser can send back in ``Cookie:`` (empty: none)."""
    if value and not _COOKIE_NAME_RE.match(value):
        raise ValueError(value)
    return value
