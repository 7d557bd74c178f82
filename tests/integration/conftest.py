"""Fixtures of the integration tests: the validated WSGI probe app behind ``m2gate serve``.

(The Mongrel2 and ``m2gate serve`` fixtures themselves are in tests/conftest.py;
helpers that tests import are in wsgi_http.py and tests/support.py.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from wsgi_http import validator_complaints


@pytest.fixture
def events(tmp_path: Path) -> Path:
    """File the probe app appends its start/close events to."""
    return tmp_path / "events.log"


@pytest.fixture
def wsgi(m2gate_server: Any, events: Path) -> Iterator[Callable[..., Any]]:
    """Start the probe app under wsgiref's validator; its complaints fail the test.

    ``wsgi("--threads", "4")`` serves ``wsgi_probe:application`` through the
    ``m2gate_server`` fixture; ``app=`` picks another app. The server log is
    checked at teardown, as the validator's complaints about iterables that
    were never closed only show up there.
    """
    started: list[Any] = []

    def start(*args: str, app: str = "wsgi_probe:application", **kwargs: Any) -> Any:
        env = {"M2GATE_TEST_EVENTS": str(events), **kwargs.pop("env", {})}
        server = m2gate_server(app, *args, env=env, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
        complaints = validator_complaints(server.output)
        assert not complaints, "wsgiref.validate objected:\n" + server.output
