"""The demo's /stream (examples/hello.py) arrives line by line, also in Chromium.

The app is held after line 1 until the test has seen line 1 (tests/apps/
hello_gated.py), so "line 1 arrived before line 2 was written" is a fact of
ordering, not of clocks. Chrome holds back a short text/plain body to sniff
its type unless the response says ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from browser import chromium, needs_chromium

pytestmark = pytest.mark.integration

Start = Callable[..., Any]


def test_stream_lines_arrive_one_by_one(m2gate_server: Start, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    server = m2gate_server("hello_gated:application", env={"M2GATE_TEST_GATE": str(gate)})
    conn = http.client.HTTPConnection("127.0.0.1", server.m2.port, timeout=20)
    try:
        conn.request("GET", "/stream")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("X-Content-Type-Options") == "nosniff"
        assert resp.getheader("Content-Type") == "text/plain; charset=utf-8"
        assert resp.getheader("Transfer-Encoding") == "chunked"
        first = resp.readline()  # the app waits for the gate: only line 1 exists yet
        assert first.startswith(b"line 1 of 10 at ")
        assert not gate.exists()
        gate.touch()
        rest = resp.read().splitlines()
    finally:
        conn.close()
    assert [line.split(b" at ")[0] for line in rest] == [b"line %d of 10" % i for i in range(2, 11)]


@needs_chromium
def test_stream_lines_show_one_by_one_in_chromium(m2gate_server: Start, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    server = m2gate_server("hello_gated:application", env={"M2GATE_TEST_GATE": str(gate)})
    with chromium(tmp_path / "chromium") as page:
        page.navigate(server.url + "/stream")
        page.wait_for("document.body && document.body.innerText.includes('line 1 of 10')", "line 1")
        assert "line 2 of 10" not in page.text()
        gate.touch()
        page.wait_for("document.body.innerText.includes('line 10 of 10')", "line 10")
