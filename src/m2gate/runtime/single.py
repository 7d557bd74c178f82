"""``m2gate serve`` in one process: load the app, connect, serve, stop cleanly."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Any

from m2gate import logs
from m2gate.adapters.asgi import resolve_interface
from m2gate.adapters.common import EnvironDefaults
from m2gate.adapters.wsgi import WSGIApp, WSGIHandler
from m2gate.config.settings import Config, ConfigError
from m2gate.conn.uploads import UploadStore
from m2gate.loading import load_app
from m2gate.protocol.http import SERVER_HEADER
from m2gate.runtime.threaded import ThreadedRuntime
from m2gate.transports.zmq_common import pull_limit
from m2gate.transports.zmq_sync import ZmqTransport

log = logging.getLogger("m2gate")

_GEVENT_WSGI_ONLY = (
    "worker_class: gevent serves WSGI apps; ASGI apps run on asyncio (accepted: threads)"
)


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
    }


def serve(cfg: Config) -> int:
    """Serve ``cfg.app`` until SIGTERM/SIGINT; exit 0 after a graceful stop."""
    green = cfg.worker_class == "gevent"
    if green and cfg.interface == "asgi":
        raise ConfigError(_GEVENT_WSGI_ONLY)
    if green:
        from m2gate.runtime.gevent_patch import patch

        patch()  # before the app, or anything it imports, is loaded (no-op after the CLI's)
        from m2gate.runtime import gevent as gevent_worker
    # A single process has nothing to reload into: SIGHUP (sent by habit, or
    # by logrotate scripts) must not kill it. Reloads need the master.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    app = load_app(cfg.app, cfg.chdir, cfg.paste)
    log.info("single process: SIGHUP is ignored; zero-downtime reloads need -p N or --pidfile")
    if resolve_interface(cfg.interface, app) == "asgi":
        if green:
            raise ConfigError(_GEVENT_WSGI_ONLY)
        from m2gate.runtime.asyncio import serve_asgi

        return serve_asgi(cfg, app)
    handler = wsgi_handler(cfg, app, multithread=cfg.threads > 1 or green, multiprocess=False)
    transport_class: type[ZmqTransport] = ZmqTransport
    worker_class: Callable[..., ThreadedRuntime] = ThreadedRuntime
    if green:
        transport_class = gevent_worker.GreenZmqTransport
        worker_class = partial(gevent_worker.GeventRuntime, connections=cfg.gevent_connections)
    transport = transport_class(
        cfg.send_spec,
        cfg.recv_spec,
        cfg.send_ident,
        cfg.send_hwm,
        cfg.send_timeout,
        pull_limit(cfg.mongrel2_content_length),
    )
    worker = worker_class(transport, transport, handler, **worker_options(cfg))

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if worker.stopping.is_set():
            raise SystemExit(1)  # a second signal forces the exit
        worker.stop()

    if green:
        gevent_worker.install_signals(on_signal, (signal.SIGTERM, signal.SIGINT))
    else:
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    log.info(
        "serving %s: PULL %s, PUB %s, identity %s, %s",
        cfg.app,
        cfg.send_spec,
        cfg.recv_spec,
        cfg.send_ident,
        ("gevent, up to %d greenlets" % cfg.gevent_connections)
        if green
        else ("%d thread(s)" % cfg.threads),
    )
    clean = worker.run(cfg.graceful_timeout)
    transport.close(linger_s=min(cfg.graceful_timeout, 5.0))
    log.info("stopped after %d request(s)%s", worker.requests, "" if clean else " (forced)")
    return 0
