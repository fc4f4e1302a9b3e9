"""Retrieval: nearest-neighbour search in the store, DBA and alpha-QE, spatial re-ranking.

Names are imported from their submodule on first use (landmark.utils.lazy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

if TYPE_CHECKING:
    from .expansion import dba, query_expansion
    from .search import ExpandedSearch, Ranking, rank

_EXPORTS = {
    "ExpandedSearch": "search",
    "Ranking": "search",
    "dba": "expansion",
    "query_expansion": "expansion",
    "rank": "search",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
