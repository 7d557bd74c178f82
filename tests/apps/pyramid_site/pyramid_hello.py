"""A small Pyramid app whose settings come from development.ini (Paste Deploy)."""

from __future__ import annotations

from typing import Any

from pyramid.config import Configurator
from pyramid.request import Request


def hello(request: Request) -> dict[str, Any]:
    return {
        "greeting": request.registry.settings["greeting"],
        "path": request.path,
        "query": dict(request.GET),
        "method": request.method,
    }


def echo(request: Request) -> dict[str, Any]:
    return {"fields": dict(request.POST), "method": request.method}


def main(global_config: dict[str, Any], **settings: Any) -> Any:
    with Configurator(settings=settings) as config:
        config.add_route("hello", "/")
        config.add_route("echo", "/echo")
        config.add_view(hello, route_name="hello", renderer="json")
        config.add_view(echo, route_name="echo", renderer="json", request_method="POST")
        return config.make_wsgi_app()
