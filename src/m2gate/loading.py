"""Find and import the user's application the way their framework expects.

Accepted forms (every failure is one :class:`AppLoadError` line):

- ``module:attr`` / ``path/to/file.py:attr`` / ``module`` (then ``application``,
  ``app``, then a ``create_app()`` factory as Flask's CLI does);
- ``module:factory()`` or ``module:factory('arg', debug=True)``: the factory is
  called with those literal arguments;
- a Django project directory (the one holding ``manage.py``);
- a Paste Deploy ini (``paste="development.ini"``, ``config:URI``, ``#name``).
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import sys
import traceback
from typing import Any


class AppLoadError(Exception):
    """The app could not be loaded; the message is the one line the user sees."""


def _where(exc: BaseException) -> str:
    """``(file, line N)`` of the innermost frame, to point at the user's bug."""
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.filename:
        return " (%s, line %s)" % (exc.filename, exc.lineno)
    if not frames:
        return ""
    last = frames[-1]
    return " (%s, line %s)" % (last.filename, last.lineno)


def _failed(what: str, exc: BaseException) -> AppLoadError:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return AppLoadError(
        "%s raised %s%s%s" % (what, type(exc).__name__, ": " + text if text else "", _where(exc))
    )


def _enter(chdir: str) -> None:
    if chdir:
        try:
            os.chdir(chdir)
        except OSError as exc:
            raise AppLoadError("chdir: cannot enter %s: %s" % (chdir, exc.strerror)) from None


def load_app(target: str, chdir: str = "", paste: str = "") -> Any:
    """Load the app named by ``target`` (or the Paste ini ``paste``) after ``chdir``.

    The current directory (after ``chdir``) goes first on ``sys.path`` so a
    project's own modules import as they do under ``python -m``.
    """
    _enter(chdir)
    if paste:
        if target:
            raise AppLoadError("app %s and paste %s: give only one of them" % (target, paste))
        return load_paste(paste)
    if not target:
        raise AppLoadError(
            "no application given: pass APP as module:attr, a Django project directory"
            " or --paste FILE.ini (setting app)"
        )
    django_dir = django_project(target)
    if django_dir:
        return load_django(django_dir)
    return load_module_app(target)


