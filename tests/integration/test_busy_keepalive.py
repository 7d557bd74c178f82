"""A request longer than Mongrel2's dead-host bound is answered, thanks to busy_keepalive.

The Mongrel2 here closes every connection quiet for MIN_PING seconds (what
docs/deploying.md recommends so that a client whose request died with a
handler host is not left hanging: test_scale_out proves that side). The
response bytes of a request do not count as activity to Mongrel2's reaper;
the ``ctl`` keep-alives m2gate's threaded workers send for each request
still being served do. With them a request running well past the bound is
answered; with them off (0) Mongrel2 closes the same request's connection.
"""

from __future__ import annotations

import http.client
from typing import Any

import pytest

from m2gate.testing.mongrel2 import Mongrel2, reaper_bound, reaper_settings

MIN_PING = 4
BOUND = reaper_bound(MIN_PING)
LONG = BOUND + 4  # seconds the app works on the long request


def long_get(m2: Mongrel2) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", m2.port, timeout=LONG + 60)
    conn.request("GET", "/?s=%d&id=long" % LONG)
    return conn.getresponse()


@pytest.mark.mongrel2(settings=reaper_settings(MIN_PING))
def test_long_request_outlives_the_reaper_with_keepalives(
    mongrel2: Mongrel2, m2gate_server: Any
) -> None:
    m2gate_server("host_app:application", "-p", "2", "--threads", "2", "--busy-keepalive", "1")
    resp = long_get(mongrel2)
    assert resp.status == 200
    assert resp.read().endswith(b"id long\n")


@pytest.mark.mongrel2(settings=reaper_settings(MIN_PING))
def test_without_keepalives_mongrel2_closes_it(mongrel2: Mongrel2, m2gate_server: Any) -> None:
    m2gate_server("host_app:application", "--threads", "2", "--busy-keepalive", "0")
    with pytest.raises(http.client.RemoteDisconnected):
        long_get(mongrel2)
