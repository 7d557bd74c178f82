"""Bad settings stop ``m2gate`` at start-up with one line and exit 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SPEC = ["--send-spec", "tcp://127.0.0.1:1", "--recv-spec", "tcp://127.0.0.1:2"]


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "m2gate", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("m2gate"), lines
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["serve", "app:x", "--threads", "abc", *SPEC], "--threads"),
        (["serve", "app:x", "--log-level", "loud", *SPEC], "one of debug, info"),
        (["serve", "app:x", "--send-spec", "http://nope"], "tcp://HOST:PORT"),
        (["serve", "app:x", "--env", "NOVALUE", *SPEC], "KEY=VALUE"),
        (["serve", "app:x", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
        (["serve", "app:x", "-c", "/nonexistent/m2gate.toml"], "No such file"),
        (["serve", "app:x", "--app-dir", "/nonexistent/site"], "m2gate init"),
        (["serve", "app:x"], "send_spec: missing"),
        (["serve", "app:x", "--route", "/a", *SPEC], "--mongrel2-db"),
        (["serve", "app:x", "--mongrel2-db", "/nonexistent.sqlite"], "no such file"),
        (["serve", "app:x", "--log-file", "/nonexistent/dir/x.log", *SPEC], "log_file"),
        (["nosuchcommand"], "invalid choice"),
        # checked before --daemon forks, so the terminal still shows the error
        (["serve", "app:x", "--daemon", "--virtualenv", "/nonexistent", *SPEC], "virtualenv"),
        (["serve", "app:x", "--daemon", "--pythonpath", "/nonexistent", *SPEC], "pythonpath"),
        (["serve", "app:x", "--daemon", "--chroot", "/nonexistent", *SPEC], "chroot"),
    ],
)
def test_bad_setting_is_one_line_exit_2(argv: list[str], expected: str) -> None:
    assert expected in one_line_error(run(*argv))


def test_unknown_config_key(tmp_path: Path) -> None:
    path = tmp_path / "m2gate.toml"
    path.write_text('send_spec = "tcp://127.0.0.1:1"\nthreds = 2\n')
    line = one_line_error(run("serve", "app:x", "-c", str(path)))
    assert "unknown key 'threds'" in line and "accepted keys:" in line


def test_app_that_cannot_load_is_one_line_exit_3(tmp_path: Path) -> None:
    line = one_line_error(run("serve", "no_such_module_m2gate:app", *SPEC), code=3)
    assert "no module named 'no_such_module_m2gate'" in line
    (tmp_path / "broken.py").write_text("x = 1\nraise RuntimeError('boom at import')\n")
    line = one_line_error(run("serve", "broken:app", *SPEC, cwd=tmp_path), code=3)
    assert "RuntimeError: boom at import" in line and "broken.py, line 2" in line


def test_init_refuses_bad_values_and_existing_folder(tmp_path: Path) -> None:
    assert "--threads" in one_line_error(run("init", str(tmp_path / "a"), "--threads", "0"))
    assert run("init", str(tmp_path / "b")).returncode == 0
    assert "already exists" in one_line_error(run("init", str(tmp_path / "b")))
