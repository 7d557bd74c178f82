"""Real framework apps served through real Mongrel2: Django, Pyramid (.ini), Flask factory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.integration

APPS = Path(__file__).resolve().parents[1] / "apps"
Start = Callable[..., Any]


def test_django_project_directory(m2gate_server: Start) -> None:
    server = m2gate_server(str(APPS / "djproject"), "--threads", "2")
    resp = requests.get(
        server.url + "/env/?a=1&b=two%20words", headers={"User-Agent": "m2gate-test"}, timeout=10
    )
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data == {
        "path": "/env/",
        "path_info": "/env/",
        "script_name": "",
        "method": "GET",
        "query": {"a": "1", "b": "two words"},
        "host": "127.0.0.1:%d" % server.m2.port,
        "scheme": "http",
        "remote_addr": "127.0.0.1",
        "user_agent": "m2gate-test",
        "server_software": data["server_software"],
        "settings_module": "djproject.settings",
    }
    assert data["server_software"].startswith("m2gate/")


def test_django_post_form_and_csrf(m2gate_server: Start) -> None:
    server = m2gate_server(str(APPS / "djproject" / "manage.py"))
    resp = requests.post(server.url + "/form/", data={"name": "Zed", "city": "Zürich"}, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"method": "POST", "fields": {"name": "Zed", "city": "Zürich"}}
    # the CSRF middleware is live: a view that is not exempt refuses the POST
    assert requests.post(server.url + "/protected/", data={"x": "1"}, timeout=10).status_code == 403
    assert requests.get(server.url + "/missing/", timeout=10).status_code == 404


def test_pyramid_from_paste_ini(m2gate_server: Start) -> None:
    ini = APPS / "pyramid_site" / "development.ini"
    server = m2gate_server("", "--paste", str(ini))
    resp = requests.get(server.url + "/?q=1", timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "greeting": "hello from development.ini",
        "path": "/",
        "query": {"q": "1"},
        "method": "GET",
    }
    resp = requests.post(server.url + "/echo", data={"k": "v"}, timeout=10)
    assert resp.json() == {"fields": {"k": "v"}, "method": "POST"}


def test_pyramid_named_section_and_config_uri(m2gate_server: Start) -> None:
    server = m2gate_server(
        "",
        "--chdir",
        str(APPS / "pyramid_site"),
        "--paste",
        "config:development.ini#admin",
    )
    resp = requests.get(server.url + "/", timeout=10)
    assert resp.json()["greeting"] == "hello from the admin section"


@pytest.mark.parametrize(
    ("app", "made_by"),
    [("flask_factory", "factory"), ("flask_factory:create_app('named')", "named")],
)
def test_flask_factory(m2gate_server: Start, app: str, made_by: str) -> None:
    server = m2gate_server(app)
    resp = requests.get(server.url + "/?x=y", timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"made_by": made_by, "args": {"x": "y"}}
