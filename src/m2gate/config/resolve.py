"""From the command line's values to the final :class:`Config`.

The CLI only parses arguments; what they mean together (every settings
source, ``--mongrel2-db``, ``--zeromq``, the specs' ``IDENT@`` prefixes and
m2wsgi's recv port default) is decided here, where it can be tested without
a command line.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from m2gate.config import mongrel2db
from m2gate.config.checks import SPEC_ACCEPTED, split_spec
from m2gate.config.declare import ConfigError
from m2gate.config.loader import load
from m2gate.config.settings import Config, settings

log = logging.getLogger("m2gate")


def configure(cli: Mapping[str, Any]) -> Config:
    """Settings from every source, then --mongrel2-db and the spec defaults."""
    return resolve_specs(mongrel2db.apply(load(cli)))


def init_values(cli: Mapping[str, Any]) -> dict[str, Any]:
    """What ``m2gate init`` writes: the options given on the command line, if not defaults.

    The environment is ignored (it belongs to the shell, not the app folder);
    the values are validated the way ``serve`` would read them.
    """
    cfg = load(cli, environ={})
    defaults = Config()
    return {
        f.name: getattr(cfg, f.name)
        for f, _, _ in settings()
        if f.name in cli and getattr(cfg, f.name) != getattr(defaults, f.name)
    }


def resolve_specs(cfg: Config) -> Config:
    """Fill send/recv specs and identity from --zeromq, IDENT@ and m2wsgi's default."""
    if cfg.zeromq:
        parts = [p.strip() for p in cfg.zeromq.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ConfigError(
                "--zeromq: invalid value %r; accepted: SEND_SPEC,RECV_SPEC" % cfg.zeromq
            )
        for part in parts:
            try:
                split_spec(part)
            except ValueError:
                raise ConfigError(
                    "--zeromq: invalid spec %r; accepted: %s" % (part, SPEC_ACCEPTED)
                ) from None
        cfg.send_spec = cfg.send_spec or parts[0]
        cfg.recv_spec = cfg.recv_spec or parts[1]
    if not cfg.send_spec:
        raise ConfigError("send_spec: missing; pass --send-spec SPEC (or --zeromq SEND,RECV)")
    cfg.send_spec, ident = split_spec(cfg.send_spec)
    if ident and not cfg.send_ident:
        cfg.send_ident = ident
    if not cfg.recv_spec:
        if not cfg.send_spec.startswith("tcp://"):
            raise ConfigError("recv_spec: missing; it can only be derived from a tcp send_spec")
        host, port = cfg.send_spec.rsplit(":", 1)
        cfg.recv_spec = "%s:%d" % (host, int(port) - 1)
        log.info("recv_spec not given: using %s (send port - 1)", cfg.recv_spec)
    else:
        cfg.recv_spec, recv_ident = split_spec(cfg.recv_spec)
        if recv_ident and not cfg.recv_ident:
            cfg.recv_ident = recv_ident
    if not cfg.send_ident:
        cfg.send_ident = str(uuid.uuid4())
    return cfg
