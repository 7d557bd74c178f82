"""Pure-Python tnetstring parsing vs the C package ``tnetstring3``.

Measures, per message, on realistic Mongrel2 headers (the captured corpus in
tests/corpus when present, else a built ~15-header request):

* decoding the headers tnetstring with ``m2gate.protocol.tnetstring.loads``
  and with ``tnetstring.loads`` from ``tnetstring3`` (a C extension);
* ``parse_message`` end to end, as shipped and with the C decoder swapped in,
  which is the most an optional accelerated path could save per request;
* ``parse_message`` on the JSON captures, for comparison.

Run: ``python benchmarks/tnetstring_codec.py [--number N]``. The core must stay
stdlib-only; this script only informs whether an optional C path is worth it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import timeit
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from m2gate.protocol import messages
from m2gate.protocol import tnetstring as pure
from m2gate.protocol.messages import parse_message

try:
    import tnetstring as ctnet  # the C package tnetstring3
except ImportError:  # pragma: no cover - optional, only for this comparison
    ctnet = None

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "corpus"
REQUEST_KINDS = {"request", "upload_start", "upload_done", "websocket_frame"}


def _headers_slice(raw: bytes) -> bytes:
    """The headers tnetstring of a raw tnetstring-protocol message."""
    pos = raw.index(b" ", raw.index(b" ", raw.index(b" ") + 1) + 1) + 1
    _, end = pure.parse(raw, pos)
    return raw[pos:end]


def _synthetic() -> tuple[list[bytes], list[bytes]]:
    headers = {
        "PATH": "/api/v1/items/42",
        "x-forwarded-for": "203.0.113.7",
        "host": "www.example.com",
        "user-agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        "accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        "accept-language": "en-GB,en;q=0.5",
        "accept-encoding": "gzip, deflate, br",
        "cookie": ["session=6f1c2b9a8e7d4c3b2a19f0e8d7c6b5a4", "theme=dark"],
        "referer": "https://www.example.com/api/v1/items",
        "METHOD": "GET",
        "VERSION": "HTTP/1.1",
        "URI": "/api/v1/items/42?expand=owner",
        "QUERY": "expand=owner",
        "PATTERN": "/",
        "URL_SCHEME": "https",
        "REMOTE_ADDR": "203.0.113.7",
    }
    head = pure.dumps(headers)
    tnet = b"f400bf85-4538-4f7a-8908-67e313d515c2 17 /api/v1/items/42 %s0:," % head
    js = json.dumps(headers, separators=(",", ":")).encode()
    json_msg = b"f400bf85-4538-4f7a-8908-67e313d515c2 17 /api/v1/items/42 %d:%s,0:," % (
        len(js),
        js,
    )
    return [tnet], [json_msg]


def load_messages() -> tuple[str, list[bytes], list[bytes]]:
    """(source, tnetstring messages, json messages) of ordinary requests."""
    index = CORPUS / "index.json"
    if index.exists():
        entries = json.loads(index.read_text("utf-8"))["messages"]
        chosen = [e for e in entries if e["kind"] in REQUEST_KINDS and e["body_length"] < 1024]
        tnet = [(CORPUS / e["file"]).read_bytes() for e in chosen if e["protocol"] == "tnetstring"]
        js = [(CORPUS / e["file"]).read_bytes() for e in chosen if e["protocol"] == "json"]
        if tnet and js:
            return f"corpus ({len(tnet)} tnetstring + {len(js)} JSON captures)", tnet, js
    tnet, js = _synthetic()
    return "synthetic 16-header request (no corpus found)", tnet, js


def per_op_us(func: Callable[[bytes], object], items: list[bytes], number: int) -> float:
    """Best of 25 runs (least disturbed by other load) of the mean time per item, in µs."""

    def run() -> None:
        for item in items:
            func(item)

    runs = timeit.repeat(run, number=number, repeat=25)
    return min(runs) / (number * len(items)) * 1e6


def _c_parse(data: bytes, pos: int = 0, _depth: int = 0) -> tuple[Any, int]:
    """``pure.parse`` signature on top of the C decoder (slices, as it must)."""
    assert ctnet is not None
    value, rest = ctnet.pop(data[pos:])
    return value, len(data) - len(rest)


_HOOK = "_tnet_parse"  # the decoder parse_message calls (private: benchmark only)


@contextmanager
def c_decoder_in_parse_message() -> Iterator[None]:
    saved = getattr(messages, _HOOK)
    setattr(messages, _HOOK, _c_parse)
    try:
        yield
    finally:
        setattr(messages, _HOOK, saved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=200, help="loops per timing run")
    parser.add_argument(
        "--request-us", type=float, default=100.0, help="whole-request cost to compare with"
    )
    args = parser.parse_args(argv)
    n = args.number

    source, tnet_msgs, json_msgs = load_messages()
    heads = [_headers_slice(m) for m in tnet_msgs]
    avg_headers = statistics.mean(len(pure.loads(h)) for h in heads)
    avg_bytes = statistics.mean(len(h) for h in heads)
    print(f"python {platform.python_version()} ({platform.python_implementation()})")
    print(f"messages: {source}")
    print(f"headers: {avg_headers:.1f} per message, {avg_bytes:.0f} bytes on average\n")

    rows: list[tuple[str, float]] = []
    pure_loads = per_op_us(pure.loads, heads, n)
    rows.append(("headers: pure-Python tnetstring.loads", pure_loads))
    c_loads = c_msg = None
    if ctnet is not None:
        for head in heads:  # same answer, or the comparison is meaningless
            assert ctnet.loads(head) == pure.loads(head)
        c_loads = per_op_us(ctnet.loads, heads, n)
        rows.append(("headers: C tnetstring3 loads", c_loads))
    pure_msg = per_op_us(parse_message, tnet_msgs, n)
    rows.append(("parse_message, tnetstring, as shipped", pure_msg))
    if ctnet is not None:
        reference = [parse_message(raw) for raw in tnet_msgs]
        with c_decoder_in_parse_message():
            assert [parse_message(raw) for raw in tnet_msgs] == reference
            c_msg = per_op_us(parse_message, tnet_msgs, n)
        rows.append(("parse_message, tnetstring, C decoder", c_msg))
    rows.append(("parse_message, JSON headers", per_op_us(parse_message, json_msgs, n)))

    width = max(len(name) for name, _ in rows)
    for name, us in rows:
        print(f"{name:<{width}}  {us:8.2f} µs/op")
    print()
    if c_loads is not None and c_msg is not None:
        print(
            f"header decode: C is {pure_loads / c_loads:.1f}x faster, "
            f"saving {pure_loads - c_loads:.2f} µs per message"
        )
        print(
            f"parse_message: C decoder saves {pure_msg - c_msg:.2f} µs per message "
            f"({(pure_msg - c_msg) / pure_msg:.0%} of parsing)"
        )
        print(
            f"against a {args.request_us:.0f} µs request: "
            f"{(pure_msg - c_msg) / args.request_us:.1%} of its cost"
        )
    else:
        print("tnetstring3 is not installed: no C comparison")
    return 0


if __name__ == "__main__":
    sys.exit(main())
