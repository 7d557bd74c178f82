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
    values = {
        f.name: getattr(cfg, f.name)
        for f, _, _ in settings()
        if f.name in cli and getattr(cfg, f.name) != getattr(defaults, f.name)
    }
    for name in ("send_spec", "recv_spec"):  # one front-end: the plain string users know
        if len(values.get(name, ())) == 1:
            values[name] = values[name][0]
    return values


def resolve_specs(cfg: Config) -> Config:
    """Fill send/recv specs and identity from --zeromq, IDENT@ and m2wsgi's default.

    Several ``--send-spec``/``--recv-spec`` are several Mongrel2 front-ends,
    paired in order; each recv spec may be left to m2wsgi's default only
    when none is given.
    """
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
        cfg.send_spec = cfg.send_spec or [parts[0]]
        cfg.recv_spec = cfg.recv_spec or [parts[1]]
    if not cfg.send_spec:
        raise ConfigError("send_spec: missing; pass --send-spec SPEC (or --zeromq SEND,RECV)")
    if cfg.recv_spec and len(cfg.recv_spec) != len(cfg.send_spec):
        raise ConfigError(
            "send_spec/recv_spec: %d send_spec(s) but %d recv_spec(s); give one --recv-spec"
            " per --send-spec, in the same order (or none: send port - 1 each)"
            % (len(cfg.send_spec), len(cfg.recv_spec))
        )
    sends: list[str] = []
    for spec in cfg.send_spec:
        spec, ident = split_spec(spec)
        sends.append(spec)
        if ident and not cfg.send_ident:
            cfg.send_ident = ident
    recvs: list[str] = []
    if not cfg.recv_spec:
        for spec in sends:
            if not spec.startswith("tcp://"):
                raise ConfigError("recv_spec: missing; it can only be derived from a tcp send_spec")
            host, port = spec.rsplit(":", 1)
            recvs.append("%s:%d" % (host, int(port) - 1))
            log.info("recv_spec not given: using %s (send port - 1)", recvs[-1])
    else:
        for spec in cfg.recv_spec:
            spec, recv_ident = split_spec(spec)
            recvs.append(spec)
            if recv_ident and not cfg.recv_ident:
                cfg.recv_ident = recv_ident
    if len(set(sends)) != len(sends):
        raise ConfigError("send_spec: the same spec given twice; accepted: one per front-end")
    cfg.send_spec, cfg.recv_spec = sends, recvs
    if not cfg.send_ident:
        cfg.send_ident = str(uuid.uuid4())
    return cfg
