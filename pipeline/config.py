"""Settings from environment variables, declared once on a frozen dataclass.

Each service declares its settings as fields of a frozen dataclass, each with
`setting(...)`: the environment variable, the default and a help text. `load()`
reads and validates them all at start and raises `ConfigError` naming the
variable; `describe()` lists them for `--help`. A setting declared `secret` (a key, a
password, a URL that may carry credentials) never has its value in an error: its checks
say which part is wrong without quoting it.

Supported field types: str, int, float, bool and tuple[str, ...] (comma-separated).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pipeline.errors import ConfigError

T = TypeVar("T")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def setting(
    env: str,
    default: Any,
    help: str,
    *,
    check: Callable[[Any], str | None] | None = None,
    secret: bool = False,
) -> Any:
    """Declares one setting: a dataclass field read from `env`.

    `check` returns an error text (without the variable's name) or None; for a `secret`
    setting that text must not quote the value either (say "entry 2", not what it holds).
    """
    meta = {"env": env, "help": help, "check": check, "secret": secret}
    if isinstance(default, list | dict | set):
        raise TypeError("mutable defaults are not supported; use a tuple")
    return dataclasses.field(default=default, metadata=meta)


def positive(value: float) -> str | None:
    """Checks that a number is > 0."""
    return None if value > 0 else "must be greater than 0"


def non_negative(value: float) -> str | None:
    """Checks that a number is >= 0."""
    return None if value >= 0 else "must be 0 or greater"


def port(value: int) -> str | None:
    """Checks a TCP port number (0 lets the OS choose)."""
    return None if 0 <= value <= 65535 else "must be a port number between 0 and 65535"


def non_empty(value: str | tuple[str, ...]) -> str | None:
    """Checks that a string or list is not empty."""
    return None if value else "must not be empty"


def _problem(env: str, value: Any, problem: str, *, secret: bool) -> ConfigError:
    """The error of a bad value: `NAME=value: problem`, or `NAME: problem` for a secret."""
    return ConfigError(f"{env}: {problem}" if secret else f"{env}={value!r}: {problem}")


def _as_written(value: Any, raw: str | None) -> Any:
    """A value to show in its error: a list as it was written (`10.0.0.0/8, 10.0.0.0/33`),
    not as the tuple it became; any other value as it was read."""
    if not isinstance(value, tuple):
        return value
    return raw.strip() if raw is not None and raw.strip() else ",".join(value)


def _parse(raw: str, kind: Any, env: str, *, secret: bool = False) -> Any:
    text = raw.strip()
    if kind is str:
        return text
    if kind is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise _problem(env, raw, "expected true or false", secret=secret)
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise _problem(env, raw, "expected an integer", secret=secret) from None
    if kind is float:
        try:
            number = float(text)
        except ValueError:
            raise _problem(env, raw, "expected a number", secret=secret) from None
        if not math.isfinite(number):  # "inf" would make a timer never fire
            raise _problem(env, raw, "expected a finite number", secret=secret)
        return number
    if typing.get_origin(kind) is tuple:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    raise TypeError(f"unsupported setting type {kind!r} for {env}")


def _field_type(cls: type, field: dataclasses.Field[Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kind = hints[field.name]
    if isinstance(kind, types.UnionType):
        raise TypeError(f"optional settings are not supported: {field.name}")
    return kind


def load(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
    """Builds the settings dataclass `cls` from the environment, validating every field."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = field.metadata.get("env")
        if name is None:
            continue
        kind = _field_type(cls, field)
        secret = bool(field.metadata.get("secret"))
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            value = field.default
        else:
            value = _parse(raw, kind, name, secret=secret)
        check = field.metadata.get("check")
        if check is not None:
            problem = check(value)
            if problem:
                raise _problem(name, _as_written(value, raw), problem, secret=secret)
        values[field.name] = value
    return cls(**values)


def describe(cls: type) -> list[tuple[str, str, str]]:
    """Lists (environment variable, default, help) for every setting of `cls`."""
    rows = []
    for field in dataclasses.fields(cls):
        name = field.metadata.get("env")
        if name is None:
            continue
        default = field.default
        shown = ",".join(default) if isinstance(default, tuple) else str(default)
        rows.append((name, shown, field.metadata["help"]))
    return rows


def help_text(cls: type, title: str) -> str:
    """Renders the settings of `cls` as a help section."""
    rows = describe(cls)
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{title} (environment variables):"]
    for name, default, text in rows:
        lines.append(f"  {name:<{width}}  {text} [default: {default or 'empty'}]")
    return "\n".join(lines)
