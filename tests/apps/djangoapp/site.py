"""A whole Django project in one module, served through wsgiref's validator.

``m2gate serve djangoapp.site:application``. No database, no templates: only
what is needed to see Django's request handling (META, SCRIPT_NAME in
reverse(), request bodies, streaming, its own 404/500) behind Mongrel2.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from wsgiref.validate import WSGIWarning, validator

from django.conf import settings

warnings.simplefilter("error", WSGIWarning)

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="m2gate-tests-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
        DATABASES={},
        USE_TZ=True,
        LOGGING_CONFIG=None,
    )

import django  # noqa: E402 (after settings.configure)

django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import (  # noqa: E402
    Http404,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import path, reverse  # noqa: E402


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("Hello from Django", content_type="text/plain")


def info(request: HttpRequest, name: str) -> JsonResponse:
    return JsonResponse(
        {
            "name": name,
            "reverse": reverse("info", args=[name]),
            "absolute": request.build_absolute_uri(),
            "script_name": request.META.get("SCRIPT_NAME"),
            "path": request.path,
            "path_info": request.path_info,
            "method": request.method,
            "get": request.GET.dict(),
            "multi": request.headers.get("X-Multi"),
            "host": request.get_host(),
        }
    )


def echo(request: HttpRequest) -> JsonResponse:
    body = request.body
    return JsonResponse(
        {
            "length": len(body),
            "json": json.loads(body) if request.content_type == "application/json" else None,
            "post": request.POST.dict() if request.method == "POST" else {},
        }
    )


def stream(request: HttpRequest) -> StreamingHttpResponse:
    def gen() -> Iterator[bytes]:
        for i in range(int(request.GET.get("n", "5"))):
            yield b"row %d\n" % i

    return StreamingHttpResponse(gen(), content_type="text/plain")


def missing(request: HttpRequest) -> HttpResponse:
    raise Http404("nothing here")


def crash(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("django view failed")


urlpatterns = [
    path("", index),
    path("info/<str:name>/", info, name="info"),
    path("echo/", echo),
    path("stream/", stream),
    path("missing/", missing),
    path("crash/", crash),
]

application = validator(get_wsgi_application())
