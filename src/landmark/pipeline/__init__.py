"""The pipeline over one store, in typed parts that share a :class:`StoreContext`: :class:`Building`
(writes), :class:`Embedding` (photos to descriptors), :class:`Searching` (retrieval) and
:class:`Recognising` (recognition). :class:`landmark.api.Landmarks` composes them into the facade;
evaluation and calibration take the parts.

Names are imported from their submodule on first use (landmark.utils.lazy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

if TYPE_CHECKING:
    from .building import Building
    from .context import StoreContext
    from .embedding import Embedding
    from .parts import Parts
    from .recognising import QueryLocalFeatures, Recognising
    from .results import BuildReport, Match, Photo, Recognition, Renamed, SearchOutput
    from .searching import Searching
    from .stores import build_store, create_store, open_store

_EXPORTS = {
    "Building": "building",
    "StoreContext": "context",
    "Embedding": "embedding",
    "Parts": "parts",
    "QueryLocalFeatures": "recognising",
    "Recognising": "recognising",
    "BuildReport": "results",
    "Match": "results",
    "Photo": "results",
    "Recognition": "results",
    "Renamed": "results",
    "SearchOutput": "results",
    "Searching": "searching",
    "build_store": "stores",
    "create_store": "stores",
    "open_store": "stores",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
