"""ASGI apps under the master (``--interface asgi -p N``) against a real Mongrel2.

The master drives an ASGI worker exactly as a threaded one (its dispatch,
502/504 on death, harakiri, graceful stop, reload); these tests check that
what users of ``gunicorn -k uvicorn.workers.UvicornWorker`` expect holds:
several processes, many requests at once in each, websockets kept on the
worker that holds them, reloads under load without a lost request.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import websockets
from loadgen import LoadGenerator
from websockets.asyncio.client import connect
from wsgi_http import read_events

from m2gate.cli import control as client
from m2gate.ops.pidfile import control_path_for, pidfile_for_app_dir
from m2gate.testing.mongrel2 import Mongrel2
from support import in_background, m2gate_command, wait_until

pytestmark = pytest.mark.integration

Factory = Callable[..., Any]
APP = "asgi_master_app:app"


class Served:
    """A master started with a pidfile, and its control socket."""

    def __init__(self, server: Any, pidfile: Path) -> None:
        self.server = server
        self.pidfile = pidfile
        self.sock = control_path_for(str(pidfile))

    def status(self) -> dict[str, Any]:
        return client.request(self.sock, "status", timeout=10)

    def worker_pids(self) -> set[int]:
        return {w["pid"] for w in self.status()["workers"]}

    def all_ready(self) -> dict[str, Any]:
        doc: dict[str, Any] = wait_until(
            lambda: (
                (d := self.status()) and all(w["status"] != "starting" for w in d["workers"]) and d
            ),
            what="every worker ready",
        )
        return doc

    def in_flight(self, prefix: str, count: int = 1) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            doc = self.status()
            n = sum(
                1 for w in doc["workers"] for e in w["in_flight"] if e["request"].startswith(prefix)
            )
            return doc if n >= count else None

        doc: dict[str, Any] = wait_until(check, what="%d x %s in flight" % (count, prefix))
        return doc

    def idle(self) -> dict[str, Any]:
        """Until the master counts nothing in flight on any worker."""
        doc: dict[str, Any] = wait_until(
            lambda: (d := self.status()) and not any(w["in_flight"] for w in d["workers"]) and d,
            what="nothing in flight",
        )
        return doc


def start(m2gate_server: Factory, tmp_path: Path, *args: str, app: str = APP, **kw: Any) -> Served:
    pidfile = tmp_path / "m2gate.pid"
    server = m2gate_server(app, "--interface", "asgi", *args, "--pidfile", str(pidfile), **kw)
    return Served(server, pidfile)


def get(m2: Mongrel2, path: str, timeout: float = 20.0) -> requests.Response:
    return requests.get(m2.url + path, timeout=timeout)


def ws_url(m2: Mongrel2, path: str = "/ws") -> str:
    return m2.url.replace("http://", "ws://") + path


def run(coro: Callable[[], Awaitable[None]], timeout: float = 60.0) -> None:
    asyncio.run(asyncio.wait_for(coro(), timeout))


# -- processes, concurrency ----------------------------------------------------------


def test_two_asgi_workers_serve_with_their_own_pids_and_lifespans(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "2")
    doc = s.all_ready()
    pids = {w["pid"] for w in doc["workers"]}
    assert len(pids) == 2 and s.server.pid not in pids
    assert all(w["threads"] == 1000 for w in doc["workers"])  # asgi_connections' default
    seen = {int(get(mongrel2, "/pid").text) for _ in range(40)}
    assert seen == pids  # the least loaded worker first, round robin on ties
    assert {get(mongrel2, "/lifespan").text for _ in range(10)} == {"True"}
    doc = wait_until(lambda: (d := s.status())["requests"] >= 50 and d, what="50 requests")
    assert sum(w["requests"] for w in doc["workers"]) >= 50


def test_one_asgi_worker_serves_many_requests_at_once(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "1", "--asgi-connections", "20")
    s.all_ready()
    threads = [in_background(lambda: get(mongrel2, "/sleep?s=3")) for _ in range(12)]
    doc = s.in_flight("GET /sleep", 12)  # all of them in one worker at the same time
    assert len(doc["workers"]) == 1 and doc["queued"] == 0
    for t, _ in threads:
        t.join(30)
    bodies = [out[0] for _, out in threads]
    assert all(getattr(r, "status_code", None) == 200 for r in bodies), bodies
    s.idle()


def test_asgi_connections_bounds_a_worker_and_the_master_holds_the_rest(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "1", "--asgi-connections", "2", "--prefetch", "0")
    s.all_ready()
    threads = [in_background(lambda: get(mongrel2, "/sleep?s=2")) for _ in range(5)]
    doc = wait_until(lambda: (d := s.status())["queued"] == 3 and d, what="3 requests queued")
    assert len(doc["workers"][0]["in_flight"]) == 2
    for t, _ in threads:
        t.join(40)
    assert all(getattr(out[0], "status_code", None) == 200 for _, out in threads)


def test_bad_asgi_connections_fails_with_one_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [*m2gate_command(), "serve", APP, "--interface", "asgi", "--asgi-connections", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if "asgi_connections" in line]
    assert len(errors) == 1 and ">= 1" in errors[0], out.stderr


def test_auto_detected_asgi_app_under_a_master_asks_for_interface_asgi(
    mongrel2: Mongrel2, m2gate_server: Factory
) -> None:
    server = m2gate_server(APP, "-p", "2", wait=False)
    assert server.proc.wait(timeout=30) == 3
    errors = [line for line in server.output.splitlines() if line.startswith("m2gate: error:")]
    assert len(errors) == 1, server.output
    assert "--interface asgi" in errors[0]


# -- websockets ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [(), ("--dispatch", "round-robin"), ("--sticky", "conn")], ids=str)
def test_websocket_echo_through_the_master_stays_on_its_worker(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path, mode: tuple[str, ...]
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "2", *mode)
    pids = {w["pid"] for w in s.all_ready()["workers"]}

    async def one(i: int) -> int:
        async with connect(ws_url(mongrel2)) as ws:
            first = 0
            for j in range(20):
                await ws.send("m%d-%d" % (i, j))
                pid, text = (await ws.recv()).split(" ", 1)
                assert text == "m%d-%d" % (i, j)
                first = first or int(pid)
                assert int(pid) == first  # every frame went to the worker holding it
            return first

    served: list[int] = []

    async def go() -> None:
        served.extend(await asyncio.gather(*(one(i) for i in range(6))))

    run(go)
    assert set(served) <= pids
    if "--sticky" not in mode:  # (sticky: where each connection hashes)
        assert set(served) == pids  # six websockets spread over both workers
    # Every frame the master counted was reported done: nothing left in flight.
    doc = s.idle()
    assert all(w["status"] == "idle" for w in doc["workers"])
    assert get(mongrel2, "/").status_code == 200


def test_open_websocket_outlives_harakiri(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "1", "--harakiri", "1")
    s.all_ready()

    async def go() -> None:
        async with connect(ws_url(mongrel2), ping_interval=None) as ws:
            await ws.send("before")
            pid = (await ws.recv()).split(" ", 1)[0]
            await asyncio.sleep(3.5)  # well past the limit, quiet both ways
            await ws.send("after")
            assert await ws.recv() == "%s after" % pid

    run(go)
    assert s.status()["harakiri"] == 0


def test_killed_worker_closes_its_open_websocket(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "2")
    s.all_ready()

    async def go() -> None:
        async with connect(ws_url(mongrel2), ping_interval=None) as ws:
            await ws.send("hi")
            pid = int((await ws.recv()).split(" ", 1)[0])
            os.kill(pid, signal.SIGKILL)
            # The master closes the connection (its 101 went out): no HTTP 502 in it.
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 30)

    run(go)
    wait_until(lambda: len(s.worker_pids()) == 2, what="a replacement worker")
    assert get(mongrel2, "/").status_code == 200


def test_starlette_app_with_two_workers(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    s = start(
        m2gate_server, tmp_path, "-p", "2", app="starlette_app:app",
        env={"M2GATE_TEST_STATE": str(state)},
    )  # fmt: skip
    s.all_ready()
    for _ in range(10):
        resp = get(mongrel2, "/")
        assert resp.status_code == 200 and resp.text
    echoed = requests.post(mongrel2.url + "/echo", data=b"x" * 5000, timeout=20)
    assert echoed.status_code == 200 and echoed.content == b"x" * 5000

    async def go() -> None:
        async with connect(ws_url(mongrel2)) as ws:
            await ws.send("hello starlette")
            assert await ws.recv() == "hello starlette"

    run(go)
    s.idle()
    assert read_events(state / "lifespan") == ["startup", "startup"]  # one per worker
    s.server.signal(signal.SIGTERM)
    assert s.server.proc.wait(20) == 0
    assert read_events(state / "lifespan") == ["startup", "startup", "shutdown", "shutdown"]


def test_lifespan_startup_failure_in_a_worker_stops_the_master_with_one_line(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    server = m2gate_server(
        "starlette_app:app", "--interface", "asgi", "-p", "2", wait=False,
        env={"M2GATE_TEST_FAIL_STARTUP": "1", "M2GATE_TEST_STATE": str(tmp_path)},
    )  # fmt: skip
    assert server.proc.wait(timeout=30) == 3
    errors = [line for line in server.output.splitlines() if line.startswith("m2gate: error:")]
    assert len(errors) == 1, server.output
    assert "lifespan startup failed: RuntimeError: database unreachable" in errors[0]


# -- failures: death, harakiri ------------------------------------------------------------


def test_killed_worker_answers_502_and_is_replaced(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "2")
    before = {w["pid"] for w in s.all_ready()["workers"]}
    t, out = in_background(lambda: get(mongrel2, "/sleep?s=60"))
    doc = s.in_flight("GET /sleep")
    victim = next(w["pid"] for w in doc["workers"] if w["in_flight"])
    os.kill(victim, signal.SIGKILL)
    t.join(30)
    assert out and getattr(out[0], "status_code", None) == 502, out
    pids = wait_until(
        lambda: (p := s.worker_pids()) and len(p) == 2 and victim not in p and p,
        what="a replacement worker",
    )
    assert len(pids & before) == 1
    assert get(mongrel2, "/").status_code == 200


def test_killed_worker_mid_stream_closes_the_connection_without_a_502(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "2")
    s.all_ready()
    with socket.create_connection(("127.0.0.1", mongrel2.port), timeout=30) as client:
        client.sendall(b"GET /part?s=60 HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"first part" not in got:
            chunk = client.recv(65536)
            assert chunk, got
            got += chunk
        doc = s.in_flight("GET /part")
        victim = next(w["pid"] for w in doc["workers"] if w["in_flight"])
        os.kill(victim, signal.SIGKILL)
        while chunk := client.recv(65536):  # until the master has the connection closed
            got += chunk
    assert got.startswith(b"HTTP/1.1 200") and got.count(b"HTTP/1.") == 1, got
    assert b"502" not in got and b"the end" not in got
    wait_until(lambda: len(s.worker_pids()) == 2, what="a replacement worker")


def test_uploads_and_streams_through_asgi_workers(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    s = start(
        m2gate_server, tmp_path, "-p", "2", "--upload-dir", str(mongrel2.upload_dir),
        app="starlette_app:app", env={"M2GATE_TEST_STATE": str(state)},
    )  # fmt: skip
    s.all_ready()
    body = os.urandom(300_000)  # beyond limits.content_length: an upload file
    for _ in range(3):
        resp = requests.post(mongrel2.url + "/sha256", data=body, timeout=30)
        assert resp.status_code == 200
        assert resp.json()["sha256"] == hashlib.sha256(body).hexdigest()
    streamed = requests.get(mongrel2.url + "/stream?n=2000&size=100", timeout=30)
    assert streamed.status_code == 200 and len(streamed.content) > 200_000
    doc = s.idle()
    assert doc["requests"] >= 4


def test_harakiri_answers_504_and_replaces_the_worker(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "1", "--harakiri", "1")
    victim = int(get(mongrel2, "/pid").text)
    resp = get(mongrel2, "/block?s=30", timeout=40)  # blocks the worker's event loop
    assert resp.status_code == 504
    assert int(get(mongrel2, "/pid").text) != victim
    log_text = wait_until(lambda: "asgi_master_app.py" in s.server.output and s.server.output)
    after = log_text.split("harakiri: worker", 1)[1]
    assert "(most recent call first)" in after  # the stuck loop's traceback
    assert s.status()["harakiri"] == 1


# -- stop, reload ---------------------------------------------------------------------------


def test_graceful_stop_finishes_the_request_in_flight(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "2")
    s.all_ready()
    t, out = in_background(lambda: get(mongrel2, "/sleep?s=2"))
    s.in_flight("GET /sleep")
    s.server.signal(signal.SIGTERM)
    t.join(30)
    assert out, "no answer:\n" + s.server.output
    assert out[0].status_code == 200 and out[0].text.startswith("slept"), out
    assert s.server.proc.wait(20) == 0
    assert not s.pidfile.exists()


def test_reload_under_load_loses_nothing(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "2")
    pids = {w["pid"] for w in s.all_ready()["workers"]}
    load = LoadGenerator(mongrel2.port, ["/", "/sleep?s=0.02", "/pid", "/sleep?s=0.3"], 8)
    load.start()
    try:
        load.wait_for(50)
        for generation in (2, 3):
            before = load.result.ok
            s.server.signal(signal.SIGHUP)
            doc = wait_until(
                lambda g=generation: (
                    (d := s.status())["generation"] == g
                    and {w["generation"] for w in d["workers"]} == {g}
                    and d
                ),
                timeout=60,
                what="generation %d alone" % generation,
            )
            new = {w["pid"] for w in doc["workers"]}
            assert not new & pids
            pids = new
            load.wait_for(100)
            assert load.result.ok > before
    finally:
        result = load.stop()
    assert result.failures == []
    assert s.status()["reloads"] == 2


def test_max_requests_recycles_asgi_workers_under_load(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "2", "--max-requests", "25")
    s.all_ready()
    load = LoadGenerator(mongrel2.port, ["/pid", "/sleep?s=0.01", "/"], threads=4).start()
    try:
        load.wait_for(300, timeout=60)
    finally:
        result = load.stop()
    assert result.failures == []
    assert result.ok >= 300
    assert s.status()["restarts"] >= 4
    # Each recycled worker stopped cleanly: its lifespan ended, its sockets closed.
    assert "exited after" in s.server.output
    assert "killing it" not in s.server.output


def test_preloaded_asgi_app_runs_each_workers_lifespan(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    s = start(m2gate_server, tmp_path, "-p", "2", "--preload")
    pids = {w["pid"] for w in s.all_ready()["workers"]}
    assert "preloaded in the master" in s.server.output
    assert {int(get(mongrel2, "/pid").text) for _ in range(20)} == pids
    assert {get(mongrel2, "/lifespan").text for _ in range(20)} == {"True"}


def _asgi_text(text: str) -> str:
    return (
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'%s'})\n" % text
    )


def test_reload_on_change_of_the_asgi_app_source(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    app = tmp_path / "app" / "changing_asgi.py"
    app.parent.mkdir()
    app.write_text(_asgi_text("before"))
    s = start(
        m2gate_server, tmp_path, "-p", "1", "--reload-on-change",
        app="changing_asgi:app", cwd=app.parent,
    )  # fmt: skip
    assert get(mongrel2, "/").text == "before"
    time.sleep(1.5)  # the worker reported its files (before its probes); the master polled once
    app.write_text(_asgi_text("after!"))
    stamp = os.stat(app).st_mtime + 5
    os.utime(app, (stamp, stamp))
    wait_until(
        lambda: (
            (d := s.status())["generation"] == 2 and {w["generation"] for w in d["workers"]} == {2}
        ),
        timeout=60,
        what="generation 2 alone",
    )
    assert get(mongrel2, "/").text == "after!"


# -- an app folder ----------------------------------------------------------------------------


def test_asgi_app_dir_serves_under_the_master(
    mongrel2: Mongrel2, m2gate_server: Factory, tmp_path: Path
) -> None:
    h = mongrel2.handler
    site = tmp_path / "site"
    made = subprocess.run(
        [
            *m2gate_command(),
            "init",
            str(site),
            APP,
            "--interface",
            "asgi",
            "--send-spec",
            h.send_spec,
            "--recv-spec",
            h.recv_spec,
            "--send-ident",
            h.send_ident,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    server = m2gate_server(APP, command=[*m2gate_command(), "serve", "--app-dir", str(site)])
    s = Served(server, Path(pidfile_for_app_dir(str(site))))
    doc = s.all_ready()
    assert len(doc["workers"]) == 1 and doc["workers"][0]["pid"] != server.pid
    assert get(mongrel2, "/lifespan").text == "True"
    assert int(get(mongrel2, "/pid").text) == doc["workers"][0]["pid"]
    server.signal(signal.SIGTERM)
    assert server.proc.wait(20) == 0
