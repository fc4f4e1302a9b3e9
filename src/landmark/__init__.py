"""landmark: recognise landmarks in photos and retrieve photos of the same place.

The pipeline, one package per stage: ``data`` -> ``models`` -> ``features`` -> ``index`` ->
``retrieval`` / ``recognition`` -> ``evaluation``. :mod:`landmark.api` ties them together.
Names are imported lazily so that ``import landmark`` (and the CLI's ``--help``) stay fast.
"""

from __future__ import annotations

from .utils.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "BuildReport": "api",
    "Landmarks": "api",
    "Match": "api",
    "Recognition": "api",
    "SearchOutput": "api",
    "load_photo": "api",
    "open": "api",
    "Config": "config",
    "load_config": "config",
}
__all__ = [*_EXPORTS, "__version__"]
__getattr__ = lazy_exports(__name__, _EXPORTS)
