"""Configs are dataclasses that map 1:1 to YAML files, overridable from the command line.

`load_config(MyConfig, "configs/x.yaml", ["--a.b", "3"])` reads the YAML, applies the
overrides (dotted keys reach into nested dataclasses) and checks every key and type.
An unknown key or a bad value raises ConfigError naming the key, e.g.
`generation.k: expected int, got 'three'`.

Every field carries its help text where it is declared, with `option`:

    k: int = option(3, "instructions asked for per seed")

`describe_keys(MyConfig)` lists every dotted key with its type, default and help (what `--help`
prints). This module is the ground floor of the config system: every package may use it, and it
knows none of them.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the key."""


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None) -> Any:  # noqa: A002
    """A config field with its help text. Lists, dicts and dataclass instances given as `default`
    are copied for every instance; `factory=` builds the default (e.g. a nested config class)."""
    if not help:
        raise ValueError("option() needs its help text")
    metadata = {"help": help}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def help_of(field: dataclasses.Field) -> str:
    return field.metadata.get("help", "")


def describe_keys(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every field, nested sections expanded in place."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        key = prefix + f.name
        if dataclasses.is_dataclass(tp):
            rows.append((key, "section", "", help_of(f)))
            rows += describe_keys(tp, key + ".")
            continue
        if typing.get_origin(tp) is dict and dataclasses.is_dataclass((typing.get_args(tp) or (None, None))[1]):
            inner = typing.get_args(tp)[1]
            rows.append((key, f"mapping of name → {inner.__name__}", "", help_of(f)))
            rows += describe_keys(inner, key + ".<name>.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "")
        rows.append((key, _type_name(tp), repr(default), help_of(f)))
    return rows


def format_keys(cls: type) -> str:
    """The `--help` table of a config class: one line per key."""
    rows = describe_keys(cls)
    width = max((len(k) for k, *_ in rows), default=0)
    lines = []
    for key, tp, default, text in rows:
        shown = f" [{tp}" + (f", default {default}" if default else "") + "]"
        lines.append(f"  --{key.ljust(width)}  {text}{shown}")
    return "\n".join(lines)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build `cls` from an optional YAML file plus `--key value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(path)
    for key, raw in parse_overrides(overrides or []):
        set_dotted(data, key, yaml.safe_load(raw) if raw != "" else "")
    return from_dict(cls, data)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def parse_overrides(args: list[str]) -> list[tuple[str, str]]:
    """`--a.b 3 --c=x --flag` → [("a.b", "3"), ("c", "x"), ("flag", "true")]."""
    pairs, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --key value")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 2
        else:
            value = "true"
            i += 1
        pairs.append((key.replace("-", "_"), value))
    return pairs


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (known keys here: {known})")
    hints = typing.get_type_hints(cls)
    kwargs = {name: coerce(hints[name], value, prefix + name) for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {err}") from None
    return obj


def coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against type `tp`; convert where YAML is looser than Python."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value if value is not None else {}, key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {coerce(kt, k, key): coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data, ready for YAML/JSON (dataset cards, model cards)."""
    return dataclasses.asdict(cfg)
