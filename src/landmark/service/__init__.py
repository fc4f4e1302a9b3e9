"""The HTTP service and its web page: ``create_app(store_dir_or_landmarks, settings)``; ``landmark serve``.

FastAPI imports lazily, so ``import landmark.service`` stays cheap for the CLI's ``--help``.
"""

from __future__ import annotations

from typing import Any

from .settings import ServiceSettings, load_settings


def create_app(*args: Any, **kwargs: Any):
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["ServiceSettings", "create_app", "load_settings"]
