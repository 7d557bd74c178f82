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
connection id no client holds; Mongrel2 answers it with a disconnect notice
on the master's PULL. Mongrel2 reads a reply's ids with ``strtoul``, looks
them up as a uint32 and prints an unknown one back as a C ``int``: ids from
2**31 up come back negative. Those are the probe ids: Mongrel2 hands them
out only after 2**31 connections in one run, and m2gate never serves a
negative id (the parser refuses one), so a probe neither closes a client we
serve nor passes for a real notice. Each master draws a random block of
that range at start (:func:`new_probe_block`), so two masters on one
Mongrel2 tell their probes apart: a notice outside the master's own block
is another master's and is ignored. In a block each process owns
``PROBE_SPAN`` ids from its ``probe_base`` (serial 0 is the master itself).
"""

from __future__ import annotations

import secrets

EXIT_APP_LOAD = 3  # the master's crash-loop guard: this worker can never serve

# Probe connection ids: [2**31, 2**32 - 1), echoed negative by Mongrel2.
# 2**32 - 1 itself is Mongrel2's "no id" (and would echo as -1): left out.
PROBE_LOW = 2**31
PROBE_HIGH = 2**32 - 1
PROBE_SPAN = 16  # ids per process: base + attempt % PROBE_SPAN
PROBE_SLOTS = 1024  # processes per master (serials wrap around)
PROBE_BLOCK = PROBE_SPAN * PROBE_SLOTS
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


def new_probe_block() -> int:
    """A master's random block of probe ids (one per start)."""
    return PROBE_LOW + secrets.randbelow((PROBE_HIGH - PROBE_LOW) // PROBE_BLOCK) * PROBE_BLOCK


def probe_base(serial: int, block: int) -> int:
    """The first probe id of process ``serial`` (0: the master) in ``block``."""
    return block + (serial % PROBE_SLOTS) * PROBE_SPAN


def probe_slot(probe_id: int, block: int) -> int | None:
    """The ``probe_base`` ``probe_id`` belongs to, None if not in ``block`` (another master's)."""
    if not block <= probe_id < block + PROBE_BLOCK:
        return None
    return block + (probe_id - block) // PROBE_SPAN * PROBE_SPAN


def echoed(probe_id: int) -> int:
    """The id Mongrel2 prints in its disconnect notice for ``probe_id`` (a C int)."""
    return probe_id - 2**32 if probe_id >= 2**31 else probe_id


def parse_probe_notice(raw: bytes) -> int | None:
    """The probe id a disconnect notice answers, None if ``raw`` is not one.

    Only asked for messages the parser refused (a negative id): never on
    the path of real requests.
    """
    parts = raw.split(b" ", 3)
    if len(parts) != 4 or parts[2] != b"@*" or b'"disconnect"' not in parts[3]:
        return None
    num = parts[1]
    if not (num[:1] == b"-" and num[1:].isdigit()):
        return None
    probe_id = int(num) + 2**32
    return probe_id if PROBE_LOW <= probe_id < PROBE_HIGH else None
