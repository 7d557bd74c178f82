"""``--touch-reload`` and ``--reload-on-change``: inotify through watchfiles, else mtime polling.

With watchfiles installed (``m2gate[reload]``), ``--reload-on-change``
watches the directories of the app's source files with inotify, in a thread
that wakes the master's loop when one of those files changes. Measured
(Linux, ext4): the change is seen about 60 ms after the write, where a poll
once a second sees it up to a second later; and inotify sees writes that
keep the mtime (a copy or checkout that preserves times, two writes within
the filesystem's timestamp granularity), which polling misses altogether.

Polling stays as the fallback, when watchfiles is missing or inotify fails
(out of watches, a filesystem without it): it needs nothing, and it is cheap,
2.2 ms of CPU a second for 500 files (one ``stat`` each). ``--touch-reload``
is always polled: it is one file, and it and its directory may appear later.

A worker forked while the watch runs inherits its inotify descriptor and
never reads it; the kernel bounds what queues there.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Sequence

from m2gate.config.settings import Config

log = logging.getLogger("m2gate.master")

WATCH_INTERVAL = 1.0  # seconds between polls

_TOUCH = "touch:"  # key prefix of the --touch-reload file among the mtimes

ARM_TIMEOUT_MS = 1000  # the watch thread reports that its watches are set within this


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


def watchfiles_available() -> bool:
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        return False
    return True


class Watcher:
    """The files whose change means a reload, and their last seen mtimes.

    ``inotify=True`` (the master) uses watchfiles when it is installed and
    calls ``wake`` from its thread when a file changed; :meth:`changed` is
    then cheap. Otherwise :meth:`changed` polls every file's mtime.
    """

    def __init__(
        self, cfg: Config, inotify: bool = False, wake: Callable[[], None] | None = None
    ) -> None:
        self.cfg = cfg
        self.mtimes: dict[str, float] = {}
        self.inotify = inotify and cfg.reload_on_change and watchfiles_available()
        self.failed = False  # inotify gave up: polling from then on
        self.armed = threading.Event()  # the current watch's inotify watches are set
        self._wake = wake or (lambda: None)
        self._lock = threading.Lock()
        self._hits: list[str] = []  # paths the watch thread saw change
        self._real: dict[str, str] = {}  # a symlinked file's target -> the path we track
        self._dirs: set[str] = set()
        self._stop: threading.Event | None = None
        self._preload_tracked = False
        if inotify and cfg.reload_on_change and not self.inotify:
            log.info("reload-on-change: polling mtimes (pip install 'm2gate[reload]' for inotify)")

    def add_files(self, data: bytes) -> None:
        """A worker's ``loaded`` frame: the JSON list of its app's source files."""
        try:
            files = json.loads(data)
        except ValueError:
            return
        if not isinstance(files, list):
            return
        self._track(path for path in files if isinstance(path, str))

    def _track(self, paths: Iterable[str]) -> None:
        for path in paths:
            if path not in self.mtimes:
                self.mtimes[path] = mtime(path)
                real = os.path.realpath(path)
                if real != path:
                    self._real[real] = path
        if not self.inotify or self.failed:
            return
        dirs = {os.path.dirname(p) for p in [*self.mtimes, *self._real] if not p.startswith(_TOUCH)}
        dirs = {d for d in dirs if os.path.isdir(d)}
        if dirs and not dirs <= self._dirs:
            self._restart(dirs)

    def _restart(self, dirs: set[str]) -> None:
        """Watch ``dirs`` from a new thread (the old one stops at its next step)."""
        if self._stop is not None:
            self._stop.set()
        self._stop = stop = threading.Event()
        self._dirs = dirs
        self.armed = threading.Event()
        baseline = {p: m for p, m in self.mtimes.items() if not p.startswith(_TOUCH)}
        threading.Thread(
            target=self._run,
            args=(sorted(dirs), baseline, stop, self.armed),
            name="m2gate-watch",
            daemon=True,
        ).start()

    def _wanted(self, path: str) -> str:
        """The tracked path ``path`` (as inotify reports it) stands for, or ""."""
        if path in self.mtimes:
            return path
        return self._real.get(path, "")

    def _run(
        self,
        dirs: list[str],
        baseline: dict[str, float],
        stop: threading.Event,
        armed: threading.Event,
    ) -> None:
        import watchfiles

        logging.getLogger("watchfiles").setLevel(logging.WARNING)  # not "1 change detected"
        try:
            for changes in watchfiles.watch(
                *dirs,
                watch_filter=lambda _change, path: bool(self._wanted(path)),
                stop_event=stop,
                recursive=False,
                raise_interrupt=False,
                yield_on_timeout=True,
                rust_timeout=ARM_TIMEOUT_MS,
            ):
                hits = [self._wanted(path) for _change, path in changes]
                if not armed.is_set():  # watches set: what changed before they were
                    hits += [p for p, m in baseline.items() if mtime(p) != m]
                    armed.set()
                    log.info(
                        "reload-on-change: watching %d file(s) in %d directory(ies) with inotify",
                        len(baseline),
                        len(dirs),
                    )
                if hits:
                    with self._lock:
                        self._hits.extend(hits)
                    self._wake()
        except Exception as exc:
            if stop.is_set():
                return
            log.warning("reload-on-change: inotify failed (%s); polling mtimes instead", exc)
            self.failed = True
            self._wake()

    def changed(self) -> str:
        """Why to reload now ("" if nothing changed since the last look)."""
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
        if cfg.preload and not self._preload_tracked:
            self._preload_tracked = True
            self._track(app_source_files())  # the workers reuse the master's modules
        if self.inotify and not self.failed:
            with self._lock:
                hits, self._hits = self._hits, []
            paths = [p for p in hits if p in self.mtimes]
            for path in paths:
                self.mtimes[path] = mtime(path)
            return "%s changed" % paths[-1] if paths else ""
        changed = ""
        for path, old in list(self.mtimes.items()):
            if path.startswith(_TOUCH):
                continue
            m = mtime(path)
            if m != old:
                self.mtimes[path] = m
                changed = "%s changed" % path
        return changed

    def close(self) -> None:
        """Stop the watch thread, if any (it ends within a step of watchfiles)."""
        if self._stop is not None:
            self._stop.set()
