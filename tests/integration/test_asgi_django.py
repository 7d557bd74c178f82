"""A real Django project served as ASGI through Mongrel2 (interface autodetected)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from m2gate.testing.mongrel2 import HandlerSpec

pytestmark = pytest.mark.integration


def test_django_asgi_under_a_route_prefix(mongrel2_factory: Any, m2gate_server: Any) -> None:
    m2 = mongrel2_factory(handlers=[HandlerSpec(route="/dj/")])
    server = m2gate_server("django_asgi:application", m2=m2, ready_path="/dj/")
    assert "(ASGI)" in server.output
    assert "does not support the ASGI lifespan protocol" in server.output
    with httpx.Client(base_url=m2.url, timeout=10) as client:
        assert client.get("/dj/").text == "Hello from Django over ASGI"
        info = client.get("/dj/info/w%C3%B6rld?x=1").json()
        assert info["script_name"] == "/dj"
        assert info["path"] == "/dj/info/wörld"
        assert info["path_info"] == "/info/wörld"
        assert info["reverse"] == "/dj/info/w%C3%B6rld"
        assert info["query"] == {"x": "1"}
        assert info["absolute"] == m2.url + "/dj/info/w%C3%B6rld?x=1"
        body = bytes(range(256)) * 40  # inline: under limits.content_length
        assert client.post("/dj/echo", content=body).content == body
        streamed = client.get("/dj/stream")
        assert streamed.headers.get("transfer-encoding") == "chunked"
        assert streamed.text == "".join("part %d;" % i for i in range(5))
        assert client.get("/dj/missing").status_code == 404
