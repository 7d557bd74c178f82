"""The connection bookkeeping both runtimes share (conn/table.py)."""

from __future__ import annotations

from m2gate.conn.connection import Connection
from m2gate.conn.table import ConnectionTable
from m2gate.protocol.messages import Message, parse_message

from .helpers import message, request_headers


def request(conn_id: int = 7, **extra: str) -> Message:
    return parse_message(message(request_headers(**extra), conn_id=conn_id))


def test_first_request_starts_and_pipelined_ones_wait_in_order() -> None:
    table = ConnectionTable(Connection)
    first, second, third = request(), request(), request()
    conn, start = table.admit(first)
    assert start and conn.busy
    assert table.admit(second) == (conn, False)
    assert table.admit(third) == (conn, False)
    assert table.done(conn, keep_alive=True) == (second, 0)
    assert table.done(conn, keep_alive=True) == (third, 0)
    assert table.done(conn, keep_alive=True) == (None, 0)
    assert not conn.busy and not table.conns  # forgotten between keep-alive requests


def test_reply_identity_is_the_sender_unless_set() -> None:
    msg = request()
    assert ConnectionTable(Connection).admit(msg)[0].uuid == msg.sender.encode()
    assert ConnectionTable(Connection, b"replies").admit(msg)[0].uuid == b"replies"


def test_a_closing_response_drops_what_was_pipelined_behind_it() -> None:
    table = ConnectionTable(Connection)
    conn, _ = table.admit(request())
    table.admit(request())
    table.admit(request())
    assert table.done(conn, keep_alive=False) == (None, 2)
    assert conn.closed and not table.conns


def test_disconnect_while_busy_keeps_the_connection_until_done() -> None:
    table = ConnectionTable(Connection)
    conn, _ = table.admit(request())
    table.admit(request())
    assert table.disconnected(conn.key) == (conn, 1)
    assert table.disconnects == 1 and table.conns == {conn.key: conn}
    conn.mark_closed()
    assert table.done(conn, keep_alive=False) == (None, 0)
    assert not table.conns


def test_disconnect_of_an_idle_or_unknown_connection() -> None:
    table = ConnectionTable(Connection)
    assert table.disconnected(("nobody", 1)) is None
    conn, _ = table.admit(request(DOWNLOAD_CREDITS="1024"))
    table.done(conn, keep_alive=True)  # flow-controlled: kept while idle
    assert table.disconnected(conn.key) == (conn, 0)
    assert table.disconnects == 0 and not table.conns


def test_flow_controlled_connection_keeps_its_credits_between_requests() -> None:
    table = ConnectionTable(Connection)
    conn, _ = table.admit(request(DOWNLOAD_CREDITS="4096"))
    assert conn.flow_control and conn.credits == 4096
    conn.credits -= 1000
    table.done(conn, keep_alive=True)
    again, start = table.admit(request())
    assert start and again is conn and conn.credits == 3096


def test_a_closed_idle_connection_is_replaced_by_a_new_one() -> None:
    table = ConnectionTable(Connection)
    conn, _ = table.admit(request(DOWNLOAD_CREDITS="4096"))
    conn.closed = True
    conn.busy = False
    fresh, start = table.admit(request())
    assert start and fresh is not conn and not fresh.closed
