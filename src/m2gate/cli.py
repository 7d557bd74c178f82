"""The ``m2gate`` command: argument parsing is generated from the settings."""

from __future__ import annotations

import argparse
import logging
import sys
import uuid
from collections.abc import Sequence
from typing import Any, NoReturn

from m2gate import __version__
from m2gate.config import mongrel2db
from m2gate.config.loader import add_arguments, load
from m2gate.config.settings import SPEC_ACCEPTED, Config, ConfigError, settings, split_spec
from m2gate.loading import AppLoadError

log = logging.getLogger("m2gate")

EXIT_CONFIG = 2
EXIT_APP_LOAD = 3


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line and exit 2, like every other bad setting."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, "%s: error: %s (see %s --help)\n" % (self.prog, message, self.prog))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="m2gate", description="Run Python web apps behind Mongrel2 over ZeroMQ.")
    parser.add_argument("--version", action="version", version="m2gate " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    serve = sub.add_parser("serve", help="serve an application to Mongrel2")
    add_arguments(serve)
    init = sub.add_parser(
        "init",
        help="create an app folder: app/, logs/, run/ and m2gate.toml with the given options",
    )
    init.add_argument("directory", metavar="DIR", help="the app folder to create")
    add_arguments(init, exclude=("config", "app_dir"))
    from m2gate.ops.control import add_commands

    add_commands(sub)  # status, stop, reload: talk to a running master
    return parser


def configure(cli: dict[str, Any]) -> Config:
    """Settings from every source, then --mongrel2-db and the spec defaults."""
    return resolve_specs(mongrel2db.apply(load(cli)))


def run_init(cli: dict[str, Any], directory: str) -> int:
    """``m2gate init DIR [APP] [options]``: the options given become m2gate.toml."""
    from m2gate.ops.service import init_app_dir

    cfg = load(cli, environ={})  # validates; only the command line goes into the file
    defaults = Config()
    names = [f.name for f, _, _ in settings()]
    values = {
        name: getattr(cfg, name)
        for name in names
        if name in cli and getattr(cfg, name) != getattr(defaults, name)
    }
    path = init_app_dir(directory, values)
    print(
        "created %s; put the app in %s/app and run: m2gate serve --app-dir %s"
        % (path, directory.rstrip("/"), directory)
    )
    return 0


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
    if args.command in ("status", "stop", "reload"):
        from m2gate.ops.control import run_command

        return run_command(args.command, args)
    cli: dict[str, Any] = {k: v for k, v in vars(args).items() if k != "command"}
    if args.command == "init":
        try:
            return run_init({k: v for k, v in cli.items() if k != "directory"}, args.directory)
        except ConfigError as exc:
            print("m2gate: error: %s" % exc, file=sys.stderr)
            return EXIT_CONFIG
    try:
        cfg = configure(cli)
        from m2gate import logs
        from m2gate.ops import service

        logs.setup_logging(cfg)
        service.detach(cfg)  # --daemon; the rest after the pidfile lock (server.master)
    except ConfigError as exc:
        print("m2gate: error: %s" % exc, file=sys.stderr)
        return EXIT_CONFIG
    if cfg.worker_class == "gevent":
        from m2gate.runtime.gevent_patch import patch

        patch()  # before the server modules (or the app) import socket, ssl, zmq...
    from m2gate.supervisor.serve import serve

    try:
        return serve(cfg)
    except ConfigError as exc:
        print("m2gate: error: %s" % exc, file=sys.stderr)
        return EXIT_CONFIG
    except AppLoadError as exc:
        print("m2gate: error: %s" % exc, file=sys.stderr)
        return EXIT_APP_LOAD
