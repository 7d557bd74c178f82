"""Static routes of ``m2gate dev``: ``--static URL_PREFIX=DIR`` and a Django project's own.

Mongrel2 serves static files itself through a ``Dir`` route next to the
handler route, so the app never sees those requests. For a Django project
the route comes from ``STATIC_URL`` and ``STATIC_ROOT``, read by a child
interpreter: importing the user's settings in the dev process would run
their code there, and keep stale settings across reloads.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from m2gate.config.declare import ConfigError
from m2gate.config.settings import Config
from m2gate.loading import django_project, django_settings_module, settings_default
from m2gate.testing.mongrel2 import DirSpec

# Mongrel2 treats ( [ * ? $ ^ and friends in a route as a pattern: plain prefixes only.
_PREFIX_RE: Final = re.compile(r"/(?:[A-Za-z0-9._~-]+/)*")
STATIC_ACCEPTED: Final = (
    "URL_PREFIX=DIR, URL_PREFIX a path such as /static/ (letters, digits, . _ ~ -)"
    " and DIR an existing directory"
)
PROBE_TIMEOUT: Final = 60.0  # seconds for the child that reads the Django settings
_PROBE_OUTPUT: Final = 64 * 1024  # bytes of its output we look at (the last line)

# Run by ``python -c`` in the project directory: prints the two settings as JSON.
_PROBE: Final = """\
import json, os, sys
sys.path.insert(0, os.getcwd())
try:
    from django.conf import settings
    url, root = settings.STATIC_URL, settings.STATIC_ROOT
except Exception as exc:
    text = (str(exc).splitlines() or [""])[0]
    print(json.dumps({"error": "%s: %s" % (type(exc).__name__, text)}))
else:
    print(json.dumps({"url": str(url or ""), "root": str(root or "")}))
"""


def normalise_prefix(prefix: str) -> str:
    """``static`` or ``/static`` -> ``/static/``; ConfigError unless a plain path."""
    value = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
    if not _PREFIX_RE.fullmatch(value):
        raise ConfigError("static: invalid URL prefix %r; accepted: %s" % (prefix, STATIC_ACCEPTED))
    if value == "/":
        raise ConfigError(
            "static: URL prefix / is the app's route; accepted: a prefix such as /static/"
        )
    return value


def parse_static(raw: str, cwd: str) -> DirSpec:
    """One ``--static URL_PREFIX=DIR``; DIR relative to ``cwd``, made absolute."""
    prefix, sep, directory = raw.partition("=")
    if not sep or not prefix or not directory:
        raise ConfigError("static: invalid value %r; accepted: %s" % (raw, STATIC_ACCEPTED))
    route = normalise_prefix(prefix)
    path = os.path.abspath(os.path.join(cwd, directory))
    if not os.path.isdir(path):
        raise ConfigError(
            "static: %s is not a directory (in %r); accepted: %s" % (path, raw, STATIC_ACCEPTED)
        )
    return DirSpec(route=route, base=path)


def parse_statics(values: list[str], cwd: str) -> list[DirSpec]:
    """Every ``--static``; the same prefix twice is an error, not a silent override."""
    specs: list[DirSpec] = []
    for raw in values:
        spec = parse_static(raw, cwd)
        if any(s.route == spec.route for s in specs):
            raise ConfigError("static: URL prefix %s given twice" % spec.route)
        specs.append(spec)
    return specs


@dataclass
class DjangoProject:
    """Where a Django project's settings are: the module and the directory it imports from."""

    settings: str
    directory: str


def _module_file(module: str, roots: list[str]) -> str:
    """The source file of dotted ``module`` under one of ``roots`` ('' if none): no import."""
    rel = module.replace(".", os.sep)
    for root in roots:
        for candidate in (rel + ".py", os.path.join(rel, "__init__.py")):
            path = os.path.join(root, candidate)
            if os.path.isfile(path):
                return path
    return ""


def _default_in(path: str) -> str:
    try:
        return settings_default(path)
    except (OSError, ValueError):
        return ""


def _import_root(settings: str, candidates: list[str]) -> str:
    """The first directory ``settings`` imports from (its source is below it), else ''."""
    for directory in candidates:
        if _module_file(settings, [directory]):
            return directory
    return ""


