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
