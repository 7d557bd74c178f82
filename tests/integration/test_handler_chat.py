"""The raw handler API through a real Mongrel2: examples/chat.py with real clients.

Websocket clients are the ``websockets`` package; HTTP goes through
``http.client`` and a plain socket (to see the connection really close).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from browser import chromium, needs_chromium
from m2gate.testing.mongrel2 import Mongrel2

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHAT = ROOT / "examples" / "chat.py"


class ChatProcess:
    def __init__(self, m2: Mongrel2, log_path: Path) -> None:
        self.m2 = m2
        self.log_path = log_path
        h = m2.handler
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(CHAT), "--send-spec", h.send_spec, "--recv-spec", h.recv_spec],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Short GETs until the handler answers: proves its reply path is connected."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output
            conn = http.client.HTTPConnection("127.0.0.1", self.m2.port, timeout=1)
            try:
                conn.request("GET", "/", headers={"Connection": "close"})
                resp = conn.getresponse()
                if (resp.getheader("Server") or "").startswith("m2gate/"):
                    resp.read()
                    return
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
            time.sleep(0.05)
        raise AssertionError("chat handler never answered:\n" + self.output)

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode


@pytest.fixture
def chat(mongrel2: Mongrel2, tmp_path: Path) -> Iterator[ChatProcess]:
    proc = ChatProcess(mongrel2, tmp_path / "chat.log")
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def ws_url(m2: Mongrel2) -> str:
    return "ws://127.0.0.1:%d/" % m2.port


def test_message_from_one_client_reaches_all_three(mongrel2: Mongrel2, chat: ChatProcess) -> None:
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(connect(ws_url(mongrel2))) for _ in range(3)]
        clients[0].send("hello from client 0")
        for client in clients:
            assert client.recv(timeout=5) == "hello from client 0"
        clients[2].send("and back from 2")
        assert [c.recv(timeout=5) for c in clients] == ["and back from 2"] * 3
        # Ping is answered with a pong by the handler.
        assert clients[1].ping(b"hb").wait(5)
    # The clean closes above went through close_websocket: every client left the room.
    with connect(ws_url(mongrel2)) as alone:
        alone.send("anyone?")
        assert alone.recv(timeout=5) == "anyone?"
        with pytest.raises(TimeoutError):
            alone.recv(timeout=0.3)  # no echo from the departed: sent only to members


def test_broadcast_to_more_than_128_clients(mongrel2: Mongrel2, chat: ChatProcess) -> None:
    """More targets than one Mongrel2 reply may name: deliver splits the message."""

    async def run(count: int) -> list[str]:
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(aconnect(ws_url(mongrel2))) for _ in range(count)
            ]
            await clients[-1].send("to all %d" % count)
            got = await asyncio.gather(*(asyncio.wait_for(c.recv(), 10) for c in clients))
            return [str(g) for g in got]

    assert asyncio.run(run(200)) == ["to all 200"] * 200


def test_http_hello_with_keep_alive(mongrel2: Mongrel2, chat: ChatProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", mongrel2.port, timeout=5)
    try:
        conn.request("GET", "/")
        first = conn.getresponse()
        assert first.status == 200 and b"Chat through Mongrel2" in first.read()
        sock = conn.sock
        conn.request("GET", "/missing")
        second = conn.getresponse()
        assert (second.status, second.read()) == (404, b"Not Found\n")
        assert conn.sock is sock and not second.will_close  # same TCP connection kept
    finally:
        conn.close()
    # HTTP/1.0 without keep-alive: reply_http sends the close reply, so EOF comes.
    with socket.create_connection(("127.0.0.1", mongrel2.port), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := raw.recv(65536):
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in head
    assert body.startswith(b"<!doctype html>")


def test_sigterm_closes_websockets_going_away(mongrel2: Mongrel2, chat: ChatProcess) -> None:
    with connect(ws_url(mongrel2)) as client:
        client.send("last words")
        assert client.recv(timeout=5) == "last words"
        assert chat.stop() == 0
        with pytest.raises(ConnectionClosed) as info:
            client.recv(timeout=5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001


def test_page_says_when_the_server_goes_away() -> None:
    """The page's script has an onclose handler that writes to the page (no browser needed)."""
    spec = importlib.util.spec_from_file_location("chat_example", CHAT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    PAGE: str = module.PAGE
    script = PAGE.split("<script>", 1)[1].split("</script>", 1)[0]
    assert "ws.onclose = (e) => {" in script
    handler = script.split("ws.onclose = (e) => {", 1)[1].split("\n};", 1)[0]
    assert 'statusLine.textContent = "disconnected' in handler and "e.code" in handler
    assert '<p id="status">' in PAGE


@needs_chromium
def test_page_in_chromium_shows_the_server_went_away(
    mongrel2: Mongrel2, chat: ChatProcess, tmp_path: Path
) -> None:
    with chromium(tmp_path / "chromium") as page:
        page.navigate(mongrel2.url + "/")
        page.wait_for("document.getElementById('status').textContent === 'connected'", "connected")
        assert chat.stop() == 0  # closes every websocket with 1001
        status = page.wait_for(
            "(t => t.startsWith('disconnected') && t)"
            "(document.getElementById('status').textContent)",
            "the disconnect",
        )
    assert status == (
        "disconnected: the server went away (code 1001, server stopping)."
        " Reload the page to reconnect."
    )
