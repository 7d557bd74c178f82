from __future__ import annotations

from typing import Any

import pytest

from m2gate.protocol import replies, tnetstring
from m2gate.protocol.replies import MAX_TARGETS, check_uuid, close, ctl, deliver, reply

UUID = b"f400bf85-4538-4f7a-8908-67e313d515c2"


def test_reply_exact_bytes() -> None:
    assert reply(b"ABC", 42, b"HTTP/1.1 200 OK\r\n\r\n") == b"ABC 2:42, HTTP/1.1 200 OK\r\n\r\n"


def test_reply_binary_body_is_verbatim() -> None:
    body = bytes(range(256))
    assert reply(UUID, 1, body) == UUID + b" 1:1, " + body


def test_reply_refuses_empty_body() -> None:
    with pytest.raises(ValueError):
        reply(UUID, 1, b"")


def test_deliver_exact_bytes() -> None:
    assert deliver(b"ABC", [1, 22, 333], b"hi") == [b"ABC 8:1 22 333, hi"]


def test_deliver_single_target_matches_reply() -> None:
    assert deliver(UUID, [9], b"x") == [reply(UUID, 9, b"x")]


def test_deliver_refuses_empty_body() -> None:
    with pytest.raises(ValueError):
        deliver(UUID, [1, 2], b"")


def test_deliver_to_nobody_sends_nothing() -> None:
    assert deliver(UUID, [], b"x") == []


def test_deliver_exactly_128_targets_is_one_message() -> None:
    assert MAX_TARGETS == 128
    out = deliver(UUID, list(range(128)), b"x")
    assert len(out) == 1


def test_deliver_129_targets_is_split_in_two() -> None:
    ids = list(range(1, 130))
    out = deliver(UUID, ids, b"x")
    assert len(out) == 2
    first = b" ".join(b"%d" % i for i in ids[:128])
    assert out[0] == b"%s %d:%s, x" % (UUID, len(first), first)
    assert out[1] == UUID + b" 3:129, x"


def test_split_respects_custom_limit_and_keeps_order() -> None:
    out = deliver(b"U", [1, 2, 3, 4, 5], b"x", max_targets=2)
    assert out == [b"U 3:1 2, x", b"U 3:3 4, x", b"U 1:5, x"]


def test_close_is_the_only_empty_body() -> None:
    assert close(b"ABC", [5]) == [b"ABC 1:5, "]
    assert close(b"ABC", [5, 66]) == [b"ABC 4:5 66, "]


def test_close_splits_at_128() -> None:
    out = close(UUID, list(range(1000, 1129)))
    assert len(out) == 2
    assert all(msg.endswith(b", ") for msg in out)
    assert out[1] == UUID + b" 4:1128, "


def test_close_nobody_sends_nothing() -> None:
    assert close(UUID, []) == []


@pytest.mark.parametrize(
    ("args", "payload"),
    [
        ({"keep-alive": True}, b"31:3:ctl,21:10:keep-alive,4:true!}]"),
        ({"credits": 4096}, b"27:3:ctl,17:7:credits,4:4096#}]"),
        ({"cancel": True}, b"26:3:ctl,16:6:cancel,4:true!}]"),
    ],
)
def test_ctl_exact_bytes(args: dict[str, Any], payload: bytes) -> None:
    assert ctl(b"ABC", [7], args) == [b"ABC 3:X 7, " + payload]
    # The payload is exactly what Mongrel2 expects: ["ctl", {key: value}].
    assert tnetstring.loads(payload) == [b"ctl", {k.encode(): v for k, v in args.items()}]


def test_ctl_many_targets_and_split() -> None:
    payload = tnetstring.dumps(["ctl", {"credits": 1}])
    assert ctl(b"ABC", [1, 22], {"credits": 1}) == [b"ABC 6:X 1 22, " + payload]
    out = ctl(UUID, list(range(129)), {"credits": 1})
    assert len(out) == 2
    assert out[1] == UUID + b" 5:X 128, " + payload


@pytest.mark.parametrize(
    "args",
    [
        {"keepalive": True},  # unknown key
        {"timeout": 5},  # unknown key
        {b"credits": 5},  # key as bytes
        {"credits": True},  # bool is not an int here
        {"credits": "5"},
        {"credits": 5.0},
        {"keep-alive": 1},
        {"keep-alive": "true"},
        {"cancel": None},
        {"credits": 5, "bogus": True},  # one bad key spoils the lot
    ],
)
def test_ctl_refuses_unknown_keys_and_types(args: dict[Any, Any]) -> None:
    with pytest.raises(ValueError):
        ctl(UUID, [1], args)


@pytest.mark.parametrize("uuid", [UUID, b"a", b"A-Z-0-9", b"-"])
def test_check_uuid_accepts(uuid: bytes) -> None:
    assert check_uuid(uuid) is uuid


@pytest.mark.parametrize(
    "uuid", [b"", b"a b", b"a\n", b"a_b", b"a.b", b"a:b", b"\xc3\xa9", b"abc\x00"]
)
def test_check_uuid_refuses(uuid: bytes) -> None:
    with pytest.raises(ValueError):
        check_uuid(uuid)


# --- reply_uuid -----------------------------------------------------------------


def test_reply_uuid_is_recv_ident_when_set_else_the_sender() -> None:
    assert replies.reply_uuid("", "f400-sender") == b"f400-sender"
    assert replies.reply_uuid(b"", "f400-sender") == b"f400-sender"
    assert replies.reply_uuid("recv-1", "f400-sender") == b"recv-1"
    assert replies.reply_uuid(b"recv-1", "f400-sender") == b"recv-1"
