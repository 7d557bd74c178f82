from __future__ import annotations

from typing import Any

import pytest

from m2gate.protocol.errors import MalformedMessage
from m2gate.protocol.tnetstring import dumps, loads, parse


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (b"", b"0:,"),
        (b"hello", b"5:hello,"),
        (b"a:b,c}", b"6:a:b,c},"),
        (0, b"1:0#"),
        (-42, b"3:-42#"),
        (12345678901234567890, b"20:12345678901234567890#"),
        (True, b"4:true!"),
        (False, b"5:false!"),
        (None, b"0:~"),
        (1.5, b"3:1.5^"),
        ([], b"0:]"),
        ([b"a", 1], b"8:1:a,1:1#]"),
        ({}, b"0:}"),
        ({b"k": b"v"}, b"8:1:k,1:v,}"),
        ({b"k": [b"x", b"y"]}, b"15:1:k,8:1:x,1:y,]}"),
    ],
)
def test_round_trip_exact_bytes(value: Any, wire: bytes) -> None:
    assert dumps(value) == wire
    assert loads(wire) == value


def test_str_is_written_as_utf8_and_read_back_as_bytes() -> None:
    assert dumps("é") == b"2:\xc3\xa9,"
    assert loads(dumps("é")) == b"\xc3\xa9"


def test_tuple_is_written_as_list() -> None:
    assert dumps((b"a",)) == b"4:1:a,]"


def test_bool_is_not_written_as_int() -> None:
    assert loads(dumps([True, 1])) == [True, 1]


def test_binary_payload_survives() -> None:
    raw = bytes(range(256))
    assert loads(dumps(raw)) == raw


def test_realistic_header_dict_round_trips() -> None:
    headers = {
        b"PATH": b"/a b",
        b"METHOD": b"GET",
        b"cookie": [b"a=1", b"b=2"],
        b"x-latin": b"caf\xe9",
        b"x-empty": b"",
    }
    assert loads(dumps(headers)) == headers


def test_nested_containers_round_trip() -> None:
    value = [b"ctl", {b"credits": 5, b"more": [{b"x": None}]}]
    assert loads(dumps(value)) == value


def test_parse_returns_end_position_and_reads_from_offset() -> None:
    data = b"xx5:hello,3:abc,"
    assert parse(data, 2) == (b"hello", 10)
    assert parse(data, 10) == (b"abc", 16)


def test_dumps_refuses_unknown_types() -> None:
    with pytest.raises(TypeError):
        dumps(object())
    with pytest.raises(TypeError):
        dumps({b"k": {1, 2}})


@pytest.mark.parametrize(
    "wire",
    [
        b"",  # nothing at all
        b":",  # no length digits
        b"5",  # no colon
        b"5hello,",  # no colon
        b"-1:,",  # sign in the length
        b" 5:hello,",  # space in the length
        b"0x5:hello,",  # hex in the length
        b"\xb2:x,",  # a non-ASCII "digit"
        b"12345678901:x,",  # more length digits than allowed
        b"5:hell",  # truncated payload
        b"5:hello",  # missing type tag
        b"10:hello,",  # length runs past the end
        b"5:hello?",  # unknown type tag
        b"5:hello,x",  # trailing bytes
        b"5:hello,5:hello,",  # two values
        b"3:abc#",  # bad integer
        b"0:#",  # empty integer
        b"3:yes!",  # bad boolean
        b"4:True!",  # booleans are lowercase
        b"3:abc^",  # bad float
        b"1:x~",  # null with a payload
        b"5:1:a,]x",  # trailing after a list
        b"3:1:a,]",  # list item overruns the list
        b"5:1:a,1]",  # list item garbage at its end
        b"8:1:a,1:bc,}",  # dict value overruns the dict
        b"4:1:a,1:b,}",  # dict length too short
        b"4:1:a,}",  # dict key without a value
        b"5:1:k,}",  # dict key then nothing (end of dict)
        b"8:1:1#1:v,}",  # non-string dict key
        b"4:0:~}",  # null dict key (and no value)
        b"7:0:]1:v,}",  # list as dict key
        b"4:1:x!]",  # bad boolean inside a list
        b"5:1:x?,]",  # unknown tag inside a list
    ],
)
def test_malformed_input_raises_malformed_message(wire: bytes) -> None:
    with pytest.raises(MalformedMessage):
        loads(wire)


def _nested_lists(depth: int) -> bytes:
    data = b"0:]"
    for _ in range(depth):
        data = b"%d:%s]" % (len(data), data)
    return data


def _nested_dicts(depth: int) -> bytes:
    data = b"0:}"
    for _ in range(depth):
        inner = b"1:k," + data
        data = b"%d:%s}" % (len(inner), inner)
    return data


def test_moderate_nesting_is_fine() -> None:
    assert loads(_nested_lists(20)) is not None
    assert loads(_nested_dicts(20)) is not None


@pytest.mark.parametrize("build", [_nested_lists, _nested_dicts])
def test_deep_nesting_is_malformed_not_recursion_error(build: Any) -> None:
    with pytest.raises(MalformedMessage):
        loads(build(5000))


def test_huge_integer_is_malformed_not_value_error() -> None:
    digits = b"9" * 5000
    with pytest.raises(MalformedMessage):
        loads(b"%d:%s#" % (len(digits), digits))
