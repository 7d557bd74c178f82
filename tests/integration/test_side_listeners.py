"""The stats, metrics and control listeners: loopback by default, never blocked by one client."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from m2gate.testing.mongrel2 import free_port
from support import wait_until

pytestmark = pytest.mark.integration


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                rows = fh.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            addr, _, hexport = fields[1].partition(":")
            if int(hexport, 16) == port and fields[3] == "0A":  # LISTEN
                found.add(addr)
    return found


def test_port_only_binds_loopback_and_an_idle_client_blocks_no_one(
    m2gate_server, tmp_path: Path
) -> None:
    stats, metrics = free_port(), free_port()
    pidfile = tmp_path / "m2gate.pid"
    server = m2gate_server(
        "master_app:application",
        "-p",
        "2",
        "--stats",
        ":%d" % stats,
        "--metrics",
        ":%d" % metrics,
        "--pidfile",
        str(pidfile),
    )
    control = str(tmp_path / "m2gate.sock")
    wait_until(lambda: listening_addresses(stats) and listening_addresses(metrics), "listeners")
    assert listening_addresses(stats) == {"0100007F"}  # 127.0.0.1
    assert listening_addresses(metrics) == {"0100007F"}

    idle = []
    try:
        for _ in range(3):  # each holds a listener that serves one connection at a time
            for family, addr in (
                (socket.AF_INET, ("127.0.0.1", metrics)),
                (socket.AF_UNIX, control),
            ):
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.connect(addr)
                idle.append(sock)

        with socket.create_connection(("127.0.0.1", metrics), timeout=3) as sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.0 200 OK") and b"m2gate_requests_total" in data

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(3)
            sock.connect(control)
            sock.sendall(b'{"command": "status"}\n')
            data = b""
            while b"\n" not in data and (chunk := sock.recv(65536)):
                data += chunk
        assert json.loads(data)["pid"] == server.pid

        with socket.create_connection(("127.0.0.1", stats), timeout=3) as sock:
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert json.loads(data)["pid"] == server.pid
    finally:
        for sock in idle:
            sock.close()
