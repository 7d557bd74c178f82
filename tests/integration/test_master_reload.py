"""Zero failed requests across graceful reloads, with a real Mongrel2 and real clients."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from loadgen import LoadGenerator

from m2gate.cli import control as client
from m2gate.ops.pidfile import control_path_for
from m2gate.testing.mongrel2 import Mongrel2

pytestmark = pytest.mark.integration


def status(sock: str) -> dict[str, Any]:
    return client.request(sock, "status", timeout=10)


def wait_generation(sock: str, generation: int, timeout: float = 30.0) -> dict[str, Any]:
    """Until ``generation`` serves alone (every older worker has exited)."""
    deadline = time.monotonic() + timeout
    while True:
        doc = status(sock)
        gens = {w["generation"] for w in doc["workers"]}
        if doc["generation"] == generation and gens == {generation}:
            return doc
        if time.monotonic() > deadline:
            raise AssertionError(
                "generation %d not alone after %ss: %s" % (generation, timeout, doc)
            )
        time.sleep(0.02)


def reload_under_load(
    mongrel2: Mongrel2,
    m2gate_server: Callable[..., Any],
    tmp_path: Path,
    reloads: int,
    threads: int,
) -> None:
    pidfile = tmp_path / "m2gate.pid"
    server = m2gate_server(
        "master_app:application", "-p", "2", "--threads", "4", "--pidfile", str(pidfile)
    )
    sock = control_path_for(str(pidfile))
    first = status(sock)
    pids = {w["pid"] for w in first["workers"]}
    paths = ["/", "/sleep?s=0.02", "/pid", "/sleep?s=0.2"]
    load = LoadGenerator(mongrel2.port, paths, threads=threads).start()
    try:
        load.wait_for(50)
        for i in range(reloads):
            before = load.result.ok
            if i % 2:
                server.signal(signal.SIGHUP)
            else:
                out = subprocess.run(
                    [*server.args[:1], "reload", "--pidfile", str(pidfile)],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert out.returncode == 0, out.stderr
                assert "reloading" in out.stdout
            doc = wait_generation(sock, 2 + i)
            new_pids = {w["pid"] for w in doc["workers"]}
            assert not new_pids & pids, "old workers still serving"
            pids = new_pids
            load.wait_for(150)
            assert load.result.ok > before
    finally:
        result = load.stop()
    doc = status(sock)
    print(
        "\nreload under load: %d requests served, %d failed, %d reloads, durations %s s"
        % (result.ok, len(result.failures), doc["reloads"], doc["reload_durations"])
    )
    assert result.failures == []
    assert doc["reloads"] == reloads
    assert result.ok > 0


def test_reload_five_times_under_load(
    mongrel2: Mongrel2, m2gate_server: Callable[..., Any], tmp_path: Path
) -> None:
    reload_under_load(mongrel2, m2gate_server, tmp_path, reloads=5, threads=8)


@pytest.mark.long
def test_reload_twenty_times_under_heavy_load(
    mongrel2: Mongrel2, m2gate_server: Callable[..., Any], tmp_path: Path
) -> None:
    reload_under_load(mongrel2, m2gate_server, tmp_path, reloads=20, threads=16)


def test_reload_picks_up_new_code(
    mongrel2: Mongrel2, m2gate_server: Callable[..., Any], tmp_path: Path
) -> None:
    app = tmp_path / "app" / "versioned.py"
    app.parent.mkdir()
    app.write_text(_versioned("one"))
    pidfile = tmp_path / "m.pid"
    server = m2gate_server(
        "versioned:application", "-p", "2", "--pidfile", str(pidfile), cwd=app.parent
    )
    assert requests.get(mongrel2.url + "/", timeout=5).text == "one"
    app.write_text(_versioned("two"))
    server.signal(signal.SIGHUP)
    wait_generation(control_path_for(str(pidfile)), 2)
    assert requests.get(mongrel2.url + "/", timeout=5).text == "two"


def _versioned(text: str) -> str:
    return (
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Length', '%d')])\n"
        "    return [b'%s']\n" % (len(text), text)
    )


def test_reload_with_broken_code_keeps_the_old_generation(
    mongrel2: Mongrel2, m2gate_server: Callable[..., Any], tmp_path: Path
) -> None:
    app = tmp_path / "app" / "fragile.py"
    app.parent.mkdir()
    app.write_text(_versioned("good"))
    pidfile = tmp_path / "m.pid"
    server = m2gate_server(
        "fragile:application", "-p", "2", "--pidfile", str(pidfile), cwd=app.parent
    )
    sock = control_path_for(str(pidfile))
    app.write_text("raise ImportError('half-deployed')\n")
    out = subprocess.run(
        [*server.args[:1], "reload", "--wait", "--pidfile", str(pidfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "reload to generation 2 failed" in out.stderr
    doc = status(sock)
    assert doc["generation"] == 1 and len(doc["workers"]) == 2
    assert requests.get(mongrel2.url + "/", timeout=5).text == "good"
    assert "half-deployed" in server.output
    app.write_text(_versioned("fixed"))
    server.signal(signal.SIGHUP)
    wait_generation(sock, 3)
    assert requests.get(mongrel2.url + "/", timeout=5).text == "fixed"
