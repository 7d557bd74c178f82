"""The ``m2gate_server`` fixture: a real ``m2gate serve`` behind a real Mongrel2."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests

from m2gate.testing.mongrel2 import Mongrel2
from support import pid_alive

pytestmark = pytest.mark.integration


def test_serves_basic_app_and_stops(mongrel2: Mongrel2, m2gate_server: Callable[..., Any]) -> None:
    server = m2gate_server("basic:application")
    resp = requests.get(mongrel2.url + "/", timeout=5)
    assert resp.status_code == 200
    assert resp.text == "Hello, world!\n"
    echo = requests.post(mongrel2.url + "/echo", data=b"ping", timeout=5)
    assert echo.content == b"ping"
    pid = server.pid
    assert server.stop() == 0
    assert not pid_alive(pid)
    assert server.stop() == 0  # idempotent


def test_file_path_app_and_threads(mongrel2: Mongrel2, m2gate_server: Callable[..., Any]) -> None:
    m2gate_server("tests/apps/basic.py:app", "--threads", "2")
    env = requests.get(mongrel2.url + "/environ?a=b", timeout=5).json()
    assert env["QUERY_STRING"] == "a=b"
    assert env["REQUEST_METHOD"] == "GET"
