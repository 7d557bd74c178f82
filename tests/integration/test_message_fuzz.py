"""Message-level fuzzing of a live ``m2gate serve``, with this test in Mongrel2's place.

The test binds the PUSH (Mongrel2's ``send_spec``) and the SUB (``recv_spec``)
itself, starts ``m2gate serve`` against them (one process, and ``-p 2`` with the
master) and feeds it crafted and random messages: the captured corpus
(tests/corpus/*.bin) mutated, truncated tnetstrings, wrong and huge lengths, bad
JSON, control messages with wrong types, ids of connections that do not exist.
Between batches, and at the end, a well-formed request must still be answered
on the SUB, and no process may have died.

Like Mongrel2, the fake answers the replies it gets for connections it does not
know with a disconnect notice (the master and workers prove their reply path
that way), and after each batch it sends a disconnect for the ids the batch before
used, as Mongrel2 does when clients go: a request parked waiting for
flow-control credits that will never come is then released.

``make test`` sends at least 20,000 messages; ``make test-long`` (``-m long``)
1,000,000. The counts and rates are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zmq
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

from m2gate.protocol import tnetstring
from m2gate.supervisor import wire
from m2gate.testing.mongrel2 import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "tests" / "apps"
CORPUS = sorted((ROOT / "tests" / "corpus").glob("*.bin"))
SEEDS = [p.read_bytes() for p in CORPUS]
SENDER = b"fuzz-0000-4000-8000-000000000001"

PROBE_BASE = wire.PROBE_LOW  # supervisor.wire: the master's and workers' probe ids
CHECK_ID_BASE = 900_000_000  # ids of the well-formed requests that must be answered
DEFAULT_MESSAGES = 20_000  # per mode: 40,000 in `make test` (single + -p 2)
LONG_MESSAGES = 500_000  # per mode: 1,000,000 in `make test-long`

# Bytes that matter to the grammars, over-represented when inserting.
GRAMMAR = b'0123456789:,}]#!~^ {}[]"\\\x00\xb2\xb3\xb9\xff'
TRICKY = [
    b"",
    b"0",
    b"-1",
    b"\xb2",
    b"1\xb9",
    b"\xb2\xb3",
    b"9" * 19,
    b"9" * 5000,
    b"0x81",
    b"0x",
    b"ff",
    b"\x00",
    b" 12 ",
    b"1e9",
    b"nan",
    b"/tmp/x",
    b"/etc/passwd",
    b"\xff\xfe",
]
SPECIAL_HEADERS = [
    b"METHOD",
    b"VERSION",
    b"PATH",
    b"URI",
    b"QUERY",
    b"FLAGS",
    b"DOWNLOAD_CREDITS",
    b"UPLOAD_STREAM",
    b"UPLOAD_STREAM_DONE",
    b"content-length",
    b"host",
    b"connection",
    b"x-mongrel2-upload-start",
    b"x-mongrel2-upload-done",
    b"transfer-encoding",
]
METHODS = [b"GET", b"POST", b"HEAD", b"JSON", b"WEBSOCKET", b"WEBSOCKET_HANDSHAKE", b"", b"G ET"]


# -- message strategies ------------------------------------------------------------


def netstring(data: bytes, tag: bytes = b",") -> bytes:
    return b"%d:%s%s" % (len(data), data, tag)


CONN_IDS = st.one_of(
    st.integers(1, 400),  # ids a batch reuses (pipelining, notices for them)
    st.integers(0, 2**64),  # connections that do not exist
    st.sampled_from([PROBE_BASE, PROBE_BASE + 150, 2**31 - 1, 2**31, 2**32 - 2]),
).map(lambda i: b"%d" % i)
RAW_IDS = st.one_of(
    CONN_IDS, CONN_IDS, CONN_IDS, st.sampled_from([b"", b"-1", b"1\xb2", b"9" * 30, b"9" * 5000])
)
SENDERS = st.sampled_from([SENDER] * 6 + [b"S", b"bad sender!", b"\xff", b"x" * 300])
PATHS = st.sampled_from([b"/", b"/hello", b"@*", b"/%ff", b"/a?b", b"\xff", b"@"])
VALUE = st.sampled_from(TRICKY) | st.binary(max_size=12)


@st.composite
def tnet_value(draw: st.DrawFn) -> bytes:
    """A header value as tnetstring bytes: mostly strings, sometimes other types."""
    kind = draw(st.integers(0, 9))
    if kind < 6:
        return netstring(draw(VALUE))
    if kind == 6:
        return netstring(b"".join(netstring(v) for v in draw(st.lists(VALUE, max_size=3))), b"]")
    return draw(st.sampled_from([b"4:true!", b"0:~", b"2:12#", b"3:1.5^", b"0:}", b"3:abc#"]))


@st.composite
def crafted(draw: st.DrawFn) -> bytes:
    """A message built from parts, each part possibly wrong."""
    headers: list[tuple[bytes, bytes]] = []
    method = draw(st.sampled_from(METHODS) | st.none())
    if method is not None:
        headers.append((b"METHOD", netstring(method)))
    for name in draw(st.lists(st.sampled_from(SPECIAL_HEADERS), max_size=5)):
        headers.append((name, draw(tnet_value())))
    if draw(st.booleans()):
        headers.append((b"VERSION", netstring(b"HTTP/1.1")))
    body = draw(
        st.sampled_from([b"", b'{"type":"disconnect"}', b'{"type":"credits"}', b"x" * 100])
        | st.sampled_from([b'{"type":5}', b"[1]", b"{", b'{"type":null}', b'"x"', b"[" * 3000])
        | st.binary(max_size=40)
    )
    use_json = draw(st.integers(0, 4)) == 0
    if use_json:
        inner = b"{" + b",".join(b'"%s":"%s"' % (k, v[v.find(b":") + 1 : -1]) for k, v in headers)
        head = netstring(inner + draw(st.sampled_from([b"}", b"", b"]", b'}"'])))
    else:
        head = netstring(b"".join(netstring(k) + v for k, v in headers), b"}")
    body_ns = netstring(body)
    sender, conn_id, path = draw(SENDERS), draw(RAW_IDS), draw(PATHS)
    data = b"%s %s %s %s%s" % (sender, conn_id, path, head, body_ns)
    damage = draw(st.integers(0, 11))
    if damage == 1:  # truncated
        data = data[: draw(st.integers(0, len(data)))]
    elif damage == 2:  # wrong length prefix on the headers
        delta = draw(st.sampled_from([-3, -1, 1, 2, 40]))
        head_len = int(head.split(b":", 1)[0])
        wrong = b"%d" % max(0, head_len + delta)
        data = data.replace(head[: head.index(b":")], wrong, 1)
    elif damage == 3:  # huge length prefix
        huge = draw(st.sampled_from([b"9999999999", b"99999999999999", b"4294967296"]))
        data = data.replace(head[: head.index(b":")], huge, 1)
    elif damage == 4:  # trailing bytes
        data += draw(st.binary(min_size=1, max_size=8))
    return data


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A captured Mongrel2 message with a few bytes flipped, set, inserted, cut or doubled."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    if draw(st.booleans()):  # keep it on a connection the batch reuses
        parts = bytes(data).split(b" ", 2)
        if len(parts) == 3:
            data = bytearray(b"%s %s %s" % (parts[0], draw(CONN_IDS), parts[2]))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.integers(0, 5))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == 0 and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == 1 and data:
            data[pos] = draw(st.sampled_from(GRAMMAR))
        elif op == 2:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == 3:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == 4:
            data = data[:pos]
        else:
            end = pos + draw(st.integers(1, 32))
            data[end:end] = data[pos:end]
    return bytes(data)


@st.composite
def control(draw: st.DrawFn) -> bytes:
    """``@*`` messages: real shapes, wrong types, notices for unknown connections."""
    kind = draw(
        st.sampled_from(
            [b'"disconnect"', b'"credits"', b"5", b"null", b"[]", b'"x"', b"{}", b'"\xb2"']
        )
    )
    credits = draw(st.sampled_from([b"4096", b"0", b"\xb2", b"9" * 40, b"", b"-5"]))
    head = b"6:METHOD,4:JSON,"
    if draw(st.booleans()):
        head += b"16:DOWNLOAD_CREDITS," + netstring(credits)
    if draw(st.integers(0, 4)) == 0:
        head += b"16:DOWNLOAD_CREDITS,2:12#"  # a number, not a string
    body = draw(st.sampled_from([b'{"type":%s}' % kind, b"{", b"", b"[1,2]", b'"disconnect"']))
    return b"%s %s @* %s%s" % (SENDER, draw(CONN_IDS), netstring(head, b"}"), netstring(body))


def split(data: bytes) -> tuple[bytes, dict[bytes, object], bytes] | None:
    """``(prefix "SENDER ID PATH ", headers, body netstring)`` of a tnetstring message."""
    parts = data.split(b" ", 3)
    if len(parts) != 4:
        return None
    try:
        headers, end = tnetstring.parse(parts[3])
    except Exception:
        return None
    if not isinstance(headers, dict):
        return None
    return b" ".join(parts[:3]) + b" ", headers, parts[3][end:]


REQUESTS = [m for m in (split(d) for d in SEEDS) if m is not None and b"@*" not in m[0]]
VALUES = st.sampled_from(TRICKY) | st.lists(st.sampled_from(TRICKY), min_size=2, max_size=3)


@st.composite
def revalued(draw: st.DrawFn) -> bytes:
    """A real request, correctly framed, with one to three values made hostile.

    These are the messages Mongrel2 itself would pass on from a hostile client
    (header values, repeats), so they must be answered, not crash anything.
    """
    prefix, headers, body = draw(st.sampled_from(REQUESTS))
    headers = dict(headers)
    for name in draw(st.lists(st.sampled_from(SPECIAL_HEADERS), min_size=1, max_size=3)):
        value = draw(VALUES)
        headers[name] = value if isinstance(value, bytes) else list(value)
    if draw(st.booleans()):
        prefix = b"%s %s %s" % (SENDER, draw(CONN_IDS), prefix.split(b" ", 2)[2])
    return prefix + tnetstring.dumps(headers) + body


MESSAGES = st.one_of(
    mutated(),
    mutated(),
    crafted(),
    crafted(),
    revalued(),
    revalued(),
    control(),
    st.binary(max_size=300),
)
DRAWN = 25  # hypothesis-made messages per example ...
VARIANTS = 3  # ... each followed by this many cheap random mutations of it (4x the rate)


def variant(rng: random.Random, data: bytes) -> bytes:
    """A quick byte-level mutation (hypothesis drawing every message would be ~4x slower)."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        pos = rng.randrange(len(out)) if out else 0
        op = rng.randrange(7)
        if op == 0 and out:
            out[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[pos] = rng.choice(GRAMMAR)
        elif op == 2:
            out[pos:pos] = rng.randbytes(rng.randint(1, 4))
        elif op == 3:
            del out[pos : pos + rng.randint(1, 8)]
        elif op == 4:
            out = out[:pos]
        elif op == 5 and (msg := split(bytes(out))) is not None:
            prefix, headers, body = msg  # a value made hostile, the framing kept right
            value = rng.choice(TRICKY)
            headers[rng.choice(SPECIAL_HEADERS)] = value if rng.random() < 0.7 else [value, value]
            out = bytearray(prefix + tnetstring.dumps(headers) + body)
        else:
            parts = bytes(out).split(b" ", 2)
            if len(parts) == 3:  # the same message for another (maybe unknown) connection
                conn_id = rng.choice([rng.randint(1, 400), rng.getrandbits(rng.randint(1, 70))])
                out = bytearray(b"%s %d %s" % (parts[0], conn_id, parts[2]))
    return bytes(out)


@st.composite
def fuzz_batches(draw: st.DrawFn) -> list[bytes]:
    drawn = draw(st.lists(MESSAGES, min_size=DRAWN, max_size=DRAWN))
    rng = draw(st.randoms(use_true_random=False))
    out: list[bytes] = []
    for data in drawn:
        out.append(data)
        out.extend(variant(rng, data) for _ in range(VARIANTS))
    return out


BATCH = DRAWN * (1 + VARIANTS)


# -- the fake Mongrel2 ---------------------------------------------------------------


class Stalled(Exception):
    """The PUSH queue stayed full: nobody is reading (a dead process, a stuck loop)."""


@dataclass
class FakeMongrel2:
    """The PUSH and SUB Mongrel2 would bind, plus what it does with stray replies."""

    push: zmq.Socket[bytes]
    sub: zmq.Socket[bytes]
    send_spec: str
    recv_spec: str
    sent: int = 0
    replies: int = 0
    answered: set[int] = field(default_factory=set)
    used: set[tuple[bytes, bytes]] = field(default_factory=set)

    def send(self, data: bytes) -> None:
        try:
            self.push.send(data)  # blocks at HWM: backpressure, bounded by SNDTIMEO
        except zmq.Again:
            raise Stalled("m2gate took no message for 10 s") from None
        self.sent += 1

    def fuzz(self, data: bytes) -> None:
        """Send a fuzz message, remembering its connection id for :meth:`clients_leave`."""
        self.send(data)
        parts = data.split(b" ", 2)
        if len(parts) == 3 and parts[1].isdigit() and len(parts[1]) < 25 and len(parts[0]) < 200:
            self.used.add((parts[0], parts[1]))  # a connection is (sender, id)

    def clients_leave(self) -> None:
        """What Mongrel2 does sooner or later for every connection: a disconnect notice.

        Without it a request the fuzz granted a tiny flow-control window would
        wait for credits forever, which no real Mongrel2 connection does.
        """
        for sender, conn_id in self.used:
            self.notice(conn_id, sender)
        self.used.clear()

    def notice(self, conn_id: bytes, sender: bytes = SENDER) -> None:
        body = b'{"type":"disconnect"}'
        head = netstring(b"6:METHOD,4:JSON,", b"}")
        self.send(b"%s %s @* %s%s" % (sender, conn_id, head, netstring(body)))

    def pump(self) -> None:
        """Read what m2gate published; answer probes with a disconnect notice."""
        while True:
            try:
                data = self.sub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.replies += 1
            parts = data.split(b" ", 1)
            if len(parts) != 2 or b":" not in parts[1]:
                continue
            size, rest = parts[1].split(b":", 1)
            if not size.isdigit():
                continue
            ids, body = rest[: int(size)].split(), rest[int(size) + 2 :]
            for raw in ids:
                if not raw.isdigit():
                    continue
                conn_id = int(raw)
                if PROBE_BASE <= conn_id < wire.PROBE_HIGH:
                    # Mongrel2: "reply to an unknown connection", the id printed as a C int
                    self.notice(b"%d" % wire.echoed(conn_id))
                elif conn_id >= CHECK_ID_BASE and body.startswith(b"HTTP/1.1 200"):
                    self.answered.add(conn_id)

    def request_answered(self, conn_id: int, timeout: float = 15.0) -> bool:
        """Send a well-formed GET on ``conn_id``; True once its 200 came back."""
        headers = tnetstring.dumps(
            {
                b"PATH": b"/",
                b"METHOD": b"GET",
                b"VERSION": b"HTTP/1.1",
                b"URI": b"/",
                b"PATTERN": b"/",
                b"host": b"localhost",
                b"connection": b"close",
            }
        )
        deadline = time.monotonic() + timeout
        next_send = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_send:  # resend: a PUB may still be joining
                self.send(b"%s %d / %s0:," % (SENDER, conn_id, headers))
                next_send = time.monotonic() + 1.0
            self.sub.poll(50)
            self.pump()
            if conn_id in self.answered:
                return True
        return False


@contextlib.contextmanager
def fake_mongrel2() -> Iterator[FakeMongrel2]:
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    sub = ctx.socket(zmq.SUB)
    try:
        push.setsockopt(zmq.SNDTIMEO, 10_000)
        push.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 100_000)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        send_spec = "tcp://127.0.0.1:%d" % free_port()
        recv_spec = "tcp://127.0.0.1:%d" % free_port()
        push.bind(send_spec)
        sub.bind(recv_spec)
        yield FakeMongrel2(push, sub, send_spec, recv_spec)
    finally:
        push.close(0)
        sub.close(0)
        ctx.term()