def _import(module_name: str, target: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AppLoadError(
                "app %s: no module named %r (searched from %s)" % (target, exc.name, cwd)
            ) from None
        raise _failed("app %s: importing %s" % (target, module_name), exc) from None
    except Exception as exc:
        raise _failed("app %s: importing %s" % (target, module_name), exc) from None


def _parse_attr(target: str, attr: str) -> tuple[str, tuple[Any, ...], dict[str, Any] | None]:
    """``name`` -> (name, (), None); ``name(args)`` -> (name, args, kwargs) for a factory."""
    if not attr.endswith(")"):
        return attr, (), None
    try:
        node = ast.parse(attr, mode="eval").body
        if not isinstance(node, ast.Call):
            raise ValueError(attr)
        name = ast.unparse(node.func)
        if not re.fullmatch(r"[A-Za-z_][\w.]*", name):
            raise ValueError(attr)
        args = tuple(ast.literal_eval(a) for a in node.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
        if len(kwargs) != len(node.keywords):
            raise ValueError(attr)
    except (SyntaxError, ValueError):
        raise AppLoadError(
            "app %s: %r is not a factory call; accepted: name() or name(LITERAL, key=LITERAL)"
            % (target, attr)
        ) from None
    return name, args, kwargs


def _lookup(module: Any, name: str) -> Any:
    obj = module
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def load_module_app(target: str) -> Any:
    """``module[:attr|:factory(...)]`` or ``file.py[:attr]``."""
    module_name, _, attr = target.partition(":")
    if module_name.endswith(".py") or "/" in module_name:
        directory, filename = os.path.split(os.path.abspath(module_name))
        sys.path.insert(0, directory)
        module_name = filename.removesuffix(".py")
    module = _import(module_name, target)
    if attr:
        name, args, kwargs = _parse_attr(target, attr)
        try:
            obj = _lookup(module, name)
        except AttributeError:
            raise AppLoadError(
                "app %s: module %s has no attribute %s" % (target, module_name, name)
            ) from None
        if kwargs is not None:
            obj = _call_factory(target, "%s.%s" % (module_name, name), obj, args, kwargs)
    else:
        for name in ("application", "app"):
            try:
                obj = _lookup(module, name)
                break
            except AttributeError:
                continue
        else:
            factory = getattr(module, "create_app", None) or getattr(module, "make_app", None)
            if factory is None:
                raise AppLoadError(
                    "app %s: module %s has no attribute application or app, and no"
                    " create_app() factory" % (target, module_name)
                )
            name = factory.__name__
            obj = _call_factory(target, "%s.%s" % (module_name, name), factory, (), {})
    if not callable(obj):
        raise AppLoadError("app %s: %s.%s is not callable" % (target, module_name, name))
    return obj


def _call_factory(
    target: str, qualname: str, factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if not callable(factory):
        raise AppLoadError("app %s: %s is not callable, cannot call it" % (target, qualname))
    try:
        return factory(*args, **kwargs)
    except Exception as exc:
        raise _failed("app %s: %s()" % (target, qualname), exc) from None


# -- Django --------------------------------------------------------------------

_SETTINGS_RE = re.compile(r"""DJANGO_SETTINGS_MODULE['"]\s*,\s*['"]([A-Za-z_][\w.]*)['"]""")


def django_project(target: str) -> str:
    """The project directory if ``target`` names one (or its manage.py), else ''."""
    if ":" in target:
        return ""
    path = target
    if os.path.basename(path) == "manage.py" and os.path.isfile(path):
        path = os.path.dirname(path) or "."
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "manage.py")):
        return os.path.abspath(path)
    return ""


def settings_default(path: str) -> str:
    """The DJANGO_SETTINGS_MODULE default a manage.py, wsgi.py or asgi.py sets ('' if none).

    Read as text, not imported: finding the settings must not run the project.
    """
    with open(path, encoding="utf-8") as fh:
        match = _SETTINGS_RE.search(fh.read())
    return match.group(1) if match else ""


def django_settings_module(project: str) -> str:
    """manage.py's DJANGO_SETTINGS_MODULE default, else ``<name>/settings.py``."""
    try:
        module = settings_default(os.path.join(project, "manage.py"))
    except OSError as exc:
        raise AppLoadError(
            "django project %s: cannot read manage.py: %s" % (project, exc.strerror or exc)
        ) from None
    if module:
        return module
    name = os.path.basename(project)
    if os.path.isfile(os.path.join(project, name, "settings.py")):
        return name + ".settings"
    candidates = sorted(
        entry
        for entry in os.listdir(project)
        if os.path.isfile(os.path.join(project, entry, "settings.py"))
    )
    if len(candidates) == 1:
        return candidates[0] + ".settings"
    raise AppLoadError(
        "django project %s: cannot find the settings module (no DJANGO_SETTINGS_MODULE"
        " default in manage.py, found %s); set DJANGO_SETTINGS_MODULE with --env"
        % (project, ", ".join(c + "/settings.py" for c in candidates) or "no */settings.py")
    )


def load_django(project: str) -> Any:
    """Put the project on sys.path, set DJANGO_SETTINGS_MODULE, get_wsgi_application()."""
    module = os.environ.get("DJANGO_SETTINGS_MODULE") or django_settings_module(project)
    os.environ["DJANGO_SETTINGS_MODULE"] = module
    if project not in sys.path:
        sys.path.insert(0, project)
    try:
        from django.core.wsgi import get_wsgi_application  # type: ignore[import-untyped]
    except ImportError:
        raise AppLoadError(
            "django project %s: Django is not installed in this Python (%s)"
            % (project, sys.executable)
        ) from None
    try:
        return get_wsgi_application()
    except Exception as exc:
        raise _failed(
            "django project %s: get_wsgi_application() with settings %s" % (project, module), exc
        ) from None


# -- Paste Deploy ----------------------------------------------------------------


def paste_uri(spec: str) -> tuple[str, str | None]:
    """``[config:]FILE.ini[#name]`` -> (``config:/abs/FILE.ini``, name or None)."""
    uri, _, name = spec.partition("#")
    path = uri.removeprefix("config:")
    return "config:" + os.path.abspath(path), name or None


def load_paste(spec: str) -> Any:
    """``loadapp()`` from Paste Deploy; Pyramid's development.ini works as is."""
    uri, name = paste_uri(spec)
    path = uri.removeprefix("config:")
    for directory in (os.getcwd(), os.path.dirname(path)):  # `call:module:main` lives here
        if directory not in sys.path:
            sys.path.insert(0, directory)
    if not os.path.isfile(path):
        raise AppLoadError("paste %s: no such file %s" % (spec, path))
    try:
        from paste.deploy import loadapp  # type: ignore[import-untyped]
    except ImportError:
        raise AppLoadError(
            "paste %s: PasteDeploy is not installed in this Python (%s)" % (spec, sys.executable)
        ) from None
    try:
        return loadapp(uri, name=name)
    except LookupError as exc:
        raise AppLoadError("paste %s: %s" % (spec, str(exc).splitlines()[0])) from None
    except Exception as exc:
        raise _failed("paste %s: loadapp()" % spec, exc) from None
