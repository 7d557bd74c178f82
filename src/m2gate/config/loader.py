"""Build a :class:`Config` from defaults, a TOML file, the environment and argv."""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping
from typing import Any, get_origin

from m2gate.config.settings import (
    Config,
    ConfigError,
    convert,
    env_var,
    flag,
    settings,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one argument per setting; unset ones stay absent (``SUPPRESS``)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f, meta, kind in settings():
        group = groups.get(meta.section)
        if group is None:
            group = groups[meta.section] = parser.add_argument_group(meta.section)
        helptext = "%s [env %s]" % (meta.help, env_var(f.name))
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
                metavar=meta.metavar,
                help=helptext,
            )
        else:
            group.add_argument(
                *names,
                dest=f.name,
                default=argparse.SUPPRESS,
                metavar=meta.metavar,
                help=helptext,
            )


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
    return {_normalise_key(k): v for k, v in data.items()}


def load(
    cli: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Merge the sources in precedence order and validate every value."""
    environ = os.environ if environ is None else environ
    table = {f.name: (meta, kind) for f, meta, kind in settings()}
    values: dict[str, Any] = {}

    config_path = cli.get("config") or environ.get(env_var("config"), "")
    if config_path:
        for key, raw in read_file(config_path).items():
            if key not in table or key == "config":
                known = ", ".join(sorted(k for k in table if k != "config"))
                raise ConfigError(
                    "config file %s: unknown key %r; accepted keys: %s" % (config_path, key, known)
                )
            meta, kind = table[key]
            values[key] = convert(key, kind, meta, raw, "config file %s" % config_path)
    for name, (meta, kind) in table.items():
        raw_env = environ.get(env_var(name))
        if raw_env is not None and raw_env != "":
            if get_origin(kind) is list:
                parts = raw_env.split(os.pathsep if "path" in name else ",")
                values[name] = convert(name, kind, meta, parts, env_var(name))
            else:
                values[name] = convert(name, kind, meta, raw_env, env_var(name))
    for name, raw in cli.items():
        if name in table:
            meta, kind = table[name]
            values[name] = convert(name, kind, meta, raw, flag(name))
    values["config"] = config_path
    return Config(**values)
