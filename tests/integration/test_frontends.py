"""One m2gate serving several Mongrel2 front-ends at once (issue 11, point 4).

Two real Mongrel2s with the *same* handler ``send_ident``: both hand out the
same connection ids, so only the front-end tag m2gate puts on each sender
keeps their connections apart. Each client asks for a path only it knows and
checks that the body names it: a reply sent on the wrong front-end's PUB
would leave this client hanging and hand another client a body that is not
its own.
"""

from __future__ import annotations

import http.client
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from m2gate.testing.mongrel2 import HandlerSpec, Mongrel2
from support import wait_until

CLIENT_TIMEOUT = 30.0


def get(m2: Mongrel2, path: str, keep: http.client.HTTPConnection | None = None) -> bytes:
    """GET ``path`` through ``m2``; the body, which must come with a 200."""
    conn = keep or http.client.HTTPConnection("127.0.0.1", m2.port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, (path, resp.status, body[:200])
        assert not (resp.getheader("Server") or "").startswith("Mongrel2"), body[:200]
        return body
    finally:
        if keep is None:
            conn.close()


def two_frontends(factory: Callable[..., Mongrel2]) -> tuple[Mongrel2, Mongrel2]:
    ident = str(uuid.uuid4())  # the same handler identity on both
    return factory(handlers=[HandlerSpec(send_ident=ident)]), factory(
        handlers=[HandlerSpec(send_ident=ident)]
    )


def serve_both(m2gate_server: Any, app: str, a: Mongrel2, b: Mongrel2, *args: str) -> Any:
    server = m2gate_server(
        app,
        "--send-spec",
        b.handler.send_spec,
        "--recv-spec",
        b.handler.recv_spec,
        *args,
        m2=a,
        ready_path="/tag?tag=ready",
    )
    server.m2 = b
    server.wait_ready("/tag?tag=ready")
    server.m2 = a
    return server


def check_tagged(m2: Mongrel2, name: str, keep: http.client.HTTPConnection | None = None) -> None:
    tag = "%s-%s" % (name, uuid.uuid4().hex[:12])
    body = get(m2, "/tag?tag=%s" % tag, keep)
    assert body.startswith(b"answer for %s from " % tag.encode()), (name, body)


@pytest.mark.parametrize(
    "args",
    [(), ("--threads", "8"), ("--worker-class", "gevent")],
    ids=["1-thread", "8-threads", "gevent"],
)
def test_each_frontend_gets_its_own_answers(
    mongrel2_factory: Callable[..., Mongrel2], m2gate_server: Any, args: tuple[str, ...]
) -> None:
    a, b = two_frontends(mongrel2_factory)
    serve_both(m2gate_server, "frontend_app:application", a, b, *args)
    for i in range(5):  # fresh connections: low, equal ids on both front-ends
        check_tagged(a, "a%d" % i)
        check_tagged(b, "b%d" % i)
    ka = http.client.HTTPConnection("127.0.0.1", a.port, timeout=CLIENT_TIMEOUT)
    kb = http.client.HTTPConnection("127.0.0.1", b.port, timeout=CLIENT_TIMEOUT)
    try:
        for i in range(5):  # keep-alive connections on both
            check_tagged(a, "ka%d" % i, ka)
            check_tagged(b, "kb%d" % i, kb)
    finally:
        ka.close()
        kb.close()


def test_concurrent_load_through_both_without_cross_talk(
    mongrel2_factory: Callable[..., Mongrel2], m2gate_server: Any
) -> None:
    a, b = two_frontends(mongrel2_factory)
    server = serve_both(m2gate_server, "frontend_app:application", a, b, "--threads", "8")
    failures: list[str] = []
    served = {"a": 0, "b": 0}
    lock = threading.Lock()

    def client(m2: Mongrel2, name: str, n: int, keep_alive: bool) -> None:
        conn = (
            http.client.HTTPConnection("127.0.0.1", m2.port, timeout=CLIENT_TIMEOUT)
            if keep_alive
            else None
        )
        try:
            for i in range(n):
                try:
                    check_tagged(m2, "%s%d" % (name, i), conn)
                except (AssertionError, OSError, http.client.HTTPException) as exc:
                    with lock:
                        failures.append("%s: %r" % (name, exc))
                    return
                with lock:
                    served[name[0]] += 1
        finally:
            if conn is not None:
                conn.close()

    threads = [
        threading.Thread(target=client, args=(m2, "%s%d_" % (label, k), 40, k % 2 == 0))
        for label, m2 in (("a", a), ("b", b))
        for k in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "clients still waiting"
    assert not failures, (failures[:5], server.output[-3000:])
    assert served == {"a": 240, "b": 240}


def test_one_frontend_restarted_while_the_other_keeps_serving(
    mongrel2_factory: Callable[..., Mongrel2], m2gate_server: Any
) -> None:
    a, b = two_frontends(mongrel2_factory)
    server = serve_both(m2gate_server, "frontend_app:application", a, b, "--threads", "4")
    # A slow request on b's connection 1 is in flight while a restarts.
    slow_done: list[bytes] = []
    slow = threading.Thread(
        target=lambda: slow_done.append(get(b, "/slow?s=3&tag=b-slow")), daemon=True
    )
    slow.start()
    a.restart()
    for i in range(5):
        check_tagged(b, "b-during%d" % i)  # b serves while a is away and back
    wait_until(
        lambda: "front-end 0 went away" in server.output,
        "m2gate noticing front-end 0's restart",
        timeout=30,
    )
    assert "front-end 1 went away" not in server.output
    slow.join(timeout=60)
    assert slow_done and slow_done[0].startswith(b"answer for b-slow from "), slow_done
    # a is served again, with its ids counting from 1: b's connections stayed.
    server.wait_ready("/tag?tag=again")
    for i in range(5):
        check_tagged(a, "a-after%d" % i)
        check_tagged(b, "b-after%d" % i)


def test_asgi_app_on_two_frontends(
    mongrel2_factory: Callable[..., Mongrel2], m2gate_server: Any
) -> None:
    a, b = two_frontends(mongrel2_factory)
    server = m2gate_server(
        "asgi_bare:app",
        "--send-spec",
        b.handler.send_spec,
        "--recv-spec",
        b.handler.recv_spec,
        "--interface",
        "asgi",
        m2=a,
    )
    server.m2 = b
    server.wait_ready("/")
    for i in range(5):
        for name, m2 in (("a", a), ("b", b)):
            tag = "%s%d%s" % (name, i, uuid.uuid4().hex[:8])
            assert get(m2, "/p/%s?q=%s" % (tag, tag)) == b"bare /p/%s q=%s" % (
                tag.encode(),
                tag.encode(),
            )


def test_recv_specs_must_pair_with_send_specs(
    mongrel2_factory: Callable[..., Mongrel2], m2gate_server: Any
) -> None:
    a, b = two_frontends(mongrel2_factory)
    server = m2gate_server(
        "frontend_app:application", "--send-spec", b.handler.send_spec, m2=a, wait=False
    )
    assert server.proc.wait(timeout=60) != 0
    lines = [line for line in server.output.splitlines() if "send_spec/recv_spec" in line]
    assert lines and "2 send_spec(s) but 1 recv_spec(s)" in lines[0], server.output


def test_worker_processes_serve_two_frontends(
    mongrel2_factory: Callable[..., Mongrel2], m2gate_server: Any
) -> None:
    """-p 2: the master PULLs from both, each worker has a PUB on each (proven by probes)."""
    a, b = two_frontends(mongrel2_factory)
    server = serve_both(
        m2gate_server, "frontend_app:application", a, b, "-p", "2", "--threads", "4"
    )
    failures: list[str] = []
    lock = threading.Lock()

    def client(m2: Mongrel2, name: str) -> None:
        for i in range(30):
            try:
                check_tagged(m2, "%s%d" % (name, i))
            except (AssertionError, OSError, http.client.HTTPException) as exc:
                with lock:
                    failures.append("%s: %r" % (name, exc))
                return

    threads = [
        threading.Thread(target=client, args=(m2, "%s%d_" % (label, k)))
        for label, m2 in (("a", a), ("b", b))
        for k in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "clients still waiting"
    assert not failures, (failures[:5], server.output[-3000:])
    # One front-end restarted: only its connections go; the other's slow one ends well.
    slow_done: list[bytes] = []
    slow = threading.Thread(
        target=lambda: slow_done.append(get(b, "/slow?s=3&tag=b-slow")), daemon=True
    )
    slow.start()
    a.restart()
    wait_until(
        lambda: "front-end 0 went away" in server.output,
        "the master noticing front-end 0's restart",
        timeout=30,
    )
    assert "front-end 1 went away" not in server.output
    slow.join(timeout=60)
    assert slow_done and slow_done[0].startswith(b"answer for b-slow from "), slow_done
    server.wait_ready("/tag?tag=again")
    for i in range(10):
        check_tagged(a, "a-after%d" % i)
        check_tagged(b, "b-after%d" % i)
