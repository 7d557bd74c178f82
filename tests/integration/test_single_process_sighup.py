"""A single-process server survives SIGHUP (only the master reloads)."""

from __future__ import annotations

import signal
import time

import requests


def test_sighup_does_not_kill_single_process(m2gate_server) -> None:  # type: ignore[no-untyped-def]
    server = m2gate_server("basic:application")
    assert requests.get(server.url + "/", timeout=10).status_code == 200
    server.signal(signal.SIGHUP)
    time.sleep(0.3)
    assert server.proc.poll() is None
    assert requests.get(server.url + "/", timeout=10).status_code == 200
    assert "SIGHUP is ignored" in server.output
    assert server.stop() == 0


def test_one_worker_process_reloads_on_sighup(m2gate_server) -> None:  # type: ignore[no-untyped-def]
    """``-p 1`` runs a master: SIGHUP replaces its worker and serving goes on."""
    server = m2gate_server("basic:application", "-p", "1")
    assert requests.get(server.url + "/", timeout=10).status_code == 200
    assert "SIGHUP is ignored" not in server.output
    server.signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while "reload done" not in server.output and time.monotonic() < deadline:
        time.sleep(0.1)
    assert requests.get(server.url + "/", timeout=10).status_code == 200
    assert server.proc.poll() is None
    assert "reload done" in server.output
    assert server.stop() == 0
