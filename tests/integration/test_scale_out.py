"""Handlers on several machines behind one Mongrel2 (issue 11, point 4), with namespaces.

Three network namespaces made here act as three hosts on one bridge:
Mongrel2 in one, bound to its bridge address (its handler specs are tcp on
that address), and an ``m2gate serve -p 2`` in each of the other two,
connecting across the veth links. The test process reaches Mongrel2 from
the root namespace through a fourth veth on the same bridge and drives real
HTTP clients: both hosts must serve, then one host's whole m2gate (master
and workers) is killed with SIGKILL mid-load.

What Mongrel2 1.12 does then (found by this test): requests it had already
PUSHed to the dead host are lost (no handler answers them and Mongrel2 keeps
no record of which handler got what, so it neither answers nor retries
them), and every request after the dead host's TCP connections closed goes
to the survivor. Each client has at most one request in flight, so at most
one loss per client. What bounds a lost request's wait is Mongrel2's idle
reaper (src/register.c, ``Register_cleanout``): every ``limits.tick_timer``
seconds it closes each connection whose last activity (a request read, a
``ctl`` keep-alive) is older than ``limits.min_ping``, once more criteria
than ``limits.kill_limit`` hold. With the defaults (kill_limit 2: stale ping
*and* both rates low) that is 120 s and more; this Mongrel2 runs with
``DEAD_HOST_SETTINGS`` (the ping alone decides), so a lost request's
connection is closed within ``BOUND`` seconds. The clients wait far longer
(``CLIENT_TIMEOUT``), so each lost request must end by Mongrel2 closing its
connection, never by the client giving up; each client must then be served
AFTER_KILL times by the survivor, and a request longer than the bound must
still be answered by it (its ``--busy-keepalive``). The figures (requests
per host, in flight at the kill, answered vs closed, the longest wait) are
printed (``pytest -s``) and recorded as test properties.

Skipped, with the reason, where network namespaces cannot be made (not
root, no CAP_NET_ADMIN, no ``ip``).
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from m2gate.testing.mongrel2 import (
    HandlerSpec,
    Mongrel2,
    free_port,
    reaper_bound,
    reaper_settings,
)
from support import m2gate_command, pid_alive, wait_until

CLONE_NEWNET = 0x40000000
CLIENTS = 8
MIN_PING = 5
# What docs/deploying.md recommends, with a short ping for the test: close a
# connection with no activity for MIN_PING s, checked every second.
DEAD_HOST_SETTINGS = reaper_settings(MIN_PING, tick_timer=1)
BOUND = reaper_bound(MIN_PING, tick_timer=1)
LONG = BOUND + 4  # seconds of one request the survivor serves after the kill
CLIENT_TIMEOUT = 60.0  # far above BOUND: only Mongrel2's close may end a lost request
BEFORE_KILL = 60  # requests each host serves before one is killed
AFTER_KILL = 20  # requests each client has served after the kill before it ends


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN); running as uid %d" % os.geteuid()
    probe = "m2gprobe%d" % os.getpid()
    done = ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return "`ip netns add` failed: %s" % done.stderr.strip()
    ip("netns", "del", probe, check=False)
    return None


@dataclass
class Hosts:
    """The namespaces and addresses of one test run."""

    mongrel2_ns: str
    handler_ns: list[str]
    mongrel2_addr: str
    links: list[str] = field(default_factory=list)


def _free_subnet() -> str:
    """A 10.213.N.0/24 prefix no address of the root namespace uses."""
    used = ip("-4", "addr").stdout + ip("-4", "route").stdout
    for offset in range(250):
        third = (os.getpid() + offset) % 250 + 1
        prefix = "10.213.%d." % third
        if prefix not in used:
            return prefix
    pytest.skip("no free 10.213.N.0/24 subnet for the test namespaces")


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    """Mongrel2's namespace with a bridge, two handler namespaces, a root veth: all removed."""
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    pid = os.getpid()
    net = _free_subnet()
    made = Hosts("m2g%dm" % pid, ["m2g%dh1" % pid, "m2g%dh2" % pid], net + "1")
    namespaces = [made.mongrel2_ns, *made.handler_ns]
    try:
        for ns in namespaces:
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        m = made.mongrel2_ns
        ip("-n", m, "link", "add", "br0", "type", "bridge")
        ip("-n", m, "addr", "add", made.mongrel2_addr + "/24", "dev", "br0")
        ip("-n", m, "link", "set", "br0", "up")
        for i, ns in enumerate(made.handler_ns, start=1):
            outer, inner = "v%dh%d" % (pid, i), "v%dm%d" % (pid, i)
            ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            made.links.append(outer)
            ip("link", "set", outer, "netns", ns)
            ip("link", "set", inner, "netns", m)
            ip("-n", m, "link", "set", inner, "master", "br0", "up")
            ip("-n", ns, "addr", "add", "%s%d/24" % (net, i + 1), "dev", outer)
            ip("-n", ns, "link", "set", outer, "up")
        root, inner = "v%dr" % pid, "v%dmr" % pid
        ip("link", "add", root, "type", "veth", "peer", "name", inner)
        made.links.append(root)
        ip("link", "set", inner, "netns", m)
        ip("-n", m, "link", "set", inner, "master", "br0", "up")
        ip("addr", "add", net + "254/24", "dev", root)
        ip("link", "set", root, "up")
        yield made
    finally:
        for ns in namespaces:  # deleting a namespace destroys the veth ends in it
            ip("netns", "del", ns, check=False)
        for link in made.links:
            ip("link", "del", link, check=False)


