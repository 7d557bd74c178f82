"""How a setting is declared and read: its metadata, flag, env var, and conversion.

:mod:`m2gate.config.settings` declares every setting with :func:`setting`;
the CLI, the environment and TOML loaders and the docs read them back
through :func:`convert` and :func:`describe_type`, so one declaration is
the whole truth about a setting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import Field, dataclass, field
from typing import Any, Literal, get_args, get_origin


class ConfigError(Exception):
    """A bad setting; the message is the one line the user sees."""


@dataclass(frozen=True)
class Meta:
    """What a setting needs beyond its type and default."""

    help: str
    section: str = "server"
    short: str | None = None
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    validate: Callable[[Any], Any] | None = None
    accepted: str = ""  # how to describe valid values in error messages
    positional: bool = False
    in_file: bool = True  # False: not accepted as a config-file key (e.g. config itself)
    env_separator: str = ","  # how list settings are split in M2GATE_<NAME>
    path: bool = False  # a file or directory: `m2gate init` writes it absolute


def setting(default: Any, help: str, **meta: Any) -> Any:
    """Declare one setting (a dataclass field carrying its :class:`Meta`)."""
    info = Meta(help=help, **meta)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"m2gate": info})
    return field(default=default, metadata={"m2gate": info})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_var(name: str) -> str:
    return "M2GATE_" + name.upper()


def describe_type(kind: Any, meta: Meta) -> str:
    """The accepted values, for errors and docs."""
    if meta.accepted:
        return meta.accepted
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(kind))
    if kind is bool:
        return "true or false"
    if kind is int:
        return "an integer"
    if kind is float:
        return "a number"
    if get_origin(kind) is list:
        return "a list of strings"
    return "a string"


def choices_metavar(kind: Any) -> str | None:
    """``{auto,wsgi,asgi}`` for a choice setting, as argparse shows its choices."""
    if get_origin(kind) is Literal:
        return "{%s}" % ",".join(str(a) for a in get_args(kind))
    return None


def default_text(f: Field[Any]) -> str:
    """A setting's default as a user writes it; empty when it has none (unset)."""
    factory = f.default_factory
    value = factory() if callable(factory) else f.default
    if value == "" or value == []:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def convert(name: str, kind: Any, meta: Meta, raw: Any, source: str) -> Any:
    """Turn a raw value (text from CLI/env, or a TOML value) into the setting's type."""

    def fail() -> ConfigError:
        return ConfigError(
            "%s: invalid value %r for %s; accepted: %s"
            % (source, raw, name, describe_type(kind, meta))
        )

    try:
        if get_origin(kind) is Literal:
            value: Any = str(raw).lower() if isinstance(raw, str) else raw
            if value not in get_args(kind):
                raise fail()
        elif kind is bool:
            if isinstance(raw, bool):
                value = raw
            elif isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
                value = raw.lower() in _TRUE
            else:
                raise fail()
        elif kind is int:
            if isinstance(raw, bool) or not isinstance(raw, (int, str)):
                raise fail()
            value = int(raw)
        elif kind is float:
            if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
                raise fail()
            value = float(raw)
        elif get_origin(kind) is list:
            if isinstance(raw, str):
                value = [raw]
            elif isinstance(raw, list) and all(isinstance(v, str) for v in raw):
                value = list(raw)
            else:
                raise fail()
        else:
            if isinstance(raw, int) and not isinstance(raw, bool):
                raw = str(raw)  # `server_port = 8080` in TOML means "8080"
            if not isinstance(raw, str):
                raise fail()
            value = raw
        if meta.validate is not None:
            if isinstance(value, list):
                value = [meta.validate(v) for v in value]
            else:
                value = meta.validate(value)
    except ValueError:
        raise fail() from None
    return value