def find_django(cfg: Config, environ: Mapping[str, str]) -> DjangoProject | None:
    """The Django project ``cfg.app`` belongs to, or None when it is not a Django app.

    The settings module, in order: APP as a project directory (its manage.py),
    DJANGO_SETTINGS_MODULE from ``--env`` or the environment, the default the
    app's module sets (Django's wsgi.py and asgi.py do), a manage.py beside
    the app. Nothing is imported here: the files are read as text.
    """
    base = os.path.abspath(cfg.chdir or os.getcwd())
    explicit = environ.get("DJANGO_SETTINGS_MODULE", "")
    project = django_project(os.path.join(base, cfg.app)) if cfg.app else ""
    if project:
        try:
            return DjangoProject(explicit or django_settings_module(project), project)
        except Exception:  # AppLoadError: the child reports it, in its own words
            return None
    module = cfg.app.partition(":")[0]
    roots = [base, *(os.path.abspath(os.path.join(base, p)) for p in cfg.pythonpath)]
    if module.endswith(".py") or "/" in module:
        source = os.path.abspath(os.path.join(base, module))
        directory = os.path.dirname(source)
    else:
        source = _module_file(module, roots) if module else ""
        directory = os.path.dirname(source) if source else base
    settings = explicit or (_default_in(source) if source else "")
    if not settings:
        for candidate in (directory, base):
            manage = os.path.join(candidate, "manage.py")
            settings = _default_in(manage) if os.path.isfile(manage) else ""
            if settings:
                break
    if not settings:
        return None
    ancestors = [str(p) for p in Path(directory).parents]
    root = _import_root(settings, [*roots, directory, *ancestors])
    return DjangoProject(settings, root or base)


def child_environ(cfg: Config, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment m2gate serve gives the app: ours plus ``--env`` and ``--pythonpath``."""
    env = dict(environ)
    for item in cfg.env:
        key, _, value = item.partition("=")
        env[key] = value
    if cfg.pythonpath:
        base = cfg.chdir or os.getcwd()
        extra = [os.path.abspath(os.path.join(base, p)) for p in cfg.pythonpath]
        env["PYTHONPATH"] = os.pathsep.join([*extra, *filter(None, [env.get("PYTHONPATH")])])
    return env


@dataclass
class DjangoStatic:
    """What the Django settings say about static files: a route, a hint for the user, or both."""

    route: DirSpec | None
    hint: str


def read_static_settings(project: DjangoProject, env: Mapping[str, str]) -> dict[str, str]:
    """STATIC_URL and STATIC_ROOT (or ``error``) from a child interpreter."""
    full = {**env, "DJANGO_SETTINGS_MODULE": project.settings}
    try:
        result = subprocess.run(
            [sys.executable, "-c", _PROBE],
            cwd=project.directory,
            env=full,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    lines = result.stdout[-_PROBE_OUTPUT:].decode("utf-8", "replace").strip().splitlines()
    try:
        data = json.loads(lines[-1]) if lines else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return {"error": "exit status %d" % result.returncode}
    return {str(k): str(v) for k, v in data.items()}


def django_static(project: DjangoProject, values: Mapping[str, str]) -> DjangoStatic:
    """The Dir route for STATIC_URL -> STATIC_ROOT, and a one-line hint when it serves nothing."""
    where = "Django settings %s" % project.settings
    if "error" in values:
        return DjangoStatic(
            None, "%s could not be read (%s): no static route" % (where, values["error"])
        )
    url, root = values.get("url", ""), values.get("root", "")
    if not url:
        return DjangoStatic(None, "%s: STATIC_URL is not set: no static route" % where)
    if "://" in url or url.startswith("//"):
        return DjangoStatic(
            None, "%s: STATIC_URL %s is on another server: no static route" % (where, url)
        )
    try:
        prefix = normalise_prefix(url)
    except ConfigError:
        return DjangoStatic(
            None, "%s: STATIC_URL %r is no plain path: no static route" % (where, url)
        )
    if not root:
        return DjangoStatic(
            None,
            '%s: STATIC_ROOT is not set: set it (e.g. STATIC_ROOT = BASE_DIR / "staticfiles")'
            " and run `python manage.py collectstatic`" % where,
        )
    # Routed even when missing: Mongrel2 resolves the base at the first request,
    # so the files show up once collectstatic has run, without a restart.
    route = DirSpec(route=prefix, base=os.path.abspath(os.path.join(project.directory, root)))
    path = Path(route.base)
    if not path.is_dir():
        return DjangoStatic(
            route, "STATIC_ROOT %s does not exist: run `python manage.py collectstatic`" % path
        )
    if not any(path.iterdir()):
        return DjangoStatic(
            route, "STATIC_ROOT %s is empty: run `python manage.py collectstatic`" % path
        )
    return DjangoStatic(route, "")