def in_netns(ns: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on a thread inside namespace ``ns`` (what it spawns stays there)."""
    result: list[Any] = []
    failure: list[BaseException] = []

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open("/run/netns/%s" % ns, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns %s" % ns)
        finally:
            os.close(fd)
        try:
            result.append(fn())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="netns-%s" % ns)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0] if result else None


@dataclass
class Outcome:
    """What one client request got: the host that answered, or why none did."""

    client: int
    after_kill: bool  # started after the kill
    host: str | None = None
    ended_after_kill: bool = False
    started: float = 0.0
    ended: float = 0.0
    status: int | None = None
    error: str | None = None
    closed: bool = False  # the server closed the connection without a response


class Clients:
    """``CLIENTS`` threads of real HTTP clients, each one request at a time, until stopped."""

    def __init__(self, addr: str, port: int) -> None:
        self.addr, self.port = addr, port
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.killed = threading.Event()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(CLIENTS)
        ]

    def start(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def count(self, host: str, after_kill: bool | None = None) -> int:
        with self.lock:
            return sum(
                1
                for o in self.outcomes
                if o.host == host and (after_kill is None or o.after_kill == after_kill)
            )

    def finished(self) -> bool:
        """Whether every client ended (each after AFTER_KILL answers started after the kill)."""
        return not any(t.is_alive() for t in self._threads)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=CLIENT_TIMEOUT + 30)
        assert not any(t.is_alive() for t in self._threads), "a client is still waiting"

    def _run(self, client: int) -> None:
        n = served_after_kill = 0
        while not self._stop.is_set() and served_after_kill < AFTER_KILL:
            n += 1
            outcome = Outcome(client, self.killed.is_set(), started=time.monotonic())
            # A mix: most fast, some slow enough to be in flight at the kill.
            pause = "0.3" if n % 4 == 0 else "0.01"
            conn = http.client.HTTPConnection(self.addr, self.port, timeout=CLIENT_TIMEOUT)
            try:
                conn.request("GET", "/?s=%s&id=%d-%d" % (pause, client, n))
                resp = conn.getresponse()
                body = resp.read()
                outcome.status = resp.status
                if resp.status == 200 and body.startswith(b"host "):
                    outcome.host = body.split()[1].decode()
            except TimeoutError:
                outcome.error = "no answer within %.0fs" % CLIENT_TIMEOUT
            except http.client.RemoteDisconnected as exc:
                outcome.error, outcome.closed = repr(exc), True
            except (OSError, http.client.HTTPException) as exc:
                outcome.error = repr(exc)
            finally:
                conn.close()
            outcome.ended = time.monotonic()
            outcome.ended_after_kill = self.killed.is_set()
            if outcome.after_kill and outcome.host is not None:
                served_after_kill += 1
            with self.lock:
                self.outcomes.append(outcome)


def test_two_handler_hosts_one_killed_mid_load(
    hosts: Hosts,
    m2gate_server: Any,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    addr = hosts.mongrel2_addr
    spec = HandlerSpec(
        send_spec="tcp://%s:%d" % (addr, free_port()),
        recv_spec="tcp://%s:%d" % (addr, free_port()),
    )
    m2 = Mongrel2(
        tmp_path / "mongrel2",
        handlers=[spec],
        settings=DEAD_HOST_SETTINGS,
        port=free_port(),
        bind_addr=addr,
    )
    servers = []
    try:
        in_netns(hosts.mongrel2_ns, m2.start)
        for i, ns in enumerate(hosts.handler_ns, start=1):
            command = [
                "ip",
                "netns",
                "exec",
                ns,
                *m2gate_command(),
                "serve",
                "host_app:application",
                "--send-spec",
                spec.send_spec,
                "--recv-spec",
                spec.recv_spec,
                "--send-ident",
                spec.send_ident,
                "-p",
                "2",
                "--threads",
                "4",
                "--busy-keepalive",  # a third of MIN_PING, as docs/deploying.md says
                "1",
            ]
            servers.append(
                m2gate_server(
                    "host%d" % i,
                    m2=m2,
                    wait=False,
                    command=command,
                    env={"SCALE_OUT_HOST": "h%d" % i},
                )
            )
        clients = Clients(addr, m2.port).start()
        try:
            wait_until(
                lambda: all(
                    clients.count(h) >= BEFORE_KILL or servers[i].proc.poll() is not None
                    for i, h in enumerate(("h1", "h2"))
                ),
                "both handler hosts serving",
                timeout=120,
            )
            for server in servers:
                assert server.proc.poll() is None, server.output
            victim = servers[0]
            workers = [
                int(p)
                for p in subprocess.run(
                    ["pgrep", "-g", str(victim.pid)], capture_output=True, text=True, check=False
                ).stdout.split()
            ]
            clients.killed.set()
            killed_at = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(victim.pid, 9)  # the whole host's m2gate: master and workers
            victim.proc.wait(timeout=30)
            wait_until(
                lambda: not any(pid_alive(p) for p in workers), "host 1's m2gate gone", timeout=30
            )
            gone_at = time.monotonic()
            # No client is left hanging: each one, those that lost a request with
            # the host too, gets AFTER_KILL answers after the kill and ends.
            wait_until(
                clients.finished,
                "every client served after the kill (those that lost a request too)",
                timeout=CLIENT_TIMEOUT + 180,
            )
        finally:
            clients.stop()
        # The bound closes only what no live host keeps alive: the survivor's
        # keep-alives carry a request far longer than the bound to its answer.
        long_conn = http.client.HTTPConnection(addr, m2.port, timeout=CLIENT_TIMEOUT)
        try:
            long_conn.request("GET", "/?s=%d&id=long" % LONG)
            long_resp = long_conn.getresponse()
            long_answer = (long_resp.status, long_resp.read())
        finally:
            long_conn.close()
        outcomes = list(clients.outcomes)
        before = [o for o in outcomes if not o.after_kill]
        after = [o for o in outcomes if o.after_kill]
        served_before = Counter(o.host for o in before if o.host)
        served_after = Counter(o.host for o in after if o.host)
        in_flight = [o for o in outcomes if o.started <= killed_at < o.ended]
        failed = [o for o in outcomes if o.host is None]
        closed = [o for o in failed if o.closed]
        later = [o for o in outcomes if o.started > gone_at]
        figures = {
            "requests": len(outcomes),
            "served_before_kill": dict(served_before),
            "served_after_kill": dict(served_after),
            "in_flight_at_kill": len(in_flight),
            "in_flight_answered": sum(o.host is not None for o in in_flight),
            "lost_closed_by_mongrel2": len(closed),
            "failed_other": [o.error or o.status for o in failed if not o.closed],
            "lost_wait_s": sorted(round(o.ended - o.started, 1) for o in closed),
            "bound_s": BOUND,
            "client_timeout_s": CLIENT_TIMEOUT,
            "requests_after_host_gone": len(later),
            "long_request_s": LONG,
            "long_request_answer": long_answer[0],
        }
        print("\nscale-out figures: %s" % figures)
        for key, value in figures.items():
            record_property(key, value)
        assert served_before["h1"] >= BEFORE_KILL and served_before["h2"] >= BEFORE_KILL
        assert served_after["h2"] >= AFTER_KILL * CLIENTS - served_after.get("h1", 0)
        # Nothing served by the dead host once its death was known... except
        # what it answered in the instant between the flag and the SIGKILL.
        assert served_after.get("h1", 0) <= CLIENTS, figures
        # Every request that ended before the kill was answered by a host.
        assert not [o for o in before if o.host is None and not o.ended_after_kill], figures
        # Each request that got no answer was one in flight while the host died,
        # and it ended by Mongrel2 closing its connection (the dead-host bound),
        # never by the client's own timeout, far above that bound, nor by an error.
        assert all(o.closed for o in failed), figures
        assert all(o.started <= gone_at for o in failed), figures
        # At most the one request each client had in flight is lost with the host.
        per_client = Counter(o.client for o in failed)
        assert all(n <= 1 for n in per_client.values()), figures
        # Once the host was gone, every request was a 200 from the survivor.
        assert later and all(o.status == 200 and o.host == "h2" for o in later), figures
        assert long_answer[0] == 200 and long_answer[1].startswith(b"host h2 "), figures
    finally:
        for server in servers:
            server.stop()
        in_netns(hosts.mongrel2_ns, m2.stop)
