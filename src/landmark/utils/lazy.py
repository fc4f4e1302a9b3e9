"""Lazy package exports (PEP 562): a package names what it exports and from which submodule, and a
name's submodule is imported on first use. ``import landmark.index.config`` then reads a config
without loading FAISS, and ``landmark --help`` starts without torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``exports[name]`` (a submodule, relative
    to the package) when ``name`` is first read."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(f".{exports[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
