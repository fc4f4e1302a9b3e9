"""Typed configuration machinery shared by every stage: nested dict -> dataclass merging with type
checks, ``key=value`` overrides, named presets layered with a YAML file, and range/choice checks.

Each stage package keeps its own config dataclasses, choices and least values in its ``config``
module; :mod:`landmark.config` composes them. Nothing here knows any stage.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from ..errors import LandmarkError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class ConfigError(LandmarkError, ValueError):
    """A configuration key or value is wrong; the message names it."""


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.metadata.get("saved", True)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return merge(tp(), value, prefix=f"{key}.")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, key) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def merge(base: T, updates: Mapping[str, Any], prefix: str = "") -> T:
    """Return a copy of dataclass ``base`` with the nested ``updates`` applied (type-checked)."""
    hints = typing.get_type_hints(type(base))
    names = {f.name for f in dataclasses.fields(base) if f.metadata.get("saved", True)}
    changes: dict[str, Any] = {}
    for key, value in updates.items():
        if key not in names:
            raise ConfigError(f"unknown config key {prefix}{key!s}; expected one of {sorted(names)}")
        current = getattr(base, key)
        if dataclasses.is_dataclass(current) and not isinstance(current, type):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{prefix}{key}: expected a mapping, got {value!r}")
            changes[key] = merge(current, value, prefix=f"{prefix}{key}.")
        else:
            changes[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return dataclasses.replace(base, **changes)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["extract.image_size=512", "model.gem_p=4"]`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        dotted, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else None
        node = out
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def check_values(
    config: Any, choices: Mapping[str, Collection[Any]], minimums: Mapping[str, float], prefix: str = ""
) -> None:
    """A :class:`ConfigError` for the first dotted key of ``config`` whose value is not among its
    ``choices`` or is below its least value in ``minimums`` (keys relative to ``config``; messages
    name them as ``prefix + key``)."""

    def value(dotted: str) -> Any:
        node = config
        for part in dotted.split("."):
            node = getattr(node, part)
        return node

    for key, allowed in choices.items():
        if value(key) not in allowed:
            raise ConfigError(f"{prefix}{key}: expected one of {list(allowed)}, got {value(key)!r}")
    for key, least in minimums.items():
        if value(key) < least:
            raise ConfigError(f"{prefix}{key}: expected at least {least}, got {value(key)}")


def layered(
    base: T,
    presets: Mapping[str, Mapping[str, Any]],
    name: str,
    what: str,
    file: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> T:
    """``base <- presets[name] <- YAML file <- overrides``: a named preset merged with the user's changes."""
    if name not in presets:
        raise ConfigError(f"unknown {what} {name!r}; choose one of {sorted(presets)}")
    cfg = merge(base, presets[name])
    given = _dotted_keys(presets[name])
    if file is not None:
        data = yaml.safe_load(Path(file).read_text()) or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{file}: expected a mapping at the top level")
        cfg = merge(cfg, data)
        given |= _dotted_keys(data)
    if overrides:
        updates = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
        cfg = merge(cfg, updates)
        given |= _dotted_keys(updates)
    if any(f.name == "given" for f in dataclasses.fields(cfg)):
        cfg = dataclasses.replace(cfg, given=frozenset(given))
    return cfg


def _dotted_keys(data: Mapping[str, Any], prefix: str = "") -> set[str]:
    """``{"a": {"b": 1}}`` -> ``{"a", "a.b"}``."""
    out: set[str] = set()
    for key, value in data.items():
        out.add(f"{prefix}{key}")
        if isinstance(value, Mapping):
            out |= _dotted_keys(value, f"{prefix}{key}.")
    return out


def explicit(config: Any, section: str) -> dict[str, Any]:
    """The settings of ``config.<section>`` the user chose (what calibration must leave alone): those
    that differ from the defaults, and those its preset, YAML file or overrides set even to their
    default value (``config.given``)."""
    part, given = getattr(config, section), config.given or frozenset()
    defaults = type(part)()
    return {
        f.name: getattr(part, f.name)
        for f in dataclasses.fields(part)
        if getattr(part, f.name) != getattr(defaults, f.name) or f"{section}.{f.name}" in given
    }
