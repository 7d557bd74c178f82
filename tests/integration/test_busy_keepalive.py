"""Requests longer than Mongrel2's dead-host bound are answered, thanks to busy_keepalive.

The Mongrel2 here closes every connection quiet for MIN_PING seconds (what
docs/deploying.md recommends so that a client whose request died with a
handler host is not left hanging: test_scale_out proves that side). Neither
the response bytes nor an upload's body count as activity to Mongrel2's
reaper; the ``ctl`` keep-alives m2gate's threaded workers send for each
request they hold or serve do. With them, a request the app works on well
past the bound, and an upload that trickles in for as long, are answered;
with them off (0) Mongrel2 closes the same connections.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from typing import Any

import pytest

from m2gate.testing.mongrel2 import Mongrel2, reaper_bound, reaper_settings

MIN_PING = 4
BOUND = reaper_bound(MIN_PING)
LONG = BOUND + 2  # seconds each request takes: past the latest the reaper closes
UPLOAD = 64 * 1024  # over limits.content_length: Mongrel2 spools it to a file


def long_request(m2: Mongrel2) -> http.client.HTTPResponse:
    """A GET the app works on for LONG seconds."""
    conn = http.client.HTTPConnection("127.0.0.1", m2.port, timeout=LONG + 60)
    conn.request("GET", "/?s=%d&id=long" % LONG)
    return conn.getresponse()


def slow_upload(m2: Mongrel2) -> http.client.HTTPResponse:
    """A POST whose body the client sends over LONG seconds."""
    conn = http.client.HTTPConnection("127.0.0.1", m2.port, timeout=LONG + 60)
    conn.putrequest("POST", "/?id=long")
    conn.putheader("Content-Length", str(UPLOAD))
    conn.endheaders()
    pieces = LONG * 2
    for i in range(pieces):
        try:
            conn.send(
                b"x" * (UPLOAD // pieces if i < pieces - 1 else UPLOAD - i * (UPLOAD // pieces))
            )
        except OSError:  # closed by Mongrel2: the response read below says how
            break
        time.sleep(0.5)
    return conn.getresponse()


KINDS = pytest.mark.parametrize(
    "send", [long_request, slow_upload], ids=["long-app", "slow-upload"]
)


@KINDS
@pytest.mark.mongrel2(settings=reaper_settings(MIN_PING))
def test_answered_past_the_reaper_with_keepalives(
    mongrel2: Mongrel2, m2gate_server: Any, send: Callable[[Mongrel2], http.client.HTTPResponse]
) -> None:
    m2gate_server(
        "host_app:application",
        *("-p", "2", "--threads", "2", "--busy-keepalive", "1"),
        *("--upload-dir", str(mongrel2.upload_dir)),
    )
    resp = send(mongrel2)
    assert resp.status == 200
    assert resp.read().endswith(b"id long\n")


@KINDS
@pytest.mark.mongrel2(settings=reaper_settings(MIN_PING))
def test_closed_by_mongrel2_without_them(
    mongrel2: Mongrel2, m2gate_server: Any, send: Callable[[Mongrel2], http.client.HTTPResponse]
) -> None:
    m2gate_server(
        "host_app:application",
        *("--threads", "2", "--busy-keepalive", "0"),
        *("--upload-dir", str(mongrel2.upload_dir)),
    )
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        send(mongrel2)
