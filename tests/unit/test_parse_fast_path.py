"""The C fast path for the usual request must agree with the full parser.

``parse_message`` first tries ``_parse_common`` (tnetstring headers, no body,
two C calls) and only falls back to the full parser when the message has
another shape. This checks, on mutated real-shaped messages and arbitrary
bytes, that whenever the fast path answers, the full pure-Python parser
gives the very same event (or both call the message malformed).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m2gate.protocol import messages
from m2gate.protocol.errors import MalformedMessage
from m2gate.protocol.messages import Message, parse_message

from .test_fuzz import SEEDS, mutated


@pytest.fixture(autouse=True, scope="module")
def c_codec() -> Iterator[None]:
    if not messages.use_accelerator(True):
        pytest.skip("tnetstring3 is not installed")
    yield


def _full_parse(data: bytes) -> Message | str:
    """What the full (pure-Python) parser makes of ``data``: an event or "malformed"."""
    messages.use_accelerator(False)
    try:
        return parse_message(data)
    except MalformedMessage:
        return "malformed"
    finally:
        messages.use_accelerator(True)


def test_the_usual_request_takes_the_fast_path() -> None:
    data = SEEDS[0]
    fast = messages._parse_common(data)
    assert fast is not None and fast == _full_parse(data)


def test_other_shapes_fall_back() -> None:
    for data in SEEDS[1:4]:  # JSON headers, or a body
        assert messages._parse_common(data) is None


@settings(max_examples=1500, deadline=None)
@given(mutated(SEEDS) | st.binary(max_size=120).map(lambda b: b"S 1 / " + b))
def test_fast_path_agrees_with_the_full_parser(data: bytes) -> None:
    try:
        fast = messages._parse_common(data)
    except MalformedMessage:
        assert _full_parse(data) == "malformed"
        return
    if fast is not None:
        assert _full_parse(data) == fast
