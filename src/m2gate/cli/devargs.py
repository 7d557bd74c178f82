"""The ``m2gate dev`` command line, apart from :mod:`m2gate.cli.dev` itself.

Building the ``m2gate`` parser needs dev's options for every command, but
``m2gate serve`` (started hundreds of times by the tests, and by every
deployment) needs nothing else of dev: keeping them here spares each start
the import of dev's Mongrel2 harness, HTTP client and file watching.
"""

from __future__ import annotations

import argparse
from typing import Final

from m2gate.config.loader import add_arguments

DEFAULT_RUN_DIR: Final = ".m2gate-dev"

# Serve settings dev decides itself (specs, identity, uploads, Mongrel2's side)
# or that make no sense for a foreground development server.
EXCLUDED: Final = (
    "send_spec",
    "recv_spec",
    "zeromq",
    "send_ident",
    "recv_ident",
    "upload_dir",
    "mongrel2_chroot",
    "mongrel2_db",
    "route",
    "handler_ident",
    "host",
    "daemon",
    "reload_on_change",
    "chroot",
    "user",
    "group",
)


def add_dev_arguments(parser: argparse.ArgumentParser) -> None:
    """dev's own options, then the serve settings it passes through."""
    group = parser.add_argument_group("dev")
    group.add_argument(
        "--host",
        dest="dev_host",
        default="127.0.0.1",
        metavar="ADDR",
        help="address Mongrel2 listens on (default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    group.add_argument(
        "--port",
        dest="dev_port",
        default="",
        metavar="PORT",
        help="Mongrel2's HTTP port (default: a free one)",
    )
    group.add_argument(
        "--run-dir",
        dest="dev_run_dir",
        default=DEFAULT_RUN_DIR,
        metavar="DIR",
        help="where the Mongrel2 config (m2.conf, config.sqlite), logs and uploads go"
        " (default %s)" % DEFAULT_RUN_DIR,
    )
    group.add_argument(
        "--static",
        dest="dev_static",
        action="append",
        default=[],
        metavar="URL_PREFIX=DIR",
        help="Mongrel2 serves the files of DIR under URL_PREFIX (repeatable); a Django"
        " project's STATIC_URL=STATIC_ROOT is added by itself",
    )
    group.add_argument(
        "--reload",
        dest="dev_reload",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="restart the app when its sources change (default: on)",
    )
    add_arguments(parser, exclude=EXCLUDED)
