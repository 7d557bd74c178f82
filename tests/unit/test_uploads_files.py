"""Which temp files m2gate may open or delete (conn/uploads.py): only what Mongrel2 announced."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from m2gate.conn.uploads import UploadRejected, UploadStore, announced_path, remove_claimed
from m2gate.protocol.messages import parse_message

from .helpers import message, request_headers

START = "x-mongrel2-upload-start"
DONE = "x-mongrel2-upload-done"


def parsed(body: bytes = b"", **headers: str) -> object:
    return parse_message(message(request_headers("POST", "/up", **headers), body, path=b"/up"))


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({START: "/t/upload.1", "content-length": "30000"}, b"", "/t/upload.1"),
        ({START: "/t/upload.1", "transfer-encoding": "chunked"}, b"", "/t/upload.1"),
        # forged: nothing for Mongrel2 to spool, or a body it sent inline
        ({START: "/t/upload.1"}, b"", None),
        ({START: "/t/upload.1", "content-length": "0"}, b"", None),
        ({START: "/t/upload.1", "content-length": "5"}, b"hello", None),
        ({START: "/t/upload.1", "content-length": "-1"}, b"", None),
        # a real upload-done completes an upload; it announces nothing
        ({START: "/t/upload.1", DONE: "/t/upload.1", "content-length": "30000"}, b"", None),
        # Mongrel2's upload-start with a client-forged upload-done: still its file
        (
            {START: "/t/upload.1", DONE: "/etc/passwd", "content-length": "30000"},
            b"",
            "/t/upload.1",
        ),
    ],
)
def test_announced_path(headers: dict[str, str], body: bytes, expected: str | None) -> None:
    assert announced_path(parsed(body, **headers)) == expected  # type: ignore[arg-type]


def test_claim_accepts_a_regular_file_in_the_store(tmp_path: Path) -> None:
    f = tmp_path / "upload.abc"
    f.write_bytes(b"x")
    real, ident = UploadStore(str(tmp_path)).claim(str(f))
    assert real == str(f.resolve())
    assert ident == (f.stat().st_dev, f.stat().st_ino)


def test_claim_refuses_links_directories_and_elsewhere(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    outside = tmp_path / "secret"
    outside.write_bytes(b"s")
    (store / "link").symlink_to(outside)
    (store / "sub").mkdir()
    inner = store / "upload.real"
    inner.write_bytes(b"r")
    (store / "samelink").symlink_to(inner)
    s = UploadStore(str(store))
    for path in (store / "link", store / "sub", outside, store / "missing", store / "samelink"):
        with pytest.raises(UploadRejected):
            s.claim(str(path))
    with pytest.raises(UploadRejected):
        UploadStore("").claim(str(inner))


def test_remove_claimed_only_removes_the_claimed_file(tmp_path: Path) -> None:
    f = tmp_path / "upload.1"
    f.write_bytes(b"first")
    _, ident = UploadStore(str(tmp_path)).claim(str(f))
    f.rename(tmp_path / "kept")  # keeps the inode alive, so the new file gets another
    f.write_bytes(b"another file at the same name")  # e.g. mkstemp reused it
    assert not remove_claimed(str(f), ident)
    assert f.exists()
    _, ident = UploadStore(str(tmp_path)).claim(str(f))
    assert remove_claimed(str(f), ident) and not f.exists()
    assert not remove_claimed(str(f), ident)  # gone already: fine


def test_remove_claimed_never_follows_a_link(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"t")
    link = tmp_path / "upload.link"
    link.symlink_to(target)
    ident = (target.stat().st_dev, target.stat().st_ino)
    assert not remove_claimed(str(link), ident)
    assert target.exists() and os.path.islink(link)
    assert not remove_claimed(str(target), None)  # never claimed: never removed
