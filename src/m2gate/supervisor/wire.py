"""The wire between the master and its workers: frame names and probe ids.

Shared by both sides (``master``/``router`` and ``child``), so neither has to
import the other's process code.

Multipart frames, the master's ROUTER adds the worker's id:

- master -> worker: ``RAW`` (one frame: a Mongrel2 message), or an empty
  frame then ``ready`` / ``stop`` / ``epoch N`` (Mongrel2 went away: forget
  every connection, the ones made from now on belong to epoch N; it comes
  before any message of the new incarnation)
- worker -> master: ``hello JSON``, ``d "SENDER CONN_ID[ EPOCH]"`` (one per
  request accepted, served or dropped; EPOCH, when not 0, is the incarnation
  it was accepted in), ``s "SENDER CONN_ID[ EPOCH]"`` (a response started to
  leave before its end: from then on only a close may answer for it; a
  response sent whole needs none), ``hb JSON`` (every second), ``loaded JSON``
  (app source files, for reload-on-change), ``fatal TEXT`` (app load failed)

Probe ids: a process proves its reply path by publishing a close to a
connection id Mongrel2 never uses; Mongrel2 answers it with a disconnect
notice on the master's PULL. Each process owns ``PROBE_SPAN`` ids from its
``probe_base`` (serial 0 is the master itself).
"""

from __future__ import annotations

EXIT_APP_LOAD = 3  # the master's crash-loop guard: this worker can never serve

# Probe connection ids: far above any id Mongrel2 hands out (they count up
# from 1 per start) and below 2**31, which Mongrel2 parses as a C int.
PROBE_BASE = 1_500_000_000
PROBE_SPAN = 100  # ids per process: base + attempt % PROBE_SPAN
PROBE_SLOTS = 6_000_000  # PROBE_BASE + PROBE_SLOTS * PROBE_SPAN < 2**31
PROBE_INTERVAL = 0.05
HEARTBEAT_INTERVAL = 1.0

# Frames
READY = b"ready"
STOP = b"stop"
EPOCH = b"epoch"
HELLO = b"hello"
DONE = b"d"
STARTED = b"s"
HEARTBEAT = b"hb"
LOADED = b"loaded"
FATAL = b"fatal"


def conn_report(sender: str, conn_id: int, epoch: int) -> bytes:
    """The payload of a ``d``/``s`` frame."""
    if epoch:
        return b"%s %d %d" % (sender.encode("latin-1"), conn_id, epoch)
    return b"%s %d" % (sender.encode("latin-1"), conn_id)


def parse_conn_report(data: bytes) -> tuple[str, int, int] | None:
    """``(sender, conn_id, epoch)`` of a ``d``/``s`` payload, None if garbled."""
    parts = data.split(b" ")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[1:]):
        return None
    return parts[0].decode("latin-1"), int(parts[1]), int(parts[2]) if len(parts) == 3 else 0


def probe_base(serial: int) -> int:
    """The first probe id of process ``serial`` (0: the master)."""
    return PROBE_BASE + (serial % PROBE_SLOTS) * PROBE_SPAN


def is_probe(conn_id: int) -> bool:
    return PROBE_BASE <= conn_id < PROBE_BASE + PROBE_SLOTS * PROBE_SPAN


def probe_slot(conn_id: int) -> int:
    """The ``probe_base`` a probe connection id belongs to."""
    return PROBE_BASE + (conn_id - PROBE_BASE) // PROBE_SPAN * PROBE_SPAN
