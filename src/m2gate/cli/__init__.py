"""The ``m2gate`` command: argument parsing (generated from the settings) and dispatch.

What the arguments mean is decided below the CLI: m2gate.config.resolve turns
them into a Config, m2gate.ops does the OS work, m2gate.supervisor serves;
``status|stop|reload`` are in m2gate.cli.control, ``dev`` in m2gate.cli.dev,
``top`` in m2gate.cli.top.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from m2gate import __version__
from m2gate.cli.control import add_commands, run_command
from m2gate.cli.devargs import add_dev_arguments
from m2gate.cli.top import add_top_command, run_top
from m2gate.config.declare import ConfigError
from m2gate.config.loader import add_arguments
from m2gate.config.resolve import configure, init_values
from m2gate.loading import AppLoadError

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
    dev = sub.add_parser(
        "dev", help="serve APP behind a Mongrel2 of its own, restarting it when its code changes"
    )
    add_dev_arguments(dev)
    add_commands(sub)  # status, stop, reload: talk to a running master
    add_top_command(sub)
    return parser


def run_init(cli: dict[str, Any], directory: str) -> int:
    """``m2gate init DIR [APP] [options]``: the options given become m2gate.toml."""
    from m2gate.ops.appdir import init_app_dir

    path = init_app_dir(directory, init_values(cli))
    print(
        "created %s; put the app in %s/app and run: m2gate serve --app-dir %s"
        % (path, directory.rstrip("/"), directory)
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    if args.command in ("status", "stop", "reload"):
        return run_command(args.command, args)
    if args.command == "dev":
        from m2gate.cli.dev import run_dev

        return run_dev(vars(args))
    if args.command == "top":
        return run_top(args)
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
        from m2gate.ops import confine

        logs.setup_logging(cfg)
        confine.detach(cfg)  # --daemon; the rest after the pidfile lock (supervisor.master)
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