@contextlib.contextmanager
def m2gate(fake: FakeMongrel2, tmp_path: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """``m2gate serve basic:application`` against the fake, stopped by PID whatever happens."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(APPS), env.get("PYTHONPATH", "")) if p)
    cmd = [
        sys.executable,
        "-m",
        "m2gate",
        "serve",
        "basic:application",
        "--send-spec",
        fake.send_spec,
        "--recv-spec",
        fake.recv_spec,
        "--send-ident",
        SENDER.decode(),
        "--log-level",
        # Thousands of "dropped malformed message" warnings would dominate the run.
        os.environ.get("M2GATE_FUZZ_LOG_LEVEL", "error"),
        *args,
    ]
    log_path = tmp_path / "m2gate.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def group_pids(pgid: int) -> set[int]:
    """Live (non-zombie) processes of the process group ``pgid``."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.add(int(entry))
    return pids


def fuzz(
    fake: FakeMongrel2, proc: subprocess.Popen[bytes], log_path: Path, total: int, label: str
) -> None:
    """Feed ``total`` hypothesis-made messages; check liveness between batches."""
    check_id = [CHECK_ID_BASE + random.randrange(10_000_000) * 10]

    recent: list[list[bytes]] = []

    def fail(why: str) -> None:
        out = log_path.read_text(errors="replace")[-6000:]
        dump = log_path.with_name("last_batches.tnet")
        dump.write_bytes(tnetstring.dumps(recent))  # replay: tnetstring.loads, send in order
        why += " (the last %d batches are in %s)" % (len(recent), dump)
        raise AssertionError(
            "%s after %d messages: %s\n--- m2gate ---\n%s" % (label, fake.sent, why, out)
        )

    check_id[0] += 1
    if not fake.request_answered(check_id[0], timeout=30.0):
        fail("never answered before the fuzzing started")
    pids = group_pids(proc.pid)
    batches = -(-total // BATCH)
    start = time.monotonic()
    fuzzed = [0]

    @settings(
        max_examples=batches,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        verbosity=Verbosity.quiet,  # a falsifying batch is ~100 kB of repr: see the dump
        suppress_health_check=list(HealthCheck),
    )
    @given(fuzz_batches())
    def feed(batch: list[bytes]) -> None:
        if fuzzed[0] >= total:
            return
        recent.append(batch)
        del recent[:-3]
        fake.clients_leave()  # those of the batch before: pipelining had its chance
        for data in batch:
            fake.fuzz(data)
        fuzzed[0] += len(batch)
        fake.pump()
        if proc.poll() is not None:
            fail("m2gate exited with %s" % proc.returncode)
        if fuzzed[0] // BATCH % 20 == 0:
            if group_pids(proc.pid) != pids:
                fail("a process died or was replaced: %s -> %s" % (pids, group_pids(proc.pid)))
            check_id[0] += 1
            if not fake.request_answered(check_id[0]):
                fail("a well-formed request was not answered")

    try:
        while fuzzed[0] < total:  # hypothesis may stop early: go on until the count is reached
            feed()
    except Stalled as exc:
        time.sleep(0.5)
        fail("%s; m2gate exit status: %s" % (exc, proc.poll()))
    fake.clients_leave()
    check_id[0] += 1
    answered = fake.request_answered(check_id[0], timeout=30.0)
    elapsed = time.monotonic() - start
    print(
        "\n%s: %d fuzz messages (%d sent in all, %d replies read) in %.1fs, %.0f msg/s"
        % (label, fuzzed[0], fake.sent, fake.replies, elapsed, fuzzed[0] / elapsed)
    )
    if not answered:
        fail("the well-formed request after the fuzzing was not answered")
    if proc.poll() is not None or group_pids(proc.pid) != pids:
        fail("a process died: %s -> %s" % (pids, group_pids(proc.pid)))
    if "Traceback" in log_path.read_text(errors="replace"):
        fail("a traceback was logged")


MODES = {"single": ("--threads", "4"), "p2": ("-p", "2", "--threads", "2")}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_fuzzed_messages_do_not_kill_the_server(mode: str, tmp_path: Path) -> None:
    with fake_mongrel2() as fake, m2gate(fake, tmp_path, *MODES[mode]) as proc:
        fuzz(fake, proc, tmp_path / "m2gate.log", DEFAULT_MESSAGES, mode)


@pytest.mark.long
@pytest.mark.timeout(3 * 3600)
@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_million_fuzzed_messages(mode: str, tmp_path: Path) -> None:
    with fake_mongrel2() as fake, m2gate(fake, tmp_path, *MODES[mode]) as proc:
        fuzz(fake, proc, tmp_path / "m2gate.log", LONG_MESSAGES, mode)


def test_corpus_is_there() -> None:
    """The fuzzer starts from real Mongrel2 messages: without them it proves much less."""
    assert len(SEEDS) >= 40
    index = json.loads((ROOT / "tests" / "corpus" / "index.json").read_text())
    assert {m["file"] for m in index["messages"]} <= {p.name for p in CORPUS}
