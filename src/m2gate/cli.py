"""The ``m2gate`` command: argument parsing is generated from the settings."""

from __future__ import annotations

import argparse
import logging
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from m2gate import __version__
from m2gate.config.loader import add_arguments, load
from m2gate.config.settings import SPEC_ACCEPTED, Config, ConfigError, split_spec
from m2gate.loading import AppLoadError

log = logging.getLogger("m2gate")

EXIT_CONFIG = 2
EXIT_APP_LOAD = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m2gate", description="Run Python web apps behind Mongrel2 over ZeroMQ."
    )
    parser.add_argument("--version", action="version", version="m2gate " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="serve an application to Mongrel2")
    add_arguments(serve)
    return parser


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


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    cli: dict[str, Any] = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        cfg = resolve_specs(load(cli))
    except ConfigError as exc:
        print("m2gate: error: %s" % exc, file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(cfg.log_level)
    from m2gate.server.run import serve

    try:
        return serve(cfg)
    except ConfigError as exc:
        print("m2gate: error: %s" % exc, file=sys.stderr)
        return EXIT_CONFIG
    except AppLoadError as exc:
        print("m2gate: error: %s" % exc, file=sys.stderr)
        return EXIT_APP_LOAD
