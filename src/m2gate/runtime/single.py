"""``m2gate serve`` in one process: load the app, connect, serve, stop cleanly."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from functools import partial
from types import FrameType

from m2gate import logs
from m2gate.adapters.asgi import resolve_interface
from m2gate.config.declare import ConfigError
from m2gate.config.settings import Config
from m2gate.loading import load_app
from m2gate.runtime.options import socket_args, transport_args, worker_options, wsgi_handler
from m2gate.runtime.threaded import ThreadedRuntime
from m2gate.transports.zmq_sync import MultiZmqTransport, ZmqTransport

log = logging.getLogger("m2gate")

_GEVENT_WSGI_ONLY = (
    "worker_class: gevent serves WSGI apps; ASGI apps run on asyncio (accepted: threads)"
)


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
    logs.after_app_import()
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
    transport: ZmqTransport | MultiZmqTransport
    if len(cfg.frontends) > 1:
        multi_class: type[MultiZmqTransport] = MultiZmqTransport
        if green:
            multi_class = gevent_worker.GreenMultiZmqTransport
        transport = multi_class(cfg.frontends, *socket_args(cfg))
    else:
        transport = transport_class(*transport_args(cfg))
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
        " ".join(cfg.send_spec),
        " ".join(cfg.recv_spec),
        cfg.send_ident,
        ("gevent, up to %d greenlets" % cfg.gevent_connections)
        if green
        else ("%d thread(s)" % cfg.threads),
    )
    clean = worker.run(cfg.graceful_timeout)
    transport.close(linger_s=min(cfg.graceful_timeout, 5.0))
    log.info("stopped after %d request(s)%s", worker.requests, "" if clean else " (forced)")
    return 0
