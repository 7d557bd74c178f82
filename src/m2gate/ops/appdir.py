"""App folders (``m2gate init DIR``): ``app/ logs/ run/`` and an ``m2gate.toml``.

``m2gate serve --app-dir DIR`` then reads DIR/m2gate.toml, runs the app in
DIR/app and keeps its pidfile and control socket in DIR/run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from m2gate.config.declare import ConfigError
from m2gate.config.loader import APP_DIR_FILE
from m2gate.config.settings import settings

APP_DIR_LAYOUT = ("app", "logs", "run")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic-string escapes; TOML also
        # forbids a raw DEL.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError("cannot write %r to TOML" % (value,))


def render_toml(values: Mapping[str, Any]) -> str:
    """A config file holding ``values`` (setting name -> typed value)."""
    lines = ["# m2gate settings for this app folder (see docs/settings.md)."]
    lines += ["%s = %s" % (key, _toml_value(value)) for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _absolute(name: str, value: str) -> str:
    if not value or value == "-":
        return value
    if name == "paste":  # [config:]FILE[#name]
        prefix = "config:" if value.startswith("config:") else ""
        path, sep, section = value.removeprefix("config:").partition("#")
        return prefix + os.path.abspath(path) + sep + section
    return os.path.abspath(value)


def absolute_paths(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with relative file and directory settings made absolute.

    m2gate.toml is read from anywhere later (and the app runs in DIR/app), so
    a path is resolved once, against the directory ``m2gate init`` ran in.
    """
    kinds = {f.name: meta for f, meta, _ in settings()}
    out: dict[str, Any] = {}
    for name, value in values.items():
        meta = kinds.get(name)
        if meta is not None and meta.path:
            if isinstance(value, list):
                value = [_absolute(name, v) for v in value]
            elif isinstance(value, str):
                value = _absolute(name, value)
        out[name] = value
    return out


def init_app_dir(directory: str, values: Mapping[str, Any]) -> str:
    """Create ``app/ logs/ run/`` and ``m2gate.toml`` with ``values``; return the file.

    Refuses to overwrite an existing m2gate.toml: the folder may be in use.
    """
    directory = os.path.abspath(directory)
    path = os.path.join(directory, APP_DIR_FILE)
    if os.path.exists(path):
        raise ConfigError("init: %s already exists; edit it or remove it first" % path)
    try:
        for sub in APP_DIR_LAYOUT:
            os.makedirs(os.path.join(directory, sub), exist_ok=True)
        with open(path, "x", encoding="utf-8") as fh:
            fh.write(render_toml(absolute_paths(values)))
    except OSError as exc:
        raise ConfigError("init: cannot create %s: %s" % (directory, exc.strerror or exc)) from None
    return path
