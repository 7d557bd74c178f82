"""App folders, daemonizing, chroot, privilege drop and the app's environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from m2gate import cli
from m2gate.config.declare import ConfigError
from m2gate.config.loader import load
from m2gate.config.settings import Config
from m2gate.ops import appdir, confine

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def in_child(func: Callable[[], Any]) -> Any:
    """Run ``func`` in a forked child (chroot and setuid cannot be undone); its result."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            result = {"ok": func()}
        except BaseException as exc:
            result = {"error": "%s: %s" % (type(exc).__name__, exc)}
        with os.fdopen(write_fd, "w") as out:
            out.write(json.dumps(result))
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as src:
        data = src.read()
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    saved_path = list(sys.path)
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))
    for key in ("VIRTUAL_ENV", "M2GATE_TEST_A", "M2GATE_TEST_B"):
        monkeypatch.delenv(key, raising=False)
    try:
        yield
    finally:
        sys.path[:] = saved_path


# -- m2gate init ------------------------------------------------------------------


def test_toml_round_trip() -> None:
    values = {
        "app": 'we"ird\\name\u00e9\x7f\t',
        "threads": 4,
        "graceful_timeout": 2.5,
        "daemon": True,
        "env": ["A=1", "B=two words"],
    }
    assert tomllib.loads(appdir.render_toml(values)) == values


def test_init_creates_layout_and_config(tmp_path: Path) -> None:
    path = appdir.init_app_dir(str(tmp_path / "site"), {"threads": 2})
    for sub in ("app", "logs", "run"):
        assert (tmp_path / "site" / sub).is_dir()
    assert tomllib.loads(Path(path).read_text()) == {"threads": 2}
    with pytest.raises(ConfigError, match="already exists"):
        appdir.init_app_dir(str(tmp_path / "site"), {})


def test_init_command_writes_only_given_non_default_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("M2GATE_THREADS", "9")  # the environment is not written
    site = tmp_path / "site"
    code = cli.main(
        [
            "init",
            str(site),
            "hello:app",
            "--send-spec",
            "tcp://127.0.0.1:9997",
            "--threads",
            "1",  # the default: left out
            "--graceful-timeout",
            "5",
            "--env",
            "A=1",
            "--env",
            "B=2",
            "--trust-x-forwarded-for",
        ]
    )
    assert code == 0
    assert "m2gate serve --app-dir" in capsys.readouterr().out
    written = tomllib.loads((site / "m2gate.toml").read_text())
    assert written == {
        "app": "hello:app",
        "send_spec": "tcp://127.0.0.1:9997",
        "graceful_timeout": 5.0,
        "env": ["A=1", "B=2"],
        "trust_x_forwarded_for": True,
    }
    cfg = load({"app_dir": str(site)}, {})
    assert cfg.app == "hello:app" and cfg.env == ["A=1", "B=2"] and cfg.graceful_timeout == 5.0
    assert cfg.chdir == str(site / "app")


def test_init_writes_paths_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    values = {
        "virtualenv": "venv",
        "pythonpath": ["lib", "/abs/lib"],
        "access_log": "-",
        "log_file": "logs/x.log",
        "paste": "config:dev.ini#api",
        "app": "hello:app",  # a module name, not a path
        "server_name": "example.com",
    }
    path = appdir.init_app_dir("site", values)
    assert tomllib.loads(Path(path).read_text()) == {
        "virtualenv": str(tmp_path / "venv"),
        "pythonpath": [str(tmp_path / "lib"), "/abs/lib"],
        "access_log": "-",
        "log_file": str(tmp_path / "logs" / "x.log"),
        "paste": "config:%s#api" % (tmp_path / "dev.ini"),
        "app": "hello:app",
        "server_name": "example.com",
    }


# -- the app's environment --------------------------------------------------------------


def test_env_and_pythonpath(tmp_path: Path, clean_env: None) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    cfg = Config(env=["M2GATE_TEST_A=x=y", "M2GATE_TEST_B="], pythonpath=[str(first), str(second)])
    confine.prepare_app_environment(cfg)
    assert os.environ["M2GATE_TEST_A"] == "x=y" and os.environ["M2GATE_TEST_B"] == ""
    assert sys.path[:2] == [str(first), str(second)]
    with pytest.raises(ConfigError, match=r"pythonpath: .*missing is not a directory"):
        confine.add_pythonpath([str(tmp_path / "missing")])


def test_virtualenv_site_packages_come_first(tmp_path: Path, clean_env: None) -> None:
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    site_packages = venv / "lib" / ("python%d.%d" % sys.version_info[:2]) / "site-packages"
    (site_packages / "only_in_venv_m2gate.py").write_text("WHERE = 'venv'\n")
    confine.activate_virtualenv(str(venv))
    assert sys.path[0] == str(site_packages)
    assert os.environ["VIRTUAL_ENV"] == str(venv)
    assert os.environ["PATH"].startswith(str(venv / "bin"))
    import only_in_venv_m2gate  # type: ignore[import-not-found]

    assert only_in_venv_m2gate.WHERE == "venv"
    del sys.modules["only_in_venv_m2gate"]


