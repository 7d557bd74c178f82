"""Every message captured from a real Mongrel2 (tests/corpus, see its index.json)
parses to the right event with the fields Mongrel2 meant."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from m2gate.protocol.messages import (
    Credits,
    Disconnect,
    HTTPRequest,
    Message,
    UploadDone,
    UploadStart,
    WebSocketFrame,
    WebSocketHandshake,
    parse_message,
)

pytestmark = pytest.mark.usefixtures("both_codecs")


CORPUS = Path(__file__).resolve().parent.parent / "corpus"
INDEX = CORPUS / "index.json"

if not INDEX.exists():
    pytest.skip(f"no captured corpus: {INDEX} is missing", allow_module_level=True)

ENTRIES: list[dict[str, Any]] = json.loads(INDEX.read_text("utf-8"))["messages"]
BY_NAME = {e["name"]: e for e in ENTRIES}

KINDS: dict[str, type[Message]] = {
    "request": HTTPRequest,
    "disconnect": Disconnect,
    "credits": Credits,
    "upload_start": UploadStart,
    "upload_done": UploadDone,
    "websocket_handshake": WebSocketHandshake,
    "websocket_frame": WebSocketFrame,
}
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def load(entry: dict[str, Any]) -> tuple[bytes, Message]:
    raw = (CORPUS / entry["file"]).read_bytes()
    return raw, parse_message(raw)


def temp_store_dir(entry: dict[str, Any]) -> str:
    return os.path.dirname(str(entry["settings"]["upload.temp_store"]))


def is_forged_upload(entry: dict[str, Any]) -> bool:
    return entry["kind"] == "request" and "x-mongrel2-upload-start" in entry["headers"]


def by_id(entries: list[dict[str, Any]]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("entry", entries, ids=[e["name"] for e in entries])


def of_kind(*kinds: str) -> list[dict[str, Any]]:
    return [e for e in ENTRIES if e["kind"] in kinds]


def test_corpus_covers_every_kind_in_both_protocols() -> None:
    seen = {(e["protocol"], e["kind"]) for e in ENTRIES}
    for protocol in ("tnetstring", "json"):
        for kind in KINDS:
            assert (protocol, kind) in seen


@by_id(ENTRIES)
def test_capture_is_intact(entry: dict[str, Any]) -> None:
    raw = (CORPUS / entry["file"]).read_bytes()
    assert len(raw) == entry["size"]
    assert hashlib.sha256(raw).hexdigest() == entry["sha256"]


@by_id(ENTRIES)
def test_parses_to_the_right_event(entry: dict[str, Any]) -> None:
    raw, msg = load(entry)
    expected = KINDS[entry["kind"]]
    if is_forged_upload(entry):
        # Forged by the client: the message layer can only report the claim;
        # tested separately below (the server rejects it).
        expected = UploadDone if "x-mongrel2-upload-done" in entry["headers"] else UploadStart
    assert type(msg) is expected
    assert msg.sender == entry["sender"]
    assert msg.conn_id == entry["conn_id"]
    assert msg.key == (entry["sender"], entry["conn_id"])
    assert msg.path == entry["path"]
    assert msg.method == entry["method"]
    assert len(msg.body) == entry["body_length"]
    # The capture tool's own decoder, bytes shown as latin-1: we must agree.
    assert msg.headers == entry["headers"]
    # Header values are always str (or lists of str) that encode back to latin-1.
    for value in msg.headers.values():
        for item in value if isinstance(value, list) else [value]:
            assert isinstance(item, str)
            item.encode("latin-1")
    # A tnetstring dict ends with '}', a JSON netstring with ','.
    end = b"}" if entry["protocol"] == "tnetstring" else b"},"
    assert raw.endswith(end + b"%d:%s," % (len(msg.body), msg.body))


@by_id(of_kind("request", "upload_start", "upload_done", "websocket_handshake", "websocket_frame"))
def test_request_fields(entry: dict[str, Any]) -> None:
    _, msg = load(entry)
    assert msg.header("PATH") == msg.path
    assert msg.header("VERSION") in ("HTTP/1.0", "HTTP/1.1")
    assert msg.header("URL_SCHEME") == "http"
    assert msg.header("REMOTE_ADDR") == "127.0.0.1"
    uri = msg.header("URI")
    assert uri is not None
    query = msg.header("QUERY")
    assert uri == (msg.path if query is None else f"{msg.path}?{query}")
    assert "#" not in uri  # the fragment is split off into FRAGMENT
    assert all(name == name.lower() or name.isupper() for name in msg.headers)
    if not entry["name"].endswith("http10_no_host"):
        assert msg.header("host")


@by_id([e for e in ENTRIES if e["scenario"] == "get_query"])
def test_query_and_path_stay_percent_encoded(entry: dict[str, Any]) -> None:
    _, msg = load(entry)
    assert msg.path.endswith("/caf%C3%A9/a%20b/%2Fslash")
    assert msg.header("QUERY") == "q=1&name=J%C3%BCrgen&flag&sp=a+b"


@by_id([e for e in ENTRIES if e["scenario"] == "get_fragment"])
def test_fragment_header(entry: dict[str, Any]) -> None:
    _, msg = load(entry)
    assert msg.header("FRAGMENT") == "section-2"
    assert msg.header("QUERY") == "x=1"


@by_id([e for e in ENTRIES if e["scenario"] == "headers_repeated"])
def test_repeated_headers_are_lists_in_order(entry: dict[str, Any]) -> None:
    _, msg = load(entry)
    assert msg.headers["x-dup"] == ["one", "two", "three"]
    assert msg.headers["cookie"] == ["a=1", "b=2"]
    assert msg.header("x-dup") == "one"


@by_id([e for e in ENTRIES if e["scenario"] == "headers_bytes"])
def test_header_bytes_survive_as_latin1(entry: dict[str, Any]) -> None:
    _, msg = load(entry)
    assert msg.headers["x-latin1"] == "caf\xe9 cr\xe8me"  # raw latin-1 bytes
    assert msg.headers["x-utf8"] == "café".encode().decode("latin-1")  # raw UTF-8 bytes
    assert msg.headers["x-quote"] == 'say "hi" \\ back\\slash'
    assert msg.headers["x-tab"] == "a\tb"  # raw control character, even in JSON
    assert msg.headers["x-empty"] == ""
    assert msg.headers["x-mixed-case"] == "Value"


@by_id([e for e in ENTRIES if e["scenario"] == "method_json"])
def test_client_method_json_is_not_control(entry: dict[str, Any]) -> None:
    _, msg = load(entry)
    assert type(msg) is HTTPRequest
    assert msg.method == "JSON"
    assert msg.path.endswith("/@*")
    assert json.loads(msg.body) == {"type": "disconnect"}


@by_id(of_kind("disconnect", "credits"))
def test_control_messages(entry: dict[str, Any]) -> None:
    _, msg = load(entry)
    assert msg.path == "@*"
    assert msg.method == "JSON"
    assert json.loads(msg.body) == {"type": entry["kind"]}
    if isinstance(msg, Credits):
        assert msg.amount == int(entry["headers"]["DOWNLOAD_CREDITS"]) > 0


@by_id(of_kind("upload_start", "upload_done"))
def test_real_uploads_are_inside_the_temp_store(entry: dict[str, Any]) -> None:
    _, msg = load(entry)
    assert msg.body == b""
    assert isinstance(msg, (UploadStart, UploadDone))
    assert os.path.dirname(msg.upload_path) == temp_store_dir(entry)
    if isinstance(msg, UploadDone):
        assert msg.start_path == msg.upload_path
    if msg.header("transfer-encoding") == "chunked":
        assert msg.header("content-length") is None
    else:
        assert int(msg.header("content-length") or 0) > entry["settings"]["limits.content_length"]


def test_upload_done_names_the_file_upload_start_named() -> None:
    for protocol in ("tnetstring", "json"):
        for scenario in ("upload", "chunked"):
            _, start = load(BY_NAME[f"{protocol}_{scenario}_start"])
            _, done = load(BY_NAME[f"{protocol}_{scenario}_done"])
            assert isinstance(start, UploadStart)
            assert isinstance(done, UploadDone)
            assert start.key == done.key
            assert done.upload_path == start.upload_path


@by_id([e for e in ENTRIES if is_forged_upload(e)])
def test_forged_upload_headers_are_recognisable(entry: dict[str, Any]) -> None:
    # What lets a handler refuse them: a path outside the temp store, and for a
    # lone "start", a body (a real upload start has none).
    _, msg = load(entry)
    assert isinstance(msg, (UploadStart, UploadDone))
    assert msg.upload_path == "/etc/passwd"
    assert os.path.dirname(msg.upload_path) != temp_store_dir(entry)
    if isinstance(msg, UploadStart):
        assert msg.body != b""


@by_id(of_kind("websocket_handshake"))
def test_websocket_handshake_accept(entry: dict[str, Any]) -> None:
    _, msg = load(entry)
    assert isinstance(msg, WebSocketHandshake)
    key = msg.header("sec-websocket-key")
    assert key is not None
    expected = base64.b64encode(hashlib.sha1(key.encode("latin-1") + WS_GUID).digest())
    assert msg.accept == expected.decode("ascii")


FRAMES = {
    "ws_text": (True, 0x1, "héllo wörld".encode()),
    "ws_binary": (True, 0x2, bytes(range(200))),
    "ws_fragmented": (True, 0x1, None),  # reassembled by Mongrel2: one final frame
    "ws_ping": (True, 0x9, b"are you there"),
    "ws_big": (True, 0x2, None),
    "ws_close": (True, 0x8, b"\x03\xe8bye"),  # status 1000 + reason
}


@by_id(of_kind("websocket_frame"))
def test_websocket_frames(entry: dict[str, Any]) -> None:
    _, msg = load(entry)
    assert isinstance(msg, WebSocketFrame)
    assert msg.flags == int(entry["headers"]["FLAGS"], 16)
    fin, opcode, body = FRAMES[entry["name"].split("_", 1)[1]]
    assert (msg.fin, msg.opcode) == (fin, opcode)
    if body is not None:
        assert msg.body == body
    # Every frame repeats the handshake headers.
    assert msg.header("sec-websocket-key")
    assert msg.header("upgrade") == "websocket"


def test_websocket_big_frame_has_64_bit_length() -> None:
    _, msg = load(BY_NAME["tnetstring_ws_big"])
    assert len(msg.body) > 65535


def _pairs() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    out = []
    for entry in ENTRIES:
        if entry["protocol"] == "tnetstring":
            twin = BY_NAME.get("json_" + entry["name"].split("_", 1)[1])
            if twin is not None:
                out.append((entry, twin))
    return out


PAIRS = _pairs()


def _comparable(msg: Message, entry: dict[str, Any], corpus: dict[str, Any]) -> dict[str, Any]:
    """Headers with what legitimately differs between the two routes factored out."""
    route = corpus["routes"][entry["protocol"]].rstrip("/")
    headers: dict[str, Any] = dict(msg.headers)
    headers.pop("PATTERN", None)  # the route pattern is "/" vs "/json/"
    for name in ("PATH", "URI"):
        if name in headers and route:
            assert headers[name].startswith(route + "/")
            headers[name] = headers[name][len(route) :]
    for name in ("x-mongrel2-upload-start", "x-mongrel2-upload-done"):
        if name in headers and headers[name].startswith(temp_store_dir(entry)):
            headers[name] = "<temp file>"  # mkstemp names differ
    return headers


def test_tnetstring_and_json_pairs_exist() -> None:
    assert len(PAIRS) >= 30


@pytest.mark.parametrize(("tnet", "js"), PAIRS, ids=[t["name"].split("_", 1)[1] for t, _ in PAIRS])
def test_tnetstring_and_json_captures_agree(tnet: dict[str, Any], js: dict[str, Any]) -> None:
    corpus = json.loads(INDEX.read_text("utf-8"))
    _, a = load(tnet)
    _, b = load(js)
    assert type(a) is type(b)
    assert a.method == b.method
    assert _comparable(a, tnet, corpus) == _comparable(b, js, corpus)
    if isinstance(a, (HTTPRequest, WebSocketFrame, Disconnect, Credits)):
        assert a.body == b.body
