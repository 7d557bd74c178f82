"""``m2gate serve``: one process, or a master with worker processes."""

from __future__ import annotations

import os

from m2gate.config.declare import ConfigError
from m2gate.config.settings import Config
from m2gate.ops.pidfile import AlreadyRunning, PidFile
from m2gate.supervisor.master import Master


def needs_master(cfg: Config) -> bool:
    """Whether ``cfg`` asks for anything only the master provides."""
    return bool(
        cfg.processes >= 1
        or cfg.workers_max  # adaptive workers
        or cfg.preload
        or cfg.pidfile
        or cfg.harakiri
        or cfg.max_requests
        or cfg.reload_on_rss
        or cfg.touch_reload
        or cfg.reload_on_change
        or cfg.stats
        or cfg.metrics
    )


def serve(cfg: Config) -> int:
    """``m2gate serve``: the master with its workers, or one process.

    ``-p N`` (any N >= 1) always runs a master: a user who asked for one
    worker under a master gets reloads and recycling. Without ``-p`` one
    process serves, unless another option needs the master (pidfile, reload
    triggers, worker hygiene, stats); it costs less CPU per request than a
    master and one worker, each request crossing two processes there
    (measured: benchmarks/README.md; the decision: docs/operations.md).
    """
    from m2gate.ops import confine

    if not needs_master(cfg):
        from m2gate.runtime.single import serve as serve_single

        confine.start_single(cfg)  # chroot, user, app environment, SIGUSR1
        return serve_single(cfg)
    if cfg.worker_class != "threads":
        raise ConfigError(
            "processes: worker processes run app threads (WSGI) or an event loop (ASGI);"
            " drop --processes and the master options for worker_class=%s" % cfg.worker_class
        )
    if cfg.interface == "asgi":
        if cfg.dispatch == "direct":
            raise ConfigError(
                "dispatch: ASGI worker processes take their requests from the master;"
                " accepted with --interface asgi: idle, round-robin"
            )
        # Imported here, before --chroot and --user: a worker may no longer read them.
        import m2gate.supervisor.child_asgi  # noqa: F401
    pidfile = None
    if cfg.pidfile:
        try:
            pidfile = PidFile(cfg.pidfile, cfg.user).acquire()
        except AlreadyRunning as exc:
            raise ConfigError(str(exc)) from None
    try:
        # after the pidfile lock, before any app code: chroot, user, app environment
        confine.confine(cfg)
        if pidfile is not None:
            pidfile.path = os.path.abspath(cfg.pidfile)  # as seen after a chroot
        return Master(cfg, pidfile).run()
    except AlreadyRunning as exc:
        raise ConfigError(str(exc)) from None
    finally:
        if pidfile is not None:
            pidfile.release()
