"""An app's log records and warnings reach m2gate's log once, through a real Mongrel2.

The app is a fresh ``django-admin startproject`` (DEBUG on, Django's default
LOGGING), plus one view that calls ``warnings.warn``: Django's console handler
used to print each ``django.request`` warning bare, and m2gate's root handler
printed it again.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.integration

Start = Callable[..., Any]

WARNING_VIEW = """

import warnings

from django.http import HttpResponse


def warn(request):
    warnings.warn("m2gate-test-warning " + request.GET["id"], UserWarning, stacklevel=1)
    return HttpResponse("warned")


urlpatterns.append(path("warn/", warn))
"""


@pytest.fixture
def django_project(tmp_path: Path) -> Path:
    """A project made by Django's own ``startproject``, with the warning view added."""
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", "site1", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    urls = tmp_path / "site1" / "urls.py"
    urls.write_text(urls.read_text(encoding="utf-8") + WARNING_VIEW, encoding="utf-8")
    return tmp_path


MODES = {
    "single-stderr": [],
    "single-log-file": ["--log-file", "LOG"],
    "workers-log-file": ["-p", "2", "--log-file", "LOG"],
    "preload-log-file": ["-p", "2", "--preload", "--log-file", "LOG"],
}


@pytest.mark.parametrize("mode", MODES)
def test_django_warnings_are_logged_once(
    m2gate_server: Start, django_project: Path, tmp_path: Path, mode: str
) -> None:
    """Also: Django's dictConfig closed m2gate's --log-file, losing every later line."""
    log_file = tmp_path / "m2gate.log"
    args = [str(log_file) if arg == "LOG" else arg for arg in MODES[mode]]
    server = m2gate_server(str(django_project), *args, cwd=django_project)
    missing, warned = "/missing-%s/" % uuid.uuid4().hex, uuid.uuid4().hex
    assert requests.get(server.url + missing, timeout=10).status_code == 404
    resp = requests.get(server.url + "/warn/", params={"id": warned}, timeout=10)
    assert resp.status_code == 200 and resp.text == "warned"
    server.stop()

    log = log_file.read_text(encoding="utf-8") if log_file.exists() else server.output
    not_found = [line for line in log.splitlines() if "Not Found: " + missing in line]
    assert len(not_found) == 1, log
    assert "WARNING django.request: Not Found: " + missing in not_found[0]
    warnings_seen = [line for line in log.splitlines() if "m2gate-test-warning " + warned in line]
    assert len(warnings_seen) == 1, log
    assert "WARNING py.warnings:" in warnings_seen[0] and "UserWarning" in warnings_seen[0]
    if log_file.exists():  # with --log-file nothing of the app goes to the terminal instead
        assert missing not in server.output and warned not in server.output
        assert "Logging error" not in server.output, server.output
