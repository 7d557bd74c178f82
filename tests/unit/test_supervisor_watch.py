"""--touch-reload and --reload-on-change polling (supervisor/watch.py), on real files."""

from __future__ import annotations

import json
import os
from pathlib import Path

from m2gate.config.settings import Config
from m2gate.supervisor.watch import Watcher, app_source_files, mtime


def touch(path: Path, when: float) -> None:
    path.touch()
    os.utime(path, (when, when))


def test_touch_reload_fires_once_per_change(tmp_path: Path) -> None:
    flag = tmp_path / "reload"
    touch(flag, 1000.0)
    w = Watcher(Config(touch_reload=str(flag)))
    assert w.changed() == ""  # the first poll only remembers
    assert w.changed() == ""
    touch(flag, 2000.0)
    assert w.changed() == "touched %s" % flag
    assert w.changed() == ""


def test_touch_reload_counts_creating_the_file(tmp_path: Path) -> None:
    flag = tmp_path / "reload"
    w = Watcher(Config(touch_reload=str(flag)))
    assert w.changed() == ""
    touch(flag, 1000.0)
    assert w.changed().startswith("touched ")


def test_reload_on_change_watches_the_files_workers_report(tmp_path: Path) -> None:
    src = tmp_path / "app.py"
    touch(src, 1000.0)
    w = Watcher(Config(reload_on_change=True))
    w.add_files(json.dumps([str(src), 42]).encode())  # non-strings are ignored
    assert list(w.mtimes) == [str(src)]
    assert w.changed() == ""
    touch(src, 1001.0)
    assert w.changed() == "%s changed" % src
    assert w.changed() == ""


def test_files_are_ignored_without_reload_on_change(tmp_path: Path) -> None:
    src = tmp_path / "app.py"
    touch(src, 1000.0)
    w = Watcher(Config())
    w.add_files(json.dumps([str(src)]).encode())
    touch(src, 1001.0)
    assert w.changed() == ""


def test_bad_loaded_frames_are_ignored() -> None:
    w = Watcher(Config(reload_on_change=True))
    w.add_files(b"not json")
    w.add_files(b'{"a": 1}')
    assert w.mtimes == {}


def test_missing_file_has_mtime_zero(tmp_path: Path) -> None:
    assert mtime(str(tmp_path / "nope")) == 0.0


def test_app_source_files_skip_m2gate_and_the_stdlib() -> None:
    files = app_source_files()
    assert __file__ in files or os.path.abspath(__file__) in files
    assert not any("/m2gate/supervisor/" in f for f in files)
    assert not any(f == os.__file__ for f in files)
