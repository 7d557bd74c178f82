"""A Flask app and a Django app (both under wsgiref's validator) behind a real Mongrel2.

Both are mounted under a route prefix, so the frameworks' own URL building
proves SCRIPT_NAME and PATH_INFO are right, not just our reading of them.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from wsgi_http import RawClient

from m2gate.testing.mongrel2 import HandlerSpec, Mongrel2

pytestmark = [
    pytest.mark.integration,
    pytest.mark.mongrel2(handlers=[HandlerSpec(route="/flask/"), HandlerSpec(route="/django/")]),
]

Start = Any


@pytest.fixture
def flask_url(mongrel2: Mongrel2, wsgi: Start) -> str:
    wsgi(
        "--threads",
        "4",
        app="flaskapp:application",
        handler=mongrel2.handlers[0],
        ready_path="/flask/",
    )
    return str(mongrel2.url) + "/flask"


@pytest.fixture
def django_url(mongrel2: Mongrel2, wsgi: Start) -> str:
    wsgi(
        "--threads",
        "4",
        app="djangoapp.site:application",
        handler=mongrel2.handlers[1],
        ready_path="/django/",
    )
    return str(mongrel2.url) + "/django"


# -- Flask ---------------------------------------------------------------------


def test_flask_routing_under_prefix(mongrel2: Mongrel2, flask_url: str) -> None:
    assert requests.get(flask_url + "/", timeout=10).text == "Hello from Flask"
    with RawClient(mongrel2.port) as client:
        client.request(
            "GET",
            "/flask/hello/w%C3%B6rld?a=1&a=2",
            headers=[("X-Multi", "x"), ("X-Multi", "y")],
            host="127.0.0.1:%d" % mongrel2.port,
        )
        data = client.read_response().json()
    assert data["name"] == "w\u00f6rld"  # Werkzeug re-decodes the latin-1 PATH_INFO
    assert data["script_root"] == "/flask"
    assert data["path"] == "/hello/w\u00f6rld"
    assert data["url"] == "http://127.0.0.1:%d/flask/hello/w%%C3%%B6rld" % mongrel2.port
    assert data["args"] == {"a": ["1", "2"]}
    assert data["multi"] == "x, y"


def test_flask_bodies(flask_url: str) -> None:
    payload: dict[str, Any] = {"text": "h\u00e9llo", "n": list(range(100))}
    got = requests.post(flask_url + "/json", json=payload, timeout=10).json()
    assert got["received"] == payload
    assert got["length"] == len(json.dumps(payload).encode())
    multipart = requests.post(
        flask_url + "/form",
        data={"field": "value"},
        files={"upload": ("a.bin", b"\x00" * 5000)},
        timeout=10,
    ).json()
    assert multipart == {"form": {"field": "value"}, "files": ["upload"]}


def test_flask_streaming_and_head(flask_url: str, mongrel2: Mongrel2) -> None:
    resp = requests.get(flask_url + "/stream?n=20", timeout=10)
    assert resp.headers.get("Transfer-Encoding") == "chunked"
    assert resp.text == "".join("line %d\n" % i for i in range(20))
    with RawClient(mongrel2.port) as client:
        client.request("HEAD", "/flask/")
        head = client.read_response("HEAD")
        assert head.status == 200 and head.header("Content-Length") == "16"
        client.request("GET", "/flask/")
        assert client.read_response().body == b"Hello from Flask"


def test_flask_errors_and_keep_alive(flask_url: str) -> None:
    with requests.Session() as session:
        assert session.get(flask_url + "/missing", timeout=10).status_code == 404
        assert session.get(flask_url + "/crash", timeout=10).status_code == 500
        assert session.get(flask_url + "/", timeout=10).text == "Hello from Flask"


def test_flask_concurrent(flask_url: str) -> None:
    def one(i: int) -> tuple[int, Any]:
        return i, requests.get(flask_url + "/hello/n%d" % i, timeout=30).json()

    with ThreadPoolExecutor(max_workers=20) as pool:
        for i, data in pool.map(one, range(60)):
            assert data["name"] == "n%d" % i


# -- Django --------------------------------------------------------------------


def test_django_routing_under_prefix(mongrel2: Mongrel2, django_url: str) -> None:
    assert requests.get(django_url + "/", timeout=10).text == "Hello from Django"
    with RawClient(mongrel2.port) as client:
        client.request(
            "GET",
            "/django/info/caf%C3%A9/?q=1",
            headers=[("X-Multi", "x"), ("X-Multi", "y")],
            host="example.com:8080",
        )
        data = client.read_response().json()
    assert data["name"] == "caf\u00e9"
    assert data["script_name"] == "/django"
    assert data["path"] == "/django/info/caf\u00e9/"
    assert data["path_info"] == "/info/caf\u00e9/"
    assert data["reverse"] == "/django/info/caf%C3%A9/"
    assert data["absolute"] == "http://example.com:8080/django/info/caf%C3%A9/?q=1"
    assert data["get"] == {"q": "1"}
    assert data["multi"] == "x, y"
    assert data["host"] == "example.com:8080"


def test_django_bodies(django_url: str) -> None:
    got = requests.post(django_url + "/echo/", json={"a": [1, 2]}, timeout=10).json()
    assert got["json"] == {"a": [1, 2]}
    form = requests.post(django_url + "/echo/", data={"x": "1", "y": "\u00e9"}, timeout=10)
    assert form.json()["post"] == {"x": "1", "y": "\u00e9"}
    body = b"z" * 20480
    big = requests.post(
        django_url + "/echo/",
        data=body,
        headers={"Content-Type": "application/octet-stream"},
        timeout=10,
    ).json()
    assert big["length"] == 20480


def test_django_streaming(django_url: str) -> None:
    resp = requests.get(django_url + "/stream/?n=30", timeout=10)
    assert resp.headers.get("Transfer-Encoding") == "chunked"
    assert resp.text == "".join("row %d\n" % i for i in range(30))


def test_django_errors_and_keep_alive(django_url: str) -> None:
    with requests.Session() as session:
        assert session.get(django_url + "/missing/", timeout=10).status_code == 404
        assert session.get(django_url + "/crash/", timeout=10).status_code == 500
        assert session.get(django_url + "/nowhere/", timeout=10).status_code == 404
        assert session.get(django_url + "/", timeout=10).text == "Hello from Django"


def test_django_concurrent(django_url: str) -> None:
    def one(i: int) -> tuple[int, Any]:
        return i, requests.get(django_url + "/info/n%d/" % i, timeout=30).json()

    with ThreadPoolExecutor(max_workers=20) as pool:
        for i, data in pool.map(one, range(60)):
            assert data["name"] == "n%d" % i
