"""Typed settings: one path from a mapping, a file or command-line flags to a validated dataclass.

A settings dataclass declares each field's help and allowed range in its metadata (`setting(...)`);
from that one declaration come the command-line flags (with their help and defaults), the
coercion of strings, the nearest-name hint for a typo and the range check, so `train`, `sweep`
and a recipe file all refuse the same mistake with the same one-line message.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing

from .config import ConfigError, nearest


def setting(default, help: str, *, minimum=None, maximum=None, above=None, choices=None, flag=None, **kwargs):
    """A dataclass field with its help text and range: `minimum <= value`, `above < value`, `value <= maximum`,
    `value in choices`. Floats must also be finite. `flag` renames the command-line flag."""
    metadata = {"help": help, "minimum": minimum, "maximum": maximum, "above": above, "choices": choices, "flag": flag}
    if callable(default) and not isinstance(default, (int, float, str, bool)):
        return dataclasses.field(default_factory=default, metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def build(cls, data: dict, prefix: str = "", from_text: bool = False):
    """`cls(**data)` after refusing unknown names (with the nearest valid one), checking each value's
    type and range. `from_text`: the values are command-line strings to parse (a file's are typed)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__} must be a mapping, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown setting '{prefix}{key}'{nearest(str(key), names, prefix=prefix)}")
    instance = cls(**{key: coerce(cls, key, value, prefix, from_text) for key, value in data.items()})
    check(instance, prefix)
    return instance


def replace(instance, changes: dict, prefix: str = ""):
    """A copy of `instance` with typed `changes` applied through `build` (so they are checked too)."""
    return build(type(instance), {**dataclasses.asdict(instance), **changes}, prefix)


def coerce(cls, name: str, value, prefix: str = "", from_text: bool = False):
    """`value` as the field's type. Text from a flag is parsed; a typed value (from a file) must already
    have the field's type (an int is accepted for a float): `"steps": "3"` in a file is an error."""
    hint = typing.get_type_hints(cls)[name]
    allowed = set(typing.get_args(hint)) or {hint}
    label = f"{prefix}{name}"
    if value is None or (from_text and isinstance(value, str) and value.lower() in ("none", "null")):
        if type(None) in allowed:
            return None
        raise ConfigError(f"{label} cannot be empty")
    if dict in allowed or typing.get_origin(hint) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{label} must be a mapping, got {value!r}")
        return dict(value)
    if from_text and isinstance(value, str):
        value = _parse_text(value, allowed, label)
    if bool in allowed:
        if not isinstance(value, bool):
            raise ConfigError(f"{label} must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) and (int in allowed or float in allowed):
        raise ConfigError(f"{label} must be a number, got {value!r}")
    if int in allowed and isinstance(value, int):
        return value
    if float in allowed and isinstance(value, (int, float)):
        return float(value)
    if str in allowed and isinstance(value, str):
        return value
    kind = "an integer" if int in allowed else "a number" if float in allowed else "a string"
    raise ConfigError(f"{label} must be {kind}, got {value!r}")


def _parse_text(text: str, allowed: set, label: str):
    if bool in allowed:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{label} must be true or false, got {text!r}")
    for kind in (int, float):
        if kind in allowed:
            try:
                return kind(text)
            except ValueError:
                pass
    return text


def check(instance, prefix: str = "") -> None:
    """Every field within its declared range (floats finite); raises ConfigError naming the field."""
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        meta = f.metadata
        if value is None or not meta:
            continue
        label = f"{prefix}{f.name}"
        if meta.get("choices") is not None and value not in meta["choices"]:
            raise ConfigError(f"{label}={value!r}: choose one of {', '.join(map(str, meta['choices']))}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{label}={value}: must be a finite number")
        low, strict_low, high = meta.get("minimum"), meta.get("above"), meta.get("maximum")
        if (
            (low is not None and value < low)
            or (strict_low is not None and value <= strict_low)
            or (high is not None and value > high)
        ):
            raise ConfigError(f"{label}={value}: must be {_range(low, strict_low, high)}")


def _range(low, strict_low, high) -> str:
    lower = f">= {low}" if low is not None else (f"> {strict_low}" if strict_low is not None else "")
    if high is None:
        return lower
    return f"in [{low}, {high}]" if low is not None else f"{lower + ' and ' if lower else ''}<= {high}"


# ---- command-line flags ------------------------------------------------------------------------------
def add_flags(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One flag per field (`--batch-size`), with the field's help and default. Flags default to None,
    so `given(args, cls)` returns only what the user typed (a resumed run keeps the rest)."""
    defaults = cls()
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata:
            continue
        default = getattr(defaults, f.name)
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        text = f.metadata["help"] + (f" (default: {default})" if default not in (None, {}, "") else "")
        hint = typing.get_type_hints(cls)[f.name]
        if hint is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif f.metadata.get("choices") is not None:
            parser.add_argument(flag, dest=f.name, choices=f.metadata["choices"], default=None, help=text)
        else:
            parser.add_argument(
                flag, dest=f.name, default=None, metavar=flag.lstrip("-").upper().replace("-", "_"), help=text
            )


def given(args: argparse.Namespace, cls, skip: tuple[str, ...] = ()) -> dict:
    """The fields of `cls` the user set on the command line, parsed to their types."""
    names = [f.name for f in dataclasses.fields(cls) if f.metadata and f.name not in skip]
    return {
        name: coerce(cls, name, getattr(args, name), from_text=True)
        for name in names
        if getattr(args, name, None) is not None
    }
