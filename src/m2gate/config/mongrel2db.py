"""Read handler specs from Mongrel2's own ``config.sqlite``, so users write them once.

``m2sh load`` turns Mongrel2's config into a sqlite database with ``handler``,
``route``, ``host``, ``server`` and ``setting`` tables. One handler is picked by
route path, send_ident or host name (or because it is the only one).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass

from m2gate.config.declare import ConfigError
from m2gate.config.settings import Config


@dataclass(frozen=True)
class DBHandler:
    """One ``handler`` row and where Mongrel2 routes to it."""

    id: int
    send_spec: str
    send_ident: str
    recv_spec: str
    recv_ident: str
    protocol: str
    routes: tuple[tuple[str, str], ...]  # (host name, route path)

    def describe(self) -> str:
        where = ", ".join("%s%s" % (host, path) for host, path in self.routes) or "no route"
        return "route %s -> send_spec %s, send_ident %s" % (where, self.send_spec, self.send_ident)


@dataclass(frozen=True)
class DBConfig:
    """What m2gate takes from the database."""

    handlers: list[DBHandler]
    settings: dict[str, str]
    chroot: str


def read(path: str) -> DBConfig:
    """Read every handler with its routes, the settings and the server's chroot."""
    if not os.path.isfile(path):
        raise ConfigError("mongrel2_db: no such file %s" % path)
    try:
        db = sqlite3.connect("file:%s?mode=ro" % os.path.abspath(path), uri=True)
    except sqlite3.Error as exc:
        raise ConfigError("mongrel2_db: cannot open %s: %s" % (path, exc)) from None
    try:
        rows = db.execute(
            "SELECT id, send_spec, send_ident, recv_spec, recv_ident, protocol FROM handler"
            " ORDER BY id"
        ).fetchall()
        routes = db.execute(
            "SELECT route.target_id, COALESCE(host.name, ''), route.path FROM route"
            " LEFT JOIN host ON host.id = route.host_id"
            " WHERE route.target_type = 'handler' ORDER BY route.id"
        ).fetchall()
        settings = dict(db.execute("SELECT key, value FROM setting").fetchall())
        chroots = [r[0] for r in db.execute("SELECT chroot FROM server").fetchall() if r[0]]
    except sqlite3.Error as exc:
        raise ConfigError(
            "mongrel2_db: %s is not a Mongrel2 config database (%s)" % (path, exc)
        ) from None
    finally:
        db.close()
    by_handler: dict[int, list[tuple[str, str]]] = {}
    for target, host, route in routes:
        by_handler.setdefault(target, []).append((host, route))
    handlers = [
        DBHandler(
            id=row[0],
            send_spec=row[1] or "",
            send_ident=row[2] or "",
            recv_spec=row[3] or "",
            recv_ident=row[4] or "",
            protocol=row[5] or "json",
            routes=tuple(by_handler.get(row[0], ())),
        )
        for row in rows
    ]
    chroot = ""
    if chroots:  # relative chroots (m2sh's examples use "./") are relative to the db
        chroot = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), chroots[0]))
        chroot = "" if chroot == "/" else chroot
    return DBConfig(handlers, {str(k): str(v) for k, v in settings.items()}, chroot)


def select(
    handlers: list[DBHandler], route: str = "", ident: str = "", host: str = ""
) -> DBHandler:
    """The one handler matching every given selector, else ConfigError listing them all."""
    found = [
        h
        for h in handlers
        if (not ident or h.send_ident == ident)
        and (not route or any(path == route for _, path in h.routes))
        and (not host or any(name == host for name, _ in h.routes))
    ]
    if len(found) == 1:
        return found[0]
    wanted = ", ".join(
        "%s %s" % (name, value)
        for name, value in (("--route", route), ("--handler-ident", ident), ("--host", host))
        if value
    )
    listing = "; ".join(h.describe() for h in handlers) or "none"
    if not found:
        problem = "no handler matches %s" % (wanted or "(no selector)")
    else:
        problem = "%d handlers match %s; choose one with --route, --handler-ident or --host" % (
            len(found),
            wanted or "(no selector)",
        )
    raise ConfigError("mongrel2_db: %s; handlers found: %s" % (problem, listing))


def _connectable(spec: str) -> str:
    """Mongrel2 binds; a wildcard address must become one we can connect to."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if spec.startswith(wildcard):
            return "tcp://127.0.0.1:" + spec[len(wildcard) :]
    return spec


def upload_dir_of(db: DBConfig, db_path: str) -> str:
    """The real directory of ``upload.temp_store`` ('' when uploads are off)."""
    store = db.settings.get("upload.temp_store", "")
    if not store:
        return ""
    if db.chroot:
        store = os.path.join(db.chroot, store.lstrip("/"))
    if not os.path.isabs(store):  # Mongrel2 runs where its database is
        store = os.path.join(os.path.dirname(os.path.abspath(db_path)), store)
    return os.path.dirname(store)


def apply(cfg: Config) -> Config:
    """Fill empty spec/ident/upload settings of ``cfg`` from ``cfg.mongrel2_db``."""
    if not cfg.mongrel2_db:
        if cfg.route or cfg.handler_ident or cfg.host:
            raise ConfigError("route/handler_ident/host: only meaningful with --mongrel2-db FILE")
        return cfg
    db = read(cfg.mongrel2_db)
    chosen = select(db.handlers, cfg.route, cfg.handler_ident, cfg.host)
    cfg.send_spec = cfg.send_spec or [_connectable(chosen.send_spec)]
    cfg.recv_spec = cfg.recv_spec or [_connectable(chosen.recv_spec)]
    cfg.send_ident = cfg.send_ident or chosen.send_ident
    cfg.recv_ident = cfg.recv_ident or chosen.recv_ident
    cfg.upload_dir = cfg.upload_dir or upload_dir_of(db, cfg.mongrel2_db)
    # Mongrel2 only chroots when started as root; the path it announces is then
    # relative to the chroot, which uploads.py resolves with mongrel2_chroot.
    cfg.mongrel2_chroot = cfg.mongrel2_chroot or db.chroot
    return cfg
