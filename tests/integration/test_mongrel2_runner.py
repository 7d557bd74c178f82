"""The Mongrel2 runner itself, proven with a naive pyzmq handler in a thread."""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import zmq

from m2gate.testing.mongrel2 import (
    HandlerSpec,
    Mongrel2,
    Mongrel2Error,
    _tns,
    _untns,
    free_port,
)
from support import pid_alive

pytestmark = pytest.mark.integration


class NaiveHandler(threading.Thread):
    """Answers every request with ``handled <PATH>``; ignores control messages."""

    def __init__(self, spec: HandlerSpec) -> None:
        super().__init__(daemon=True)
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.connect(spec.send_spec)
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.connect(spec.recv_spec)
        self.stopping = threading.Event()
        self.seen: list[bytes] = []

    def run(self) -> None:
        while not self.stopping.is_set():
            if not self.pull.poll(50):
                continue
            msg = self.pull.recv()
            self.seen.append(msg)
            sender, conn_id, path, _rest = msg.split(b" ", 3)
            if path == b"@*":
                continue
            body = b"handled " + path
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
            self.pub.send(b"%s %d:%s, %s" % (sender, len(conn_id), conn_id, head + body))

    def close(self) -> None:
        if self.ctx.closed:
            return
        self.stopping.set()
        self.join(5)
        self.pull.close(0)
        self.pub.close(0)
        self.ctx.term()


@pytest.fixture
def handler(mongrel2: Mongrel2) -> Iterator[NaiveHandler]:
    h = NaiveHandler(mongrel2.handler)
    h.start()
    time.sleep(0.3)  # let the PUB connect: earlier replies would be dropped
    yield h
    h.close()


def get_with_retry(url: str, deadline: float = 10.0) -> requests.Response:
    """GET with short timeouts: a reply can be lost while ZeroMQ reconnects."""
    end = time.monotonic() + deadline
    while True:
        try:
            return requests.get(url, timeout=1.0)
        except requests.RequestException:
            if time.monotonic() > end:
                raise


def test_request_reply_response(mongrel2: Mongrel2, handler: NaiveHandler) -> None:
    resp = requests.get(mongrel2.url + "/hello?x=1", timeout=5)
    assert resp.status_code == 200
    assert resp.text == "handled /hello"
    first = handler.seen[0]
    # The startup probe must not leave a trace at the handler.
    assert first.startswith(mongrel2.handler.send_ident.encode() + b" ")
    assert b" /hello " in first


def test_layout_and_properties(mongrel2: Mongrel2) -> None:
    assert mongrel2.url == f"http://127.0.0.1:{mongrel2.port}"
    assert mongrel2.db_path.is_file()
    assert mongrel2.upload_dir == mongrel2.workdir / "tmp"
    assert mongrel2.upload_dir.is_dir()
    assert (mongrel2.workdir / "logs").is_dir() and (mongrel2.workdir / "run").is_dir()
    conf = mongrel2.conf_path.read_text()
    assert "chroot" not in conf
    assert '"server.daemonize": 0' in conf
    assert '"limits.content_length": 20480' in conf
    spec = mongrel2.handler
    assert spec.send_spec.startswith("tcp://127.0.0.1:")
    assert spec.recv_spec.startswith("tcp://127.0.0.1:")
    assert spec.send_spec != spec.recv_spec
    assert mongrel2.pid is not None and pid_alive(mongrel2.pid)


def test_restart_applies_settings(mongrel2: Mongrel2, handler: NaiveHandler) -> None:
    assert get_with_retry(mongrel2.url + "/before").text == "handled /before"
    old_pid = mongrel2.pid
    assert old_pid is not None
    mongrel2.restart({"limits.content_length": 100})
    assert not pid_alive(old_pid)
    assert mongrel2.pid not in (None, old_pid)
    assert '"limits.content_length": 100' in mongrel2.conf_path.read_text()
    assert get_with_retry(mongrel2.url + "/after").text == "handled /after"


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    m2 = Mongrel2(tmp_path).start()
    pid = m2.pid
    assert pid is not None and pid_alive(pid)
    m2.stop()
    assert not pid_alive(pid)
    assert m2.pid is None and not m2.running
    m2.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", m2.port), timeout=1).close()


def test_context_manager_stops_on_error(tmp_path: Path) -> None:
    pid = None
    with pytest.raises(RuntimeError, match="boom"), Mongrel2(tmp_path) as m2:
        pid = m2.pid
        raise RuntimeError("boom")
    assert pid is not None and not pid_alive(pid)


