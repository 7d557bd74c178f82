"""Settings from defaults, TOML files, M2GATE_* variables and the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from m2gate.cli import build_parser
from m2gate.config.declare import ConfigError
from m2gate.config.loader import load
from m2gate.config.settings import Config

SPEC = "tcp://127.0.0.1:9997"


def cli_of(*argv: str) -> dict[str, Any]:
    """What main() hands to load(): the parsed serve arguments."""
    args = build_parser().parse_args(["serve", *argv])
    return {k: v for k, v in vars(args).items() if k != "command"}


def write(tmp_path: Path, text: str, name: str = "m2gate.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def error_of(cli: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(cli, environ or {})
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_when_nothing_is_given() -> None:
    cfg = load({}, {})
    assert cfg == Config()
    assert cfg.threads == 1 and cfg.log_level == "info" and cfg.pythonpath == []


@pytest.mark.parametrize("key", ["send_spec", "send-spec"])
def test_toml_keys_as_settings_or_flags(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, '%s = "%s"\nthreads = 4\ntrust-x-forwarded-for = true\n' % (key, SPEC))
    cfg = load(cli_of("-c", path), {})
    assert cfg.send_spec == [SPEC]
    assert cfg.threads == 4
    assert cfg.trust_x_forwarded_for is True
    assert cfg.config == path


def test_unknown_key_names_it_and_lists_accepted_keys(tmp_path: Path) -> None:
    path = write(tmp_path, 'send_spek = "%s"\n' % SPEC)
    message = error_of(cli_of("-c", path))
    assert "unknown key 'send_spek'" in message
    assert "accepted keys:" in message and "send_spec" in message and "threads" in message
    assert path in message


def test_the_config_key_itself_is_not_accepted_in_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'config = "other.toml"\n')
    assert "unknown key 'config'" in error_of(cli_of("-c", path))


def test_same_setting_twice_in_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'send_spec = "%s"\nsend-spec = "%s"\n' % (SPEC, SPEC))
    assert "same setting" in error_of(cli_of("-c", path))


@pytest.mark.parametrize(
    ("line", "accepted"),
    [
        ('threads = "many"', "an integer >= 1"),
        ("threads = 0", "an integer >= 1"),
        ("threads = true", "an integer >= 1"),
        ('send_spec = "http://x"', "tcp://HOST:PORT"),
        ('log_level = "loud"', "one of debug, info, warning, error, critical"),
        ('trust_x_forwarded_for = "maybe"', "true or false"),
        ("pythonpath = [1, 2]", "a list of strings"),
        ('env = ["NOEQUALS"]', "KEY=VALUE"),
        ("graceful_timeout = nan", "a number of seconds >= 0"),
        ('access_log_format = "%(zz)s"', "atoms"),
        ('log_zeromq = "udp://x:1"', "tcp://HOST:PORT or ipc://PATH"),
        ('user = "no-such-user-m2gate"', "an existing user name"),
        ("server_name = {a = 1}", "a string"),
    ],
)
def test_bad_value_names_key_and_accepted_values(tmp_path: Path, line: str, accepted: str) -> None:
    path = write(tmp_path, line + "\n")
    message = error_of(cli_of("-c", path))
    key = line.split("=")[0].strip().strip("[]")
    assert key in message
    assert "accepted:" in message and accepted in message


def test_integers_are_accepted_for_text_settings(tmp_path: Path) -> None:
    path = write(tmp_path, "server_port = 8080\nuser = 0\n")
    cfg = load(cli_of("-c", path), {})
    assert (cfg.server_port, cfg.user) == ("8080", "0")


def test_invalid_toml_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "threads = \n")
    assert "invalid TOML" in error_of(cli_of("-c", path))


def test_missing_config_file(tmp_path: Path) -> None:
    message = error_of(cli_of("-c", str(tmp_path / "nope.toml")))
    assert "nope.toml" in message and "No such file" in message


def test_precedence_defaults_file_env_cli(tmp_path: Path) -> None:
    path = write(tmp_path, "threads = 2\nlog_level = 'debug'\nserver_name = 'file'\n")
    # file over default
    cfg = load(cli_of("-c", path), {})
    assert (cfg.threads, cfg.log_level, cfg.server_name) == (2, "debug", "file")
    # env over file
    environ = {"M2GATE_THREADS": "3", "M2GATE_SERVER_NAME": "env"}
    cfg = load(cli_of("-c", path), environ)
    assert (cfg.threads, cfg.log_level, cfg.server_name) == (3, "debug", "env")
    # CLI over env
    cfg = load(cli_of("-c", path, "--threads", "4"), environ)
    assert (cfg.threads, cfg.server_name) == (4, "env")
    # untouched settings keep their defaults
    assert cfg.max_message == Config().max_message


def test_config_file_named_by_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "threads = 5\n")
    assert load({}, {"M2GATE_CONFIG": path}).threads == 5


def test_booleans_from_every_source(tmp_path: Path) -> None:
    path = write(tmp_path, "daemon = true\n")
    assert load(cli_of("-c", path), {}).daemon is True
    assert load(cli_of("-c", path, "--no-daemon"), {}).daemon is False
    assert load({}, {"M2GATE_DAEMON": "yes"}).daemon is True
    assert load({}, {"M2GATE_DAEMON": "off"}).daemon is False


def test_lists_from_every_source(tmp_path: Path) -> None:
    path = write(tmp_path, 'pythonpath = ["/a", "/b"]\nenv = ["A=1", "B=x,y"]\n')
    cfg = load(cli_of("-c", path), {})
    assert cfg.pythonpath == ["/a", "/b"] and cfg.env == ["A=1", "B=x,y"]
    environ = {"M2GATE_PYTHONPATH": "/c:/d", "M2GATE_ENV": "C=1,2\nD="}
    cfg = load(cli_of("-c", path), environ)
    assert cfg.pythonpath == ["/c", "/d"] and cfg.env == ["C=1,2", "D="]
    cfg = load(cli_of("--pythonpath", "/e", "--pythonpath", "/f", "--env", "E=3"), environ)
    assert cfg.pythonpath == ["/e", "/f"] and cfg.env == ["E=3"]


def test_bad_environment_value_names_the_variable() -> None:
    message = error_of({}, {"M2GATE_THREADS": "lots"})
    assert "M2GATE_THREADS" in message and "an integer >= 1" in message


def test_bad_cli_value_names_the_flag() -> None:
    message = error_of(cli_of("--threads", "-1"))
    assert "--threads" in message and "an integer >= 1" in message


def test_literal_values_are_case_insensitive() -> None:
    assert load(cli_of("--log-level", "DEBUG"), {}).log_level == "debug"


def test_app_dir_reads_its_toml_and_defaults_paths(tmp_path: Path) -> None:
    app_dir = tmp_path / "site"
    (app_dir / "app").mkdir(parents=True)
    write(app_dir, 'app = "hello:app"\nsend_spec = "%s"\n' % SPEC)
    cfg = load(cli_of("--app-dir", str(app_dir)), {})
    assert cfg.app == "hello:app" and cfg.send_spec == [SPEC]
    assert cfg.app_dir == str(app_dir)
    assert cfg.chdir == str(app_dir / "app")
    assert cfg.pidfile == str(app_dir / "run" / "m2gate.pid")
    assert cfg.log_file == str(app_dir / "logs" / "m2gate.log")
    # explicit settings win over the folder's defaults; -c adds to its file
    extra = write(tmp_path, "threads = 7\n", "extra.toml")
    cfg = load(cli_of("--app-dir", str(app_dir), "-c", extra, "--log-file", "/tmp/x.log"), {})
    assert cfg.threads == 7 and cfg.log_file == "/tmp/x.log" and cfg.app == "hello:app"
    # from the environment too
    assert load({}, {"M2GATE_APP_DIR": str(app_dir)}).app == "hello:app"


def test_empty_app_argument_does_not_hide_the_file_app(tmp_path: Path) -> None:
    path = write(tmp_path, 'app = "hello:app"\n')
    assert load(cli_of("", "-c", path), {}).app == "hello:app"


def test_app_dir_must_exist(tmp_path: Path) -> None:
    message = error_of(cli_of("--app-dir", str(tmp_path / "missing")))
    assert "app_dir" in message and "m2gate init" in message


def test_app_dir_is_not_a_file_key(tmp_path: Path) -> None:
    path = write(tmp_path, 'app_dir = "/srv"\n')
    assert "unknown key 'app_dir'" in error_of(cli_of("-c", path))
