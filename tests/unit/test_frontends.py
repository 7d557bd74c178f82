"""Several Mongrel2 front-ends: the settings, the sender tags, reply routing, partial resets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from m2gate.cli import build_parser
from m2gate.config.declare import ConfigError
from m2gate.config.loader import load
from m2gate.config.resolve import resolve_specs
from m2gate.conn.connection import Connection
from m2gate.conn.table import ConnectionTable, tagged_reply_uuid
from m2gate.protocol import replies
from m2gate.protocol.messages import parse_message
from m2gate.protocol.tnetstring import dumps
from m2gate.transports.frontends import FrontendSinks, frontend_of, tag, tag_message

A, B = "tcp://127.0.0.1:7001", "tcp://127.0.0.1:8001"
RA, RB = "tcp://127.0.0.1:7000", "tcp://127.0.0.1:8000"


def cli_of(*argv: str) -> dict[str, Any]:
    args = build_parser().parse_args(["serve", "app:x", *argv])
    return {k: v for k, v in vars(args).items() if k != "command"}


def test_repeated_specs_pair_in_order() -> None:
    cfg = resolve_specs(
        load(cli_of("--send-spec", A, "--recv-spec", RA, "--send-spec", B, "--recv-spec", RB), {})
    )
    assert cfg.frontends == [(A, RA), (B, RB)]


def test_recv_specs_default_to_send_port_minus_one_each() -> None:
    cfg = resolve_specs(load(cli_of("--send-spec", A, "--send-spec", B), {}))
    assert cfg.frontends == [(A, RA), (B, RB)]


def test_specs_from_the_environment_and_a_config_file(tmp_path: Path) -> None:
    env = {"M2GATE_SEND_SPEC": "%s,%s" % (A, B), "M2GATE_RECV_SPEC": "%s,%s" % (RA, RB)}
    assert resolve_specs(load(cli_of(), env)).frontends == [(A, RA), (B, RB)]
    path = tmp_path / "m.toml"
    path.write_text('send_spec = ["%s", "%s"]\nrecv_spec = ["%s", "%s"]\n' % (A, B, RA, RB))
    assert resolve_specs(load(cli_of("-c", str(path)), {})).frontends == [(A, RA), (B, RB)]
    path.write_text('send_spec = "%s"\n' % A)  # one spec as a plain string still reads
    assert resolve_specs(load(cli_of("-c", str(path)), {})).frontends == [(A, RA)]


def test_count_mismatch_is_one_line_naming_both_settings() -> None:
    with pytest.raises(ConfigError) as err:
        resolve_specs(load(cli_of("--send-spec", A, "--send-spec", B, "--recv-spec", RA), {}))
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("send_spec/recv_spec: 2 send_spec(s) but 1 recv_spec(s)")


def test_the_same_send_spec_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="send_spec: the same spec given twice"):
        resolve_specs(load(cli_of("--send-spec", A, "--send-spec", A), {}))


def request(sender: str, conn_id: int) -> bytes:
    headers = dumps({"METHOD": "GET", "PATH": "/", "VERSION": "HTTP/1.1"})
    return b"%s %d / %s0:," % (sender.encode(), conn_id, headers)


def test_a_tagged_message_parses_with_its_tag_in_the_sender() -> None:
    msg = parse_message(tag_message(tag(1), request("same-ident", 7)))
    assert msg.key == ("1-same-ident", 7)
    assert frontend_of(msg.sender) == "1-"
    other = parse_message(tag_message(tag(0), request("same-ident", 7)))
    assert other.key != msg.key  # same ident, same id, two front-ends: two connections


@pytest.mark.parametrize(("ident", "uuid"), [("", b"1-same-ident"), ("rid", b"1-rid")])
def test_tagged_reply_uuid_keeps_the_tag(ident: str, uuid: bytes) -> None:
    assert tagged_reply_uuid(ident, "1-same-ident") == uuid


class Recorder:
    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    def send(self, messages: Sequence[bytes]) -> None:
        self.sent.append([bytes(m) for m in messages])


def test_sinks_route_by_tag_and_strip_it() -> None:
    sinks = [Recorder(), Recorder(), Recorder()]
    out = FrontendSinks(sinks)
    out.send([replies.reply(b"2-ident", 5, b"body"), *replies.close(b"2-ident", [5])])
    assert sinks[0].sent == [] and sinks[1].sent == []
    assert sinks[2].sent == [[b"ident 1:5, body", *replies.close(b"ident", [5])]]
    with pytest.raises(ValueError):
        out.send([replies.reply(b"ident", 5, b"x")])


def test_table_of_tagged_senders_resets_one_frontend_only() -> None:
    table: ConnectionTable[Connection] = ConnectionTable(Connection)
    table.tag_senders()
    a, _ = table.admit(parse_message(tag_message(tag(0), request("id", 1))))
    b, _ = table.admit(parse_message(tag_message(tag(1), request("id", 1))))
    assert a is not b
    assert (a.uuid, b.uuid) == (b"0-id", b"1-id")
    old = table.reset(frontends=("0-",))
    assert [conn for conn, _ in old] == [a]
    assert list(table.conns.values()) == [b]
    assert table.reset() == [(b, 0)]


def test_init_writes_one_spec_as_text_and_several_as_a_list() -> None:
    from m2gate.config.resolve import init_values

    assert init_values(cli_of("--send-spec", A))["send_spec"] == A
    values = init_values(cli_of("--send-spec", A, "--send-spec", B))
    assert values["send_spec"] == [A, B]


def test_master_tags_name_the_incarnation_and_route_like_the_others() -> None:
    from m2gate.transports.frontends import FrontendPubs, gen_tag

    class Pub:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def send(self, msg: bytes | memoryview) -> None:
            self.sent.append(bytes(msg))

    assert gen_tag(1, 2) == b"1g2-"
    sinks = [Recorder(), Recorder()]
    FrontendSinks(sinks).send([replies.reply(b"1g2-ident", 3, b"x")])
    assert sinks[1].sent == [[b"ident 1:3, x"]]
    pubs, tags = [Pub(), Pub()], [gen_tag(0, 0), gen_tag(1, 0)]
    out = FrontendPubs(pubs, tags)
    out.send(replies.reply(b"1g0-ident", 3, b"x"))
    assert pubs[1].sent == [b"ident 1:3, x"] and pubs[0].sent == []
    tags[1] = gen_tag(1, 1)  # front-end 1 restarted: its old connections' ids are void
    with pytest.raises(ValueError, match="old incarnation"):
        out.send(replies.reply(b"1g0-ident", 3, b"x"))
    out.send(replies.reply(b"1g1-ident", 3, b"y"))
    assert pubs[1].sent[-1] == b"ident 1:3, y"


def test_dispatcher_forgets_one_frontend_and_keeps_the_epoch() -> None:
    from m2gate.protocol.peek import peek
    from m2gate.supervisor.handoff import Dispatcher, Forward, Hold
    from m2gate.supervisor.state import Worker

    d = Dispatcher(100)
    d.add_worker(Worker(b"w0", 1000, 1, 1))
    d.mark_ready(b"w0")
    raws = [tag_message(t, request("id", 1)) for t in (b"0g0-", b"1g0-")]
    assert isinstance(d.assign(peek(raws[0]), raws[0], 0.0), Forward)
    assert d.assign(peek(raws[1]), raws[1], 0.0) == Hold()  # the one thread is busy
    assert d.forget_frontend("1g0-") == 1  # front-end 1's queued request: dropped
    assert d.epoch == 0 and not d.queue
    # Front-end 0's request in flight is still counted, and its report still frees it.
    assert d.on_done(b"w0", ("0g0-id", 1), 1.0, 0)
