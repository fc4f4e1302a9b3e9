"""Registries of kinds: a config names a kind (``head.kind=arcface``, ``optim.schedule=cosine``), the
registry maps the name to where its implementation lives (``"module:attribute"``) and loads it on
first use. Checking a name needs no import of the implementation, so configurations stay light; adding
a kind is one module (or function) plus one line here (or :meth:`Registry.register` from a plugin),
the way timm's ``register_model`` and hloc's ``dynamic_load`` do it."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from .config import ConfigError


class Registry(Mapping[str, Any]):
    """``name -> implementation`` for one config key; ``registry[name]`` imports and returns it."""

    def __init__(self, key: str, targets: Mapping[str, str]):
        self.key = key
        self._targets = dict(targets)
        self._loaded: dict[str, Any] = {}

    def register(self, name: str, target: str) -> None:
        """Make ``name`` a kind whose implementation is ``target`` (``"package.module:attribute"``)."""
        if name in self._targets and self._targets[name] != target:
            raise ValueError(f"{self.key}: {name!r} is already registered as {self._targets[name]}")
        self._targets[name] = target

    def names(self) -> tuple[str, ...]:
        return tuple(self._targets)

    def __getitem__(self, name: str) -> Any:
        if name not in self._targets:
            raise ConfigError(f"{self.key}: expected one of {list(self._targets)}, got {name!r}")
        if name not in self._loaded:
            module, _, attribute = self._targets[name].partition(":")
            self._loaded[name] = getattr(importlib.import_module(module), attribute)
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def __len__(self) -> int:
        return len(self._targets)
