"""Find and import the user's application from an APP string."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any


class AppLoadError(Exception):
    """The app could not be loaded; the message is the one line the user sees."""


def load_app(target: str, chdir: str = "") -> Any:
    """Import ``module:attr`` or ``module`` (then ``application``, then ``app``).

    The current directory (after ``chdir``) goes first on ``sys.path`` so a
    project's own modules import as they do under ``python -m``. A path like
    ``examples/hello.py:app`` is accepted too.
    """
    if not target:
        raise AppLoadError("no application given: pass APP as module:attr (setting app)")
    if chdir:
        try:
            os.chdir(chdir)
        except OSError as exc:
            raise AppLoadError("chdir: cannot enter %s: %s" % (chdir, exc.strerror)) from None
    module_name, _, attr = target.partition(":")
    if module_name.endswith(".py") or "/" in module_name:
        directory, filename = os.path.split(os.path.abspath(module_name))
        sys.path.insert(0, directory)
        module_name = filename.removesuffix(".py")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppLoadError(
                "app %s: no module named %r (searched from %s)" % (target, exc.name, cwd)
            ) from None
        raise
    names = [attr] if attr else ["application", "app"]
    for name in names:
        obj: Any = module
        try:
            for part in name.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if not callable(obj):
            raise AppLoadError("app %s: %s.%s is not callable" % (target, module_name, name))
        return obj
    raise AppLoadError(
        "app %s: module %s has no attribute %s" % (target, module_name, " or ".join(names))
    )
