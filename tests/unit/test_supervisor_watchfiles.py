"""--reload-on-change through watchfiles (inotify) in supervisor/watch.py, on real files.

The polling path is tests/unit/test_supervisor_watch.py.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from m2gate.config.settings import Config
from m2gate.supervisor.watch import Watcher

pytest.importorskip("watchfiles")

WAIT = 10.0  # seconds: generous bounds for a thread, never a timing assertion


@pytest.fixture
def woken() -> threading.Event:
    return threading.Event()


@pytest.fixture
def watcher(woken: threading.Event) -> Iterator[Watcher]:
    w = Watcher(Config(reload_on_change=True), inotify=True, wake=woken.set)
    assert w.inotify
    try:
        yield w
    finally:
        w.close()


def report(w: Watcher, *paths: Path) -> None:
    w.add_files(json.dumps([str(p) for p in paths]).encode())


def wait_changed(w: Watcher, woken: threading.Event) -> str:
    """The next reason :meth:`Watcher.changed` gives after the thread woke us."""
    assert woken.wait(WAIT), "the watch thread never woke the loop"
    woken.clear()
    return w.changed()


def test_sees_a_write_that_keeps_the_mtime(
    tmp_path: Path, watcher: Watcher, woken: threading.Event
) -> None:
    src = tmp_path / "app.py"
    src.write_text("x = 1\n")
    report(watcher, src)
    assert watcher.armed.wait(WAIT)
    woken.clear()
    st = os.stat(src)
    src.write_text("x = 2\n")
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))  # polling could not tell
    assert wait_changed(watcher, woken) == "%s changed" % src
    assert watcher.changed() == ""


def test_a_change_before_the_watch_is_set_is_not_lost(
    tmp_path: Path, watcher: Watcher, woken: threading.Event
) -> None:
    src = tmp_path / "app.py"
    src.write_text("x = 1\n")
    os.utime(src, (1000.0, 1000.0))
    report(watcher, src)
    os.utime(src, (2000.0, 2000.0))  # at once: perhaps before inotify watches the directory
    assert wait_changed(watcher, woken) == "%s changed" % src


def test_a_file_in_a_new_directory_is_watched_too(
    tmp_path: Path, watcher: Watcher, woken: threading.Event
) -> None:
    first, pkg = tmp_path / "app.py", tmp_path / "pkg"
    first.write_text("")
    pkg.mkdir()
    second = pkg / "views.py"
    second.write_text("")
    report(watcher, first)
    assert watcher.armed.wait(WAIT)
    report(watcher, second)  # a reloaded worker imported more: a new watch
    assert watcher.armed.wait(WAIT)
    woken.clear()
    second.write_text("y = 1\n")
    assert wait_changed(watcher, woken) == "%s changed" % second


def test_a_symlinked_source_is_watched_at_its_target(
    tmp_path: Path, watcher: Watcher, woken: threading.Event
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "app").mkdir()
    target = tmp_path / "real" / "app.py"
    target.write_text("")
    link = tmp_path / "app" / "app.py"
    link.symlink_to(target)
    report(watcher, link)
    assert watcher.armed.wait(WAIT)
    woken.clear()
    target.write_text("z = 1\n")
    assert wait_changed(watcher, woken) == "%s changed" % link


def test_without_watchfiles_it_polls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # import raises ImportError
    w = Watcher(Config(reload_on_change=True), inotify=True)
    assert not w.inotify
    src = tmp_path / "app.py"
    src.write_text("")
    os.utime(src, (1000.0, 1000.0))
    report(w, src)
    os.utime(src, (1001.0, 1001.0))
    assert w.changed() == "%s changed" % src
