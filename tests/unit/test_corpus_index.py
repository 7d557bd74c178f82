"""The captured Mongrel2 corpus is complete and matches its index."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
KINDS = {
    "request",
    "disconnect",
    "credits",
    "upload_start",
    "upload_done",
    "websocket_handshake",
    "websocket_frame",
}


def load_index() -> list[dict[str, object]]:
    index = json.loads((CORPUS / "index.json").read_text(encoding="utf-8"))
    messages: list[dict[str, object]] = index["messages"]
    return messages


def test_every_indexed_file_matches() -> None:
    messages = load_index()
    assert messages
    for entry in messages:
        raw = (CORPUS / str(entry["file"])).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == entry["sha256"], entry["name"]
        assert len(raw) == entry["size"]
        assert entry["kind"] in KINDS
        assert entry["protocol"] in ("tnetstring", "json")
        assert raw.startswith(str(entry["sender"]).encode() + b" %d " % int(str(entry["conn_id"])))


def test_no_stray_files_and_every_kind_in_both_protocols() -> None:
    messages = load_index()
    names = {str(e["file"]) for e in messages}
    assert names == {p.name for p in CORPUS.glob("*.bin")}
    for proto in ("tnetstring", "json"):
        assert {e["kind"] for e in messages if e["protocol"] == proto} == KINDS