def test_virtualenv_errors(tmp_path: Path, clean_env: None) -> None:
    with pytest.raises(ConfigError, match=r"virtualenv: .* is not a directory"):
        confine.activate_virtualenv(str(tmp_path / "none"))
    (tmp_path / "old" / "lib" / "python2.7" / "site-packages").mkdir(parents=True)
    with pytest.raises(
        ConfigError, match=r"has no lib/python3\.\d+/site-packages \(found: python2\.7\)"
    ):
        confine.activate_virtualenv(str(tmp_path / "old"))


# -- daemon, chroot, privileges ------------------------------------------------------


def test_daemonize_detaches(tmp_path: Path) -> None:
    report = tmp_path / "daemon.json"
    code = (
        "import json, os, sys\n"
        "from m2gate.ops.confine import daemonize\n"
        "parent = os.getpid(); sid = os.getsid(0)\n"
        "daemonize()\n"
        "data = dict(parent=parent, pid=os.getpid(), sid=os.getsid(0), old_sid=sid,\n"
        "            stdin=os.readlink('/proc/self/fd/0'))\n"
        "open(sys.argv[1] + '.tmp', 'w').write(json.dumps(data))\n"
        "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(report)], capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 20
    while not report.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    data = json.loads(report.read_text())
    assert data["pid"] != data["parent"]
    assert data["sid"] != data["old_sid"]
    assert data["sid"] != data["pid"]  # not a session leader: cannot get a terminal back
    assert data["stdin"] == "/dev/null"


@root_only
def test_drop_privileges_gives_open_log_files_by_fd_and_chowns_no_path(tmp_path: Path) -> None:
    """The log file we opened is handed over; a path (maybe a planted link) never is."""
    from m2gate import logs

    owned = tmp_path / "m2gate.log"
    secret = tmp_path / "secret"
    secret.write_text("")
    link = tmp_path / "planted"
    link.symlink_to(secret)

    def drop() -> list[int]:
        logs.open_log_file(str(owned))
        confine.drop_privileges("nobody", "")
        return [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), *os.getgroups()]

    result = in_child(drop)
    assert result == {"ok": [65534, 65534, 65534, 65534, 65534]}
    assert (owned.stat().st_uid, owned.stat().st_gid) == (65534, 65534)
    assert (secret.stat().st_uid, secret.stat().st_gid) == (0, 0)


@root_only
def test_drop_to_numeric_ids_and_group() -> None:
    def drop() -> list[int]:
        confine.drop_privileges("65534", "0")
        return [os.getuid(), os.getgid()]

    assert in_child(drop) == {"ok": [65534, 0]}


@root_only
def test_drop_privileges_needs_root() -> None:
    def drop() -> None:
        os.setuid(65534)
        confine.drop_privileges("root", "")

    assert "needs root" in in_child(drop)["error"]


def test_unknown_user_and_group() -> None:
    with pytest.raises(ConfigError, match="no such user"):
        confine.resolve_ids("no-such-user-m2gate", "")
    with pytest.raises(ConfigError, match="no such group"):
        confine.resolve_ids("", "no-such-group-m2gate")


@root_only
def test_chroot_rewrites_paths_inside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jail = tmp_path / "jail"
    (jail / "app").mkdir(parents=True)
    (jail / "logs").mkdir()
    (jail / "marker").write_text("inside")
    monkeypatch.chdir(jail)  # relative settings are relative to the start directory
    cfg = Config(
        chroot=str(jail),
        chdir="app",
        log_file=str(jail / "logs" / "m2gate.log"),
        pythonpath=[str(jail / "app"), "/usr/lib/outside"],
        access_log="-",
    )

    def enter() -> dict[str, Any]:
        confine.enter_chroot(cfg)
        return {
            "marker": Path("/marker").read_text(),
            "cwd": os.getcwd(),
            "chdir": cfg.chdir,
            "log_file": cfg.log_file,
            "pythonpath": cfg.pythonpath,
            "access_log": cfg.access_log,
        }

    assert in_child(enter) == {
        "ok": {
            "marker": "inside",
            "cwd": "/",
            "chdir": "/app",
            "log_file": "/logs/m2gate.log",
            "pythonpath": ["/app", "/usr/lib/outside"],
            "access_log": "-",
        }
    }


def test_chroot_failure_is_a_config_error(tmp_path: Path) -> None:
    result = in_child(lambda: confine.enter_chroot(Config(chroot=str(tmp_path / "missing"))))
    assert "ConfigError: chroot: cannot enter" in result["error"]
