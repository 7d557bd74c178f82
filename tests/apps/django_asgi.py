"""A one-module Django project served as ASGI (``django_asgi:application``).

Django's ASGI handler refuses the lifespan scope, so it also shows that
m2gate serves apps without lifespan support.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="m2gate-tests-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        DATABASES={},
        USE_TZ=True,
        LOGGING_CONFIG=None,
    )

from django.core.asgi import get_asgi_application
from django.http import (
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import path, reverse


async def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("Hello from Django over ASGI", content_type="text/plain")


async def info(request: HttpRequest, name: str) -> JsonResponse:
    return JsonResponse(
        {
            "reverse": reverse("info", args=[name]),
            "script_name": request.META.get("SCRIPT_NAME"),
            "path": request.path,
            "path_info": request.path_info,
            "query": request.GET.dict(),
            "absolute": request.build_absolute_uri(),
        }
    )


async def echo(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.body, content_type="application/octet-stream")


async def stream(request: HttpRequest) -> StreamingHttpResponse:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(5):
            await asyncio.sleep(0)
            yield b"part %d;" % i

    return StreamingHttpResponse(gen(), content_type="text/plain")


urlpatterns = [
    path("", index),
    path("info/<str:name>", info, name="info"),
    path("echo", echo),
    path("stream", stream),
]

application = get_asgi_application()
