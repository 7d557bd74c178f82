"""What reaches the master's PULL is Mongrel2's, and a probe notice is its own master's.

Issue 9, item 9: probe ids in a fixed range shared by every master (one
master's probe notice marked another's worker ready too early); PULLs that
took frames of any size from whoever was bound at the spec while Mongrel2
was down; a late upload-done answered with a stray 400.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from m2gate.cli import control as client
from m2gate.ops.pidfile import control_path_for
from m2gate.testing.mongrel2 import HandlerSpec, Mongrel2, free_port
from support import pid_alive, wait_until

pytestmark = pytest.mark.integration

Factory = Callable[..., Any]


def statuses(pidfile: Path) -> list[str]:
    """The workers' statuses; [] while the master's control socket is not up yet."""
    try:
        doc = client.request(control_path_for(str(pidfile)), "status", timeout=10)
    except client.NotRunning:
        return []
    return [w["status"] for w in doc["workers"]]


def test_another_masters_probe_notices_never_make_a_worker_ready(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    """Two masters on one handler: the slow one's workers stay starting until loaded.

    Then both serve, and one fleet's reload (new workers probing) or death
    leaves the other's workers ready and serving.
    """
    slow_pid = tmp_path / "slow.pid"
    gate = tmp_path / "slow-may-load"
    m2gate_server(
        "frontend_app:application", "-p", "3", "--pidfile", str(slow_pid),
        env={"FRONTEND_APP_LOAD_GATE": str(gate)}, wait=False,
    )  # fmt: skip
    wait_until(lambda: len(statuses(slow_pid)) == 3, what="slow workers")
    # The fast master's workers probe (Mongrel2 hands every notice round robin
    # to both masters' PULLs) until each is ready.
    fast_pid = tmp_path / "fast.pid"
    # Not waited for by a request: Mongrel2 could push that one to the gated
    # slow fleet, which answers nothing until the test opens its gate below.
    fast_server = m2gate_server(
        "frontend_app:application", "-p", "3", "--pidfile", str(fast_pid), wait=False
    )
    wait_until(
        lambda: (st := statuses(fast_pid)) and set(st) <= {"idle", "busy"},
        what="fast workers ready",
    )
    time.sleep(0.5)
    assert statuses(slow_pid) == ["starting"] * 3  # still importing: not ready
    gate.touch()
    # Once both are up, both serve, and neither one's reload or death disturbs the other.
    wait_until(
        lambda: (st := statuses(slow_pid)) and set(st) <= {"idle", "busy"},
        what="slow workers ready",
        timeout=40,
    )
    slow, fast = pids(slow_pid), pids(fast_pid)
    seen: set[int] = set()
    wait_until(
        lambda: seen.update(answered_by(mongrel2, 4)) or (seen & slow and seen & fast),
        what="both fleets serving",
    )
    # The fast fleet reloads: its new workers' probe notices reach the slow master too.
    client.request(control_path_for(str(fast_pid)), "reload", timeout=10)
    wait_until(
        lambda: (
            (st := statuses(fast_pid))
            and len(st) == 3
            and set(st) <= {"idle", "busy"}
            and pids(fast_pid).isdisjoint(fast)
        ),
        what="the fast fleet reloaded",
    )
    assert pids(slow_pid) == slow and set(statuses(slow_pid)) <= {"idle", "busy"}
    # Killed outright (master and workers): the other fleet alone serves what comes next.
    os.killpg(fast_server.pid, signal.SIGKILL)
    fast_server.proc.wait(timeout=10)
    wait_until(lambda: not any(pid_alive(p) for p in fast), what="the fast fleet gone")

    # A request Mongrel2 pushes to the dead fleet's PULL before it sees the
    # TCP close is lost (the dead-host case, test_scale_out.py): retry until
    # every answer of a round comes from the fleet that is left.
    def slow_alone() -> bool:
        try:
            return set(answered_by(mongrel2, 8, timeout=3.0)) <= slow
        except TimeoutError:
            return False

    wait_until(slow_alone, what="the slow fleet alone serving", timeout=60)
    assert set(statuses(slow_pid)) <= {"idle", "busy"}


def pids(pidfile: Path) -> set[int]:
    doc = client.request(control_path_for(str(pidfile)), "status", timeout=10)
    return {int(w["pid"]) for w in doc["workers"]}


def answered_by(m2: Mongrel2, n: int, timeout: float = 15.0) -> list[int]:
    """``n`` requests, one connection each: the pid that answered each (its own answer)."""
    out = []
    for i in range(n):
        tag = b"t%d-%d" % (time.monotonic_ns(), i)
        with socket.create_connection(("127.0.0.1", m2.port), timeout=timeout) as sock:
            sock.sendall(b"GET /tag?tag=%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % tag)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200") and b"answer for %s from " % tag in data, data
        out.append(int(data.rsplit(b" from ", 1)[1].split()[0]))
    return out


def test_pulls_refuse_oversized_frames_from_whoever_holds_the_spec(
    m2gate_server: Factory, tmp_path: Path
) -> None:
    """While Mongrel2 is down, a stranger binds its send_spec and pushes 64 MiB."""
    spec = HandlerSpec(
        send_spec="tcp://127.0.0.1:%d" % free_port(),
        recv_spec="tcp://127.0.0.1:%d" % free_port(),
    )
    m2 = Mongrel2(tmp_path / "m2", handlers=[spec], port=free_port())
    ctx: zmq.Context[Any] = zmq.Context()
    stranger = ctx.socket(zmq.PUSH)
    stranger.setsockopt(zmq.LINGER, 0)
    stranger.setsockopt(zmq.SNDTIMEO, 10000)  # ZeroMQ dropped us: wait for the reconnect
    stranger.bind(spec.send_spec)
    try:
        server = m2gate_server(
            "frontend_app:application", "--threads", "2", m2=m2, handler=spec, wait=False
        )
        big = b"%s 1 / " % spec.send_ident.encode() + b"x" * (64 * 1024 * 1024)
        stranger.send(big)
        time.sleep(2.0)  # ZeroMQ dropped the stranger; our PULL must connect again
        stranger.send(b"%s 2 / 3:abc," % spec.send_ident.encode())  # small, malformed
        time.sleep(1.0)
        stranger.close(linger=0)
        assert server.proc.poll() is None
        # The small one was read (and dropped as malformed); the big one never was.
        wait_until(lambda: "dropped malformed message" in server.output, what="small frame")
        assert "67108" not in server.output, server.output
        m2.start()
        server.wait_ready("/")  # and it hears the real Mongrel2 once it is back
    finally:
        m2.stop()
        ctx.destroy(linger=0)


@pytest.mark.parametrize("mode", ["single", "master"])
def test_a_late_upload_done_gets_no_stray_400(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path, mode: str
) -> None:
    args = ["--threads", "2", "--upload-dir", str(mongrel2.upload_dir)]
    if mode == "master":
        args += ["-p", "1", "--pidfile", str(tmp_path / "m.pid")]
    server = m2gate_server("frontend_app:application", *args)
    size = 200 * 1024  # over limits.content_length: an upload through a temp file
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", mongrel2.port), timeout=10) as sock:
            sock.sendall(
                b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
                + b"u" * size
            )
            sock.settimeout(10)
            data = b""
            try:
                while b"read %d" % size not in data:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                # What else comes on this connection: a stray reply to the
                # upload-done would follow the answer within milliseconds.
                sock.settimeout(1.0)
                while chunk := sock.recv(65536):
                    data += chunk
            except TimeoutError:
                pass
            assert data.count(b"HTTP/1.1 ") == 1 and b"400" not in data, data
    time.sleep(0.5)
    assert "upload headers on an ordinary request" not in server.output, server.output
