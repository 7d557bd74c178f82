"""Build a :class:`Config` from defaults, a TOML file, the environment and argv."""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import Field
from typing import Any, get_origin

from m2gate.config.declare import (
    ConfigError,
    Meta,
    choices_metavar,
    convert,
    default_text,
    env_var,
    flag,
)
from m2gate.config.settings import Config, settings


def add_arguments(parser: argparse.ArgumentParser, exclude: Collection[str] = ()) -> None:
    """Add one argument per setting; unset ones stay absent (``SUPPRESS``)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f, meta, kind in settings():
        if f.name in exclude:
            continue
        group = groups.get(meta.section)
        if group is None:
            group = groups[meta.section] = parser.add_argument_group(meta.section)
        # argparse %-formats help strings: a literal % (access log atoms) must be doubled.
        helptext = "%s%s [env %s]" % (meta.help, _default_note(f, meta), env_var(f.name))
        helptext = helptext.replace("%", "%%")
        # Choices as a metavar, not argparse's choices=: the values are checked (and
        # lowercased) by convert(), the same for flags, env vars and config files.
        metavar = meta.metavar or choices_metavar(kind)
        if meta.positional:
            group.add_argument(
                f.name, nargs="?", default=argparse.SUPPRESS, metavar=meta.metavar, help=helptext
            )
            continue
        names = [flag(f.name), *meta.aliases]
        if meta.short:
            names.insert(0, meta.short)
        if kind is bool:
            group.add_argument(
                *names,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=helptext,
            )
        elif get_origin(kind) is list:
            group.add_argument(
                *names,
                dest=f.name,
                action="append",
                default=argparse.SUPPRESS,
                metavar=metavar,
                help=helptext,
            )
        else:
            group.add_argument(
                *names,
                dest=f.name,
                default=argparse.SUPPRESS,
                metavar=metavar,
                help=helptext,
            )


def _default_note(f: Field[Any], meta: Meta) -> str:
    """`` (default: X)`` for the help line, unless the help text already says it."""
    if "default:" in meta.help:
        return ""
    return " (default: %s)" % (default_text(f) or "none")


def _normalise_key(key: str) -> str:
    return key.replace("-", "_")


def read_file(path: str) -> dict[str, Any]:
    """Parse a TOML config file; errors name the file."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError("config file %s: %s" % (path, exc.strerror or exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config file %s: invalid TOML: %s" % (path, exc)) from None
    return data


APP_DIR_FILE = "m2gate.toml"


def _app_dir(cli: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """The --app-dir (CLI or env), absolute; ConfigError if it is no directory."""
    app_dir = str(cli.get("app_dir") or environ.get(env_var("app_dir"), ""))
    if not app_dir:
        return ""
    app_dir = os.path.abspath(app_dir)
    if not os.path.isdir(app_dir):
        raise ConfigError(
            "app_dir: %s is not a directory; create one with `m2gate init DIR`" % app_dir
        )
    return app_dir


def apply_app_dir(cfg: Config) -> Config:
    """Default chdir, pidfile and log file to the app folder's app/, run/ and logs/."""
    if cfg.app_dir:
        cfg.chdir = cfg.chdir or os.path.join(cfg.app_dir, "app")
        cfg.pidfile = cfg.pidfile or os.path.join(cfg.app_dir, "run", "m2gate.pid")
        cfg.log_file = cfg.log_file or os.path.join(cfg.app_dir, "logs", "m2gate.log")
    return cfg


def load(
    cli: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Merge the sources in precedence order and validate every value.

    Defaults < config file(s) < environment < command line. With an app
    folder, its ``m2gate.toml`` is read first and ``--config`` on top of it.
    """
    environ = os.environ if environ is None else environ
    table = {f.name: (meta, kind) for f, meta, kind in settings()}
    values: dict[str, Any] = {}

    app_dir = _app_dir(cli, environ)
    files: list[str] = []
    if app_dir and os.path.exists(os.path.join(app_dir, APP_DIR_FILE)):
        files.append(os.path.join(app_dir, APP_DIR_FILE))
    config_path = str(cli.get("config") or environ.get(env_var("config"), ""))
    if config_path:
        files.append(config_path)
    for path in files:
        seen: dict[str, str] = {}
        for written, raw in read_file(path).items():
            key = _normalise_key(written)
            if key not in table or not table[key][0].in_file:
                known = ", ".join(sorted(k for k in table if table[k][0].in_file))
                raise ConfigError(
                    "config file %s: unknown key %r; accepted keys: %s" % (path, written, known)
                )
            if key in seen:
                raise ConfigError(
                    "config file %s: %r and %r are the same setting; keep one"
                    % (path, seen[key], written)
                )
            seen[key] = written
            meta, kind = table[key]
            values[key] = convert(key, kind, meta, raw, "config file %s" % path)
    for name, (meta, kind) in table.items():
        raw_env = environ.get(env_var(name))
        if raw_env is not None and raw_env != "":
            if get_origin(kind) is list:
                parts = [p for p in raw_env.split(meta.env_separator) if p]
                values[name] = convert(name, kind, meta, parts, env_var(name))
            else:
                values[name] = convert(name, kind, meta, raw_env, env_var(name))
    for name, raw in cli.items():
        if name in table:
            meta, kind = table[name]
            if meta.positional and raw == "":
                continue  # `serve "" --paste x.ini`: an empty APP is no APP
            values[name] = convert(name, kind, meta, raw, flag(name))
    values["config"] = config_path
    values["app_dir"] = app_dir
    return apply_app_dir(Config(**values))
