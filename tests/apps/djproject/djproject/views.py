"""Views that echo what Django saw of the request, so tests can check the WSGI environ."""

from __future__ import annotations

import os

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt


def env(request: HttpRequest) -> JsonResponse:
    meta = request.META
    return JsonResponse(
        {
            "path": request.path,
            "path_info": request.path_info,
            "script_name": meta.get("SCRIPT_NAME", ""),
            "method": request.method,
            "query": request.GET.dict(),
            "host": request.get_host(),
            "scheme": request.scheme,
            "remote_addr": meta.get("REMOTE_ADDR"),
            "user_agent": meta.get("HTTP_USER_AGENT"),
            "server_software": meta.get("SERVER_SOFTWARE"),
            "settings_module": os.environ.get("DJANGO_SETTINGS_MODULE"),
        }
    )


@csrf_exempt
def form(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"method": request.method, "fields": request.POST.dict()})


def protected(request: HttpRequest) -> HttpResponse:
    """CSRF still applies to views that are not exempt: a POST here is refused."""
    return HttpResponse("ok")
