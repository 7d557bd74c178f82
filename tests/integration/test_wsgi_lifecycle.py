"""Process life of ``m2gate serve``: graceful stop, start-up errors, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import zmq
from wsgi_http import RawClient, raw_get, wait_for_event

from m2gate.testing.mongrel2 import Mongrel2, free_port

pytestmark = pytest.mark.integration

Start = Any
ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "tests" / "apps"


# -- graceful stop ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("signum", "threads"),
    [(signal.SIGTERM, 4), (signal.SIGINT, 1)],
    ids=["sigterm-4-threads", "sigint-1-thread"],
)
def test_signal_lets_in_flight_requests_finish(
    mongrel2: Mongrel2, wsgi: Start, events: Path, signum: int, threads: int
) -> None:
    server = wsgi("--threads", str(threads), "--graceful-timeout", "20")
    results: dict[int, tuple[int, bytes]] = {}

    def slow(n: int) -> None:
        with RawClient(mongrel2.port, timeout=30) as client:
            client.request("GET", "/slow?t=1.5&id=g%d" % n)
            resp = client.read_response()
            results[n] = (resp.status, resp.body)

    clients = [threading.Thread(target=slow, args=(n,)) for n in range(threads)]
    for t in clients:
        t.start()
    try:
        for n in range(threads):
            assert wait_for_event(events, "start g%d" % n), "request g%d never started" % n
        server.signal(signum)
        # The process must end by itself, well within the graceful timeout.
        assert server.proc.wait(timeout=20) == 0
    finally:
        for t in clients:
            t.join(timeout=30)
    assert results == {n: (200, b"slow done g%d" % n) for n in range(threads)}
    assert "Traceback" not in server.output


def test_sigterm_with_more_requests_than_threads(
    mongrel2: Mongrel2, wsgi: Start, events: Path
) -> None:
    """Requests already handed to the process but still queued are served too."""
    server = wsgi("--threads", "1", "--graceful-timeout", "20")
    results: dict[int, tuple[int, bytes]] = {}

    sent = [threading.Event() for _ in range(3)]

    def slow(n: int) -> None:
        with RawClient(mongrel2.port, timeout=30) as client:
            client.request("GET", "/slow?t=0.5&id=q%d" % n)
            sent[n].set()
            resp = client.read_response()
            results[n] = (resp.status, resp.body)

    clients = [threading.Thread(target=slow, args=(n,)) for n in range(3)]
    for t in clients:
        t.start()
    try:
        assert all(e.wait(10) for e in sent)
        assert wait_for_event(events, "start q", prefix=True)
        time.sleep(0.3)  # loopback -> Mongrel2 -> PULL takes milliseconds
        server.signal(signal.SIGTERM)
        assert server.proc.wait(timeout=20) == 0
    finally:
        for t in clients:
            t.join(timeout=30)
    assert results == {n: (200, b"slow done q%d" % n) for n in range(3)}


def test_sigterm_during_a_stream_and_pipelined_requests(
    mongrel2: Mongrel2, wsgi: Start, events: Path
) -> None:
    """A stream in flight ends properly; pipelined requests behind it never hang."""
    server = wsgi("--threads", "2", "--graceful-timeout", "20")
    with RawClient(mongrel2.port, timeout=30) as client:
        client.send(
            b"GET /stream?n=20&sleep=0.05&id=st HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /id?id=behind HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert wait_for_event(events, "start st")
        server.signal(signal.SIGTERM)
        first = client.read_response()
        assert first.complete and first.body == b"".join(b"chunk %d;" % i for i in range(20))
        # The queued request is either answered or the connection is closed.
        try:
            second = client.read_response()
        except ConnectionError:
            pass
        else:
            assert second.body.startswith(b"id=behind ")
    assert server.proc.wait(timeout=20) == 0
    assert wait_for_event(events, "close st")


def test_graceful_timeout_bounds_the_stop(mongrel2: Mongrel2, wsgi: Start, events: Path) -> None:
    """A request slower than --graceful-timeout does not keep the process alive."""
    server = wsgi("--threads", "2", "--graceful-timeout", "1")

    def stuck() -> None:
        try:
            with RawClient(mongrel2.port, timeout=40) as client:
                client.request("GET", "/slow?t=30&id=stuck")
                client.read_response()
        except (OSError, ConnectionError):
            pass

    thread = threading.Thread(target=stuck, daemon=True)
    thread.start()
    assert wait_for_event(events, "start stuck")
    server.signal(signal.SIGTERM)
    server.proc.wait(timeout=15)  # raises if the stop was not bounded
    assert "graceful timeout" in server.output


def test_idle_server_stops_at_once_with_status_0(mongrel2: Mongrel2, wsgi: Start) -> None:
    server = wsgi("--threads", "8")
    assert raw_get(mongrel2.port, "/id?id=x").status == 200
    server.signal(signal.SIGTERM)
    assert server.proc.wait(timeout=10) == 0


# -- start-up errors -------------------------------------------------------------


def _serve(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("m2gate")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "m2gate"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(APPS), env.get("PYTHONPATH", "")) if p)
    for key in [k for k in env if k.startswith("M2GATE_")]:
        del env[key]  # the developer's own settings must not leak in
    port = free_port()
    return subprocess.run(
        [*cmd, "serve", *args]
        if "--send-spec" in args or "--zeromq" in args
        else [*cmd, "serve", *args, "--send-spec", "tcp://127.0.0.1:%d" % port],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (("no_such_module_m2gate:app",), "no_such_module_m2gate"),
        (("wsgi_probe:no_such_attribute",), "no_such_attribute"),
        (("json",), "application"),  # neither `application` nor `app`
        (("wsgi_probe:_events_lock",), "not callable"),
        (("wsgi_probe:application", "--send-spec", "bogus"), "send"),
        (("wsgi_probe:application", "--send-spec", "tcp://127.0.0.1:notaport"), "send"),
        (("wsgi_probe:application", "--zeromq", "tcp://127.0.0.1:9999"), "zeromq"),
        (
            (
                "wsgi_probe:application",
                "--send-spec",
                "tcp://127.0.0.1:9999",
                "--recv-spec",
                "nope://x",
            ),
            "recv",
        ),
        (("wsgi_probe:application", "--threads", "0"), "threads"),
        (("wsgi_probe:application", "--graceful-timeout", "-1"), "graceful"),
    ],
    ids=[
        "missing-module",
        "missing-attribute",
        "no-default-attribute",
        "not-callable",
        "bad-send-spec",
        "bad-send-port",
        "bad-zeromq",
        "bad-recv-spec",
        "bad-threads",
        "bad-graceful-timeout",
    ],
)
def test_startup_error_is_one_line(args: tuple[str, ...], mentions: str) -> None:
    result = _serve(*args)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0, output
    assert "Traceback" not in output
    lines = output.splitlines()
    assert len(lines) == 1, output
    assert mentions in lines[0].lower() or mentions in lines[0], output


def test_missing_chdir_is_one_line(tmp_path: Path) -> None:
    result = _serve("wsgi_probe:application", "--chdir", str(tmp_path / "nowhere"))
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0
    assert "Traceback" not in output and len(output.splitlines()) == 1, output


# -- malformed messages --------------------------------------------------------

GARBAGE = [
    b"",
    b"garbage",
    b"\x00\xff" * 50,
    b"sender 1 / 3:abc,",  # headers not a dict
    b"sender x / 2:{}0:,",  # conn id not a number
    b"sender 1 / 99999:{},0:,",  # length beyond the data
    b'sender 1 / 21:{"METHOD": "GET",},0:,',  # bad JSON
    b"sender 1 / 5:1:x,]0:,",  # tnetstring of the wrong type
    b'sender 1 @* 21:{"METHOD":"JSON"}3:{x},',  # control message with a bad body
    b"sender 1 / 2:}}0:,",
    b"sender 1 / 14:4:PATH,1:/,}0:,",  # a tnetstring dict with no METHOD
    b'sender 77 @* 17:{"METHOD":"JSON"},21:{"type":"disconnect"},',  # unknown connection
]


def test_worker_survives_malformed_messages(mongrel2: Mongrel2, wsgi: Start) -> None:
    """Garbage on the worker's PULL is logged and dropped; the worker serves on.

    Mongrel2 only ever sends well-formed messages, so a stand-in PUSH socket
    takes over its send_spec for a moment while Mongrel2 is stopped.
    """
    server = wsgi("--threads", "2")
    assert raw_get(mongrel2.port, "/id?id=before").status == 200
    mongrel2.stop()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    try:
        push.setsockopt(zmq.SNDTIMEO, 10000)  # the first send waits for the worker
        push.setsockopt(zmq.LINGER, 5000)
        push.bind(mongrel2.handler.send_spec)
        for message in GARBAGE:
            push.send(message)
    finally:
        push.close()  # lingers until everything reached the worker
        ctx.term()
    mongrel2.start()
    server.wait_ready("/")
    resp = requests.get(mongrel2.url + "/id?id=after", timeout=10)
    assert resp.status_code == 200 and resp.text.startswith("id=after ")
    assert server.proc.poll() is None
    assert "dropped malformed message" in server.output
    assert "Traceback" not in server.output