def test_two_handlers_json_and_tnetstring(tmp_path: Path) -> None:
    specs = [HandlerSpec(route="/"), HandlerSpec(route="/json/", protocol="json")]
    with Mongrel2(tmp_path / "two", handlers=specs) as m2:
        ctx = zmq.Context()
        try:
            pull = ctx.socket(zmq.PULL)
            pull.connect(m2.handlers[1].send_spec)
            sock = socket.create_connection(("127.0.0.1", m2.port), timeout=5)
            sock.sendall(b"GET /json/x HTTP/1.1\r\nHost: h\r\n\r\n")
            assert pull.poll(5000)
            msg = pull.recv()
            sock.close()
            assert msg.startswith(m2.handlers[1].send_ident.encode() + b" ")
            assert b'"PATTERN":"/json/"' in msg
        finally:
            ctx.destroy(0)


def test_startup_failure_reports_error_log(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        m2 = Mongrel2(tmp_path, port=port, startup_timeout=5)
        with pytest.raises(Mongrel2Error, match="Can't announce"):
            m2.start()
        assert m2.pid is None


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.mongrel2(
    handlers=[HandlerSpec(route="/app/", protocol="json")],
    settings={"download.flow_control": 1, "limits.content_length": 1024},
)
def test_marker_configures_fixture(mongrel2: Mongrel2) -> None:
    conf = mongrel2.conf_path.read_text()
    assert '"download.flow_control": 1' in conf
    assert '"limits.content_length": 1024' in conf
    assert [h.route for h in mongrel2.handlers] == ["/app/"]
    assert mongrel2.handler.protocol == "json"


def keep_alive_clients(m2: Mongrel2, count: int) -> list[http.client.HTTPConnection]:
    """``count`` clients that made one request each and keep their connection open, idle."""
    clients = []
    for i in range(count):
        conn = http.client.HTTPConnection("127.0.0.1", m2.port, timeout=5)
        conn.request("GET", "/idle-%d" % i)
        resp = conn.getresponse()
        assert resp.read() == b"handled /idle-%d" % i and not resp.will_close
        clients.append(conn)
    return clients


def test_stop_with_idle_keep_alive_connections_does_not_crash_mongrel2(
    mongrel2: Mongrel2, handler: NaiveHandler, caplog: pytest.LogCaptureFixture
) -> None:
    """Mongrel2 1.12 segfaulted on stop with a client connected; the harness closes them first."""
    caplog.set_level("INFO", logger="m2gate.testing.mongrel2")
    clients = keep_alive_clients(mongrel2, 3)
    assert len(mongrel2.connections()) == 3
    handler.close()  # the usual order: the app server first (with it there, no crash)
    try:
        mongrel2.stop()
    finally:
        for conn in clients:
            conn.close()
    assert mongrel2.returncode == 0
    assert "Task is already added" not in mongrel2.error_log.read_text()
    assert "closed 3 client connection(s) before stopping mongrel2" in caplog.text
    assert "crashed" not in caplog.text


def test_a_crash_on_stop_is_explained(
    mongrel2: Mongrel2,
    handler: NaiveHandler,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the connections cannot be closed first, the crash is real and says why."""

    def unreachable(rounds: int = 3) -> int:
        raise Mongrel2Error("control port unreachable (test)")

    monkeypatch.setattr(mongrel2, "close_connections", unreachable)
    clients = keep_alive_clients(mongrel2, 1)
    handler.close()
    try:
        mongrel2.stop()
    finally:
        clients[0].close()
    # Mongrel2 1.12's own bug; if this fails, this Mongrel2 no longer has it.
    assert mongrel2.returncode == -signal.SIGSEGV, "mongrel2 did not crash: bug fixed?"
    assert "Task is already added" in mongrel2.error_log.read_text()
    assert "could not close mongrel2's connections before stopping" in caplog.text
    assert "crashed while stopping (SIGSEGV): Mongrel2 1.12 does when a client" in caplog.text


def test_control_port_tnetstrings() -> None:
    """The harness's own codec for the control port (it imports nothing of m2gate)."""
    request = ["kill", {"id": 12, "what": "net"}]
    assert _tns(request) == b"34:4:kill,23:2:id,2:12#4:what,3:net,}]"
    assert _untns(_tns(request)) == (request, 38)
    assert _untns(b"15:4:true!0:~2:-3#]")[0] == [True, None, -3]
    with pytest.raises(ValueError):
        _untns(b"3:abc?")
