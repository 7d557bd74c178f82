"""Every subcommand's --help renders (argparse %-formats help text)."""

from __future__ import annotations

import pytest

from m2gate.cli import main


@pytest.mark.parametrize("command", ["serve", "init", "status", "stop", "reload"])
def test_help_renders(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: m2gate " + command in out


def test_serve_help_names_env_vars(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "M2GATE_SEND_SPEC" in out
    assert "%(NAME)s" in out  # the access log format help keeps its literal %


def _serve_help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    # Undo argparse's wrapping so each option's help reads as one line.
    return " ".join(capsys.readouterr().out.split())


def test_serve_help_shows_choices(capsys: pytest.CaptureFixture[str]) -> None:
    out = _serve_help(capsys)
    assert "--interface {auto,wsgi,asgi}" in out
    assert "--worker-class {threads,gevent}" in out
    assert "--log-level {debug,info,warning,error,critical}" in out
    assert "--interface INTERFACE" not in out and "--worker-class WORKER_CLASS" not in out


def test_serve_help_shows_each_default(capsys: pytest.CaptureFixture[str]) -> None:
    out = _serve_help(capsys)
    for shown in (
        "(default: auto) [env M2GATE_INTERFACE]",
        "(default: threads) [env M2GATE_WORKER_CLASS]",
        "(default: 1) [env M2GATE_THREADS]",
        "(default: 30.0) [env M2GATE_GRACEFUL_TIMEOUT]",
        "(default: false) [env M2GATE_RELOAD_ON_CHANGE]",
        "(default: none) [env M2GATE_PIDFILE]",
    ):
        assert shown in out
    # A help text that explains its own default is not given a second, wrong one.
    assert "(default: the request's sender). [env M2GATE_RECV_IDENT]" in out
    # Every setting's help (the text up to its own "[env ...]") says its default.
    for chunk in out.split("[env M2GATE_")[:-1]:
        assert "default:" in chunk.rsplit("]", 1)[-1], chunk[-200:]


def test_choice_values_are_still_checked_by_the_loader() -> None:
    """The choices are a metavar only: convert() keeps its one-line error (and lowercasing)."""
    from m2gate.config.declare import ConfigError
    from m2gate.config.loader import load

    assert load({"interface": "WSGI"}, environ={}).interface == "wsgi"
    with pytest.raises(ConfigError, match="interface; accepted: one of auto, wsgi, asgi"):
        load({"interface": "cgi"}, environ={})


@pytest.mark.parametrize("command", ["status", "stop", "reload"])
def test_control_commands_show_their_timeout_default(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--timeout SECONDS" in out
    assert "(default: 60.0)" in out
