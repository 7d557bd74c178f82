"""AccessLogger: the common log format by default, any atoms on request."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from m2gate.adapters.accesslog import ATOMS, COMBINED_FORMAT, AccessLogger, check_format
from m2gate.protocol.messages import HTTPRequest, WebSocketHandshake, parse_message

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def request(path: str = "/a%20b", query: str = "x=1", **extra: str) -> HTTPRequest:
    headers = {
        "METHOD": "POST",
        "VERSION": "HTTP/1.1",
        "PATH": path,
        "QUERY": query,
        "REMOTE_ADDR": "10.0.0.7",
        "x-forwarded-for": "203.0.113.9, 10.0.0.1",
        "referer": "http://example.com/",
        "user-agent": "curl/8",
        **extra,
    }
    return HTTPRequest("sender", 5, path, headers, b"")


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def capture() -> logging.Logger:
    logger = logging.getLogger("test.access.%d" % id(object()))
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(Capture())
    return logger


def lines(logger: logging.Logger) -> list[str]:
    handler = logger.handlers[0]
    assert isinstance(handler, Capture)
    return handler.lines


def test_common_log_format(capture: logging.Logger) -> None:
    AccessLogger(logger=capture).log(request(), 201, 1234, 0.25)
    (line,) = lines(capture)
    assert re.fullmatch(
        r"10\.0\.0\.7 - - \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "
        r'"POST /a%20b\?x=1 HTTP/1\.1" 201 1234',
        line,
    ), line


def test_zero_bytes_is_a_dash_and_no_query_no_question_mark(capture: logging.Logger) -> None:
    AccessLogger(logger=capture).log(request(query=""), 304, 0, 0.0)
    assert lines(capture)[0].endswith('"POST /a%20b HTTP/1.1" 304 -')


def test_combined_format_and_all_atoms(capture: logging.Logger) -> None:
    AccessLogger(COMBINED_FORMAT, capture).log(request(), 200, 5, 0.0)
    assert lines(capture)[0].endswith(' 200 5 "http://example.com/" "curl/8"')
    fmt = " ".join("%s=%%(%s)s" % (a, a) for a in ATOMS)
    logger = AccessLogger(fmt, capture)
    atoms = logger.atoms(request(), 404, 0, 1.5)
    assert atoms["m"] == "POST" and atoms["U"] == "/a%20b" and atoms["q"] == "x=1"
    assert atoms["H"] == "HTTP/1.1" and atoms["s"] == 404 and atoms["b"] == "-"
    assert atoms["B"] == 0 and atoms["T"] == 1 and atoms["M"] == 1500 and atoms["D"] == 1500000
    assert atoms["p"] == os.getpid()


def test_only_used_atoms_are_computed(capture: logging.Logger) -> None:
    assert set(AccessLogger("%(s)s %(b)s", capture).atoms(request(), 200, 1, 0)) == {"s", "b"}


def test_trusted_x_forwarded_for(capture: logging.Logger) -> None:
    AccessLogger("%(h)s", capture, trust_x_forwarded_for=True).log(request(), 200, 1, 0)
    assert lines(capture) == ["203.0.113.9"]


def test_numeric_atoms_take_numeric_formats(capture: logging.Logger) -> None:
    AccessLogger("%(s)d %(D)06d", capture).log(request(), 200, 1, 0.001)
    assert lines(capture) == ["200 001000"]


@pytest.mark.parametrize("fmt", ["%(nope)s", "%(s)", "%(s)d %", "%(h)d"])
def test_bad_formats(fmt: str) -> None:
    with pytest.raises(ValueError):
        check_format(fmt)


def test_a_failing_line_never_raises(capture: logging.Logger) -> None:
    class Broken(HTTPRequest):
        @property
        def method(self) -> str:
            raise RuntimeError("broken message")

    broken = Broken("sender", 5, "/", {"METHOD": "GET"}, b"")
    AccessLogger(logger=capture).log(broken, 200, 0, 0)
    assert lines(capture) == []


def test_websocket_upgrade_is_logged_as_the_get_the_client_sent(capture: logging.Logger) -> None:
    """Mongrel2 renames an upgrade's METHOD to WEBSOCKET_HANDSHAKE (captured message)."""
    msg = parse_message((CORPUS / "tnetstring_ws_handshake.bin").read_bytes())
    assert isinstance(msg, WebSocketHandshake) and msg.method == "WEBSOCKET_HANDSHAKE"
    logger = AccessLogger('"%(r)s" %(m)s %(s)s', capture)
    logger.log(msg, 101, 0, 0.0)
    (line,) = lines(capture)
    assert line == '"GET /ws?room=1 HTTP/1.1" GET 101'
