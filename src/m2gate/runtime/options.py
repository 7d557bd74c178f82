"""What the settings give a runtime: its adapter, its options, its sockets' arguments.

One place for each, used by the single process (:mod:`.single`), the
asyncio runtime and the worker processes (:mod:`m2gate.supervisor.child`).
"""

from __future__ import annotations

from typing import Any

from m2gate import logs
from m2gate.adapters.common import EnvironDefaults
from m2gate.adapters.wsgi import WSGIApp, WSGIHandler
from m2gate.config.settings import Config
from m2gate.conn.uploads import UploadStore
from m2gate.protocol.http import SERVER_HEADER
from m2gate.transports.zmq_common import pull_limit


def wsgi_handler(cfg: Config, app: WSGIApp, multithread: bool, multiprocess: bool) -> WSGIHandler:
    """The WSGI adapter as the settings shape it (one process or a worker)."""
    return WSGIHandler(
        app,
        EnvironDefaults(cfg.server_name, cfg.server_port, cfg.trust_x_forwarded_for),
        multithread=multithread,
        multiprocess=multiprocess,
        access_log=logs.access_logger(),
    )


def worker_options(cfg: Config) -> dict[str, Any]:
    """The :class:`ThreadedRuntime` arguments that come straight from the settings."""
    return {
        "threads": cfg.threads,
        "reply_ident": cfg.recv_ident.encode("ascii"),
        "max_message": cfg.max_message,
        "flush_interval": cfg.flush_interval,
        "server_header": SERVER_HEADER,
        "uploads": UploadStore(
            cfg.upload_dir, cfg.mongrel2_chroot, cfg.upload_timeout, cfg.stream_uploads
        ),
        "backlog": cfg.backlog,
        "max_pipelined": cfg.max_pipelined,
        "credits_timeout": cfg.credits_timeout,
        "busy_keepalive": cfg.busy_keepalive,
    }


def transport_args(cfg: Config) -> tuple[str, str, str, int, float, int]:
    """The positional arguments of a ZeroMQ transport (sync, gevent or asyncio)."""
    return (cfg.send_spec[0], cfg.recv_spec[0], *socket_args(cfg))


def socket_args(cfg: Config) -> tuple[str, int, float, int]:
    """What every front-end's sockets share: identity, hwm, send timeout, MAXMSGSIZE.

    A transport of several front-ends takes ``cfg.frontends`` and these.
    """
    return (
        cfg.send_ident,
        cfg.send_hwm,
        cfg.send_timeout,
        pull_limit(cfg.mongrel2_content_length),
    )
