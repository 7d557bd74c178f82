"""Big bodies through the ASGI runtime: memory stays flat both ways.

The CI-size tests move 200 MB; ``-m long`` runs the 1 GB versions. Peak RSS
(VmHWM) of the m2gate process is asserted far below the body size, which is
only possible if nothing buffers the whole body.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from m2gate.testing.mongrel2 import Mongrel2

pytestmark = pytest.mark.integration

APP = "starlette_app:app"
MB = 1024 * 1024
RSS_LIMIT_MB = 150


def peak_rss_mb(pid: int) -> float:
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM for pid %d" % pid)


def pattern(total: int, block: int = MB) -> Iterator[bytes]:
    chunk = hashlib.sha256(b"m2gate").digest() * (block // 32)
    sent = 0
    while sent < total:
        piece = chunk[: total - sent]
        sent += len(piece)
        yield piece


def expected_sha(total: int) -> str:
    digest = hashlib.sha256()
    for piece in pattern(total):
        digest.update(piece)
    return digest.hexdigest()


def upload(mongrel2: Mongrel2, m2gate_server: Any, size: int, tmp_path: Path) -> None:
    server = m2gate_server(
        APP,
        "--interface",
        "asgi",
        "--upload-dir",
        str(mongrel2.upload_dir),
        env={"M2GATE_TEST_STATE": str(tmp_path)},
    )
    started = time.monotonic()
    resp = httpx.post(
        mongrel2.url + "/sha256",
        content=pattern(size),
        headers={"Content-Length": str(size)},
        timeout=600,
    )
    assert resp.status_code == 200
    assert resp.json()["size"] == size
    assert resp.json()["sha256"] == expected_sha(size)
    elapsed = time.monotonic() - started
    peak = peak_rss_mb(server.pid)
    print(
        "ASGI upload of %d MB: %.0f MB/s, m2gate peak RSS %.1f MB"
        % (size // MB, size / MB / elapsed, peak)
    )
    assert peak < RSS_LIMIT_MB
    assert not list(mongrel2.upload_dir.iterdir())


def download(mongrel2: Mongrel2, m2gate_server: Any, size_mb: int, tmp_path: Path) -> None:
    server = m2gate_server(APP, "--interface", "asgi", env={"M2GATE_TEST_STATE": str(tmp_path)})
    digest = hashlib.sha256()
    total = 0
    block = bytes(range(256)) * 256
    started = time.monotonic()
    with httpx.stream("GET", mongrel2.url + "/big?mb=%d" % size_mb, timeout=600) as resp:
        for chunk in resp.iter_bytes(1024 * 1024):
            digest.update(chunk)
            total += len(chunk)
    assert total == size_mb * MB
    elapsed = time.monotonic() - started
    want = hashlib.sha256()
    for _ in range(size_mb * MB // len(block)):
        want.update(block)
    assert digest.hexdigest() == want.hexdigest()
    peak = peak_rss_mb(server.pid)
    m2_peak = peak_rss_mb(mongrel2.pid or 0)
    print(
        "ASGI download of %d MB with flow control: %.0f MB/s, m2gate peak RSS %.1f MB,"
        " mongrel2 %.1f MB" % (size_mb, size_mb / elapsed, peak, m2_peak)
    )
    assert peak < RSS_LIMIT_MB
    assert m2_peak < RSS_LIMIT_MB


def test_upload_200mb_streams_with_flat_memory(
    mongrel2: Mongrel2, m2gate_server: Any, tmp_path: Path
) -> None:
    upload(mongrel2, m2gate_server, 200 * MB, tmp_path)


@pytest.mark.mongrel2(settings={"download.flow_control": 1})
def test_download_200mb_flow_controlled_with_flat_memory(
    mongrel2: Mongrel2, m2gate_server: Any, tmp_path: Path
) -> None:
    download(mongrel2, m2gate_server, 200, tmp_path)


@pytest.mark.long
def test_upload_1gb(mongrel2: Mongrel2, m2gate_server: Any, tmp_path: Path) -> None:
    upload(mongrel2, m2gate_server, 1024 * MB, tmp_path)


@pytest.mark.long
@pytest.mark.mongrel2(settings={"download.flow_control": 1})
def test_download_1gb(mongrel2: Mongrel2, m2gate_server: Any, tmp_path: Path) -> None:
    download(mongrel2, m2gate_server, 1024, tmp_path)
