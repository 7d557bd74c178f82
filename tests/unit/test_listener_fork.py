"""A worker forked while a listener connection is open does not keep it open (ops/listener.py).

The master forks workers while ``--stats``/``--metrics``/control clients may
be connected; a child's copy of such a connection kept it open after the
master had answered, and a client reading to EOF hung.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from m2gate.ops.listener import open_connections
from m2gate.ops.stats import DocumentServer


@pytest.mark.filterwarnings("ignore:.*multi-threaded.*:DeprecationWarning")
def test_a_child_forked_mid_answer_does_not_hold_the_connection(tmp_path: Path) -> None:
    entered, release = threading.Event(), threading.Event()

    def render(accept: str) -> tuple[bytes, str]:
        entered.set()
        release.wait(10)
        return b'{"ok": true}\n', "application/json"

    path = str(tmp_path / "stats.sock")
    server = DocumentServer(path, render, False, "stats").start()
    child_r, child_w = os.pipe()
    pid = 0
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(10)
            client.connect(path)
            assert entered.wait(10)
            assert open_connections() == 1
            pid = os.fork()
            if pid == 0:  # the child lives on, as a worker would, until the test ends
                os.close(child_w)
                os.read(child_r, 1)
                os._exit(0)
            release.set()
            data = b""
            while chunk := client.recv(65536):  # TimeoutError if the child kept it open
                data += chunk
        assert data == b'{"ok": true}\n'
    finally:
        release.set()
        os.close(child_w)  # the child exits
        os.close(child_r)
        if pid:
            os.waitpid(pid, 0)
        server.close()
    assert open_connections() == 0
