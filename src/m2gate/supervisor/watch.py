"""``--touch-reload`` and ``--reload-on-change``: mtime polling, no inotify.

Polling once a second is portable, needs no extra dependency and costs next
to nothing for the few hundred files an app imports.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from m2gate.config.settings import Config

WATCH_INTERVAL = 1.0  # seconds between polls

_TOUCH = "touch:"  # key prefix of the --touch-reload file among the mtimes


def mtime(path: str) -> float:
    """``path``'s mtime, 0.0 if it is missing (so its creation counts as a change)."""
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def app_source_files(exclude_prefixes: Sequence[str] = ()) -> list[str]:
    """Source files of imported modules outside the stdlib and site-packages."""
    skip = {sys.prefix, sys.base_prefix, sys.exec_prefix, *exclude_prefixes}
    skip.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # m2gate itself
    files: set[str] = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or not path.endswith(".py"):
            continue
        path = os.path.abspath(path)
        if "site-packages" in path or "dist-packages" in path:
            continue
        if any(path.startswith(p.rstrip("/") + "/") for p in skip if p):
            continue
        files.add(path)
    return sorted(files)


class Watcher:
    """The files whose change means a reload, and their last seen mtimes."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.mtimes: dict[str, float] = {}

    def add_files(self, data: bytes) -> None:
        """A worker's ``loaded`` frame: the JSON list of its app's source files."""
        try:
            files = json.loads(data)
        except ValueError:
            return
        if not isinstance(files, list):
            return
        for path in files:
            if isinstance(path, str) and path not in self.mtimes:
                self.mtimes[path] = mtime(path)

    def changed(self) -> str:
        """Why to reload now ("" if nothing changed since the last poll)."""
        cfg = self.cfg
        if cfg.touch_reload:
            key = _TOUCH + cfg.touch_reload
            m = mtime(cfg.touch_reload)
            old = self.mtimes.setdefault(key, m)
            if m != old:
                self.mtimes[key] = m
                return "touched %s" % cfg.touch_reload
        if not cfg.reload_on_change:
            return ""
        if cfg.preload and not self.mtimes:
            for path in app_source_files():  # the workers reuse the master's modules
                self.mtimes[path] = mtime(path)
        changed = ""
        for path, old in list(self.mtimes.items()):
            if path.startswith(_TOUCH):
                continue
            m = mtime(path)
            if m != old:
                self.mtimes[path] = m
                changed = "%s changed" % path
        return changed
