"""The wire between the master and its workers: frame names and probe ids.

Shared by both sides (``master``/``router`` and ``child``), so neither has to
import the other's process code.

Multipart frames, the master's ROUTER adds the worker's id:

- master -> worker: ``RAW`` (one frame: a Mongrel2 message), or an empty
  frame then ``ready`` / ``stop`` / ``epoch N`` (Mongrel2 went away: forget
  every connection, the ones made from now on belong to epoch N; it comes
  before any message of the new incarnation)
- worker -> master: ``hello JSON``, ``d REPORTS`` (requests accepted and
  now served or dropped, one report each), ``s REPORTS`` (a response
  started to leave before its end: from then on only a close may answer for
  it; a response sent whole needs none), ``hb JSON`` (every second),
  ``loaded JSON`` (app source files, for reload-on-change), ``fatal TEXT``
  (app load failed), ``probe ID`` (``--dispatch direct``: a probe notice
  that reached this worker's own PULL, for the master to match)

``REPORTS`` is binary (:func:`encode_reports`): one or more groups, each a
header ``=HHBQ`` (sender length, count, flags, epoch: the Mongrel2
incarnation the connection belongs to), ``count`` connection ids as native
unsigned 64-bit integers (two each, low then high, with flag ``WIDE``: the
parser admits ids up to 20 digits), then the sender. Both ends run on one
machine, so the native byte order is theirs. The master decodes a frame
with two C calls per group and no exception path; a garbled frame is
ignored whole.

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
import struct
from collections.abc import Iterable

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
PROBE = b"probe"


# A report group: sender length, count, flags, epoch; then the ids, then the sender.
_GROUP = struct.Struct("=HHBQ")
_ONE = struct.Struct("=HHBQQ")  # a group of one report (most frames under light load)
WIDE = 0x01  # ids of 128 bits (low, high): beyond 2**64 - 1
_ID_BITS = 64
_ID_MAX = 2**_ID_BITS - 1
Report = tuple[str, int, int]  # (sender, conn_id, epoch)
ReportGroup = tuple[str, int, list[int]]  # (sender, epoch, conn ids)


def encode_report(sender: str, conn_id: int, epoch: int) -> bytes:
    """The payload of a ``d``/``s`` frame carrying one report."""
    raw = sender.encode("latin-1")
    if conn_id > _ID_MAX:
        return encode_reports([(sender, conn_id, epoch)])
    return _ONE.pack(len(raw), 1, 0, epoch, conn_id) + raw


def encode_reports(reports: Iterable[Report]) -> bytes:
    """The payload of a ``d``/``s`` frame carrying many reports, grouped by sender and epoch."""
    groups: dict[tuple[str, int], list[int]] = {}
    for sender, conn_id, epoch in reports:
        ids = groups.get((sender, epoch))
        if ids is None:
            groups[(sender, epoch)] = [conn_id]
        else:
            ids.append(conn_id)
    out: list[bytes] = []
    for (sender, epoch), ids in groups.items():
        raw = sender.encode("latin-1")
        narrow = [i for i in ids if i <= _ID_MAX]
        wide = [i for i in ids if i > _ID_MAX]
        for chunk in _chunks(narrow):
            ids_raw = struct.pack("=%dQ" % len(chunk), *chunk)
            out += (_GROUP.pack(len(raw), len(chunk), 0, epoch), ids_raw, raw)
        for chunk in _chunks(wide):
            halves = [h for i in chunk for h in (i & _ID_MAX, i >> _ID_BITS)]
            ids_raw = struct.pack("=%dQ" % len(halves), *halves)
            out += (_GROUP.pack(len(raw), len(chunk), WIDE, epoch), ids_raw, raw)
    return b"".join(out)


def _chunks(ids: list[int], most: int = 0xFFFF) -> Iterable[list[int]]:
    for i in range(0, len(ids), most):
        yield ids[i : i + most]


def decode_reports(data: bytes) -> list[ReportGroup]:
    """The groups of a ``d``/``s`` payload; an empty list if it is garbled anywhere.

    Every length is checked before it is used, so nothing here raises on
    any input (the master's loop must not stop at a report).
    """
    end = len(data)
    if end > _ONE.size:  # one report (light load): one C call
        slen, count, flags, epoch, conn_id = _ONE.unpack_from(data)
        if count == 1 and not flags and end == _ONE.size + slen:
            return [(data[_ONE.size :].decode("latin-1"), epoch, [conn_id])]
    groups: list[ReportGroup] = []
    view = memoryview(data)
    pos, head = 0, _GROUP.size
    while pos < end:
        if end - pos < head:
            return []
        slen, count, flags, epoch = _GROUP.unpack_from(data, pos)
        pos += head
        width = 16 if flags == WIDE else 8
        ids_end = pos + count * width
        stop = ids_end + slen
        if count == 0 or flags & ~WIDE or stop > end:
            return []
        ids = view[pos:ids_end].cast("Q").tolist()
        if flags:
            ids = [ids[i] | ids[i + 1] << _ID_BITS for i in range(0, len(ids), 2)]
        groups.append((data[ids_end:stop].decode("latin-1"), epoch, ids))
        pos = stop
    return groups


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
