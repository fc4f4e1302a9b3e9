"""The embedded store: FAISS index files + SQLite metadata in one directory, with atomic writes.

Names are imported from their submodule on first use (landmark.utils.lazy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

if TYPE_CHECKING:
    from .records import ImageRow, SearchResult
    from .store import SignatureMismatch, Store, StoreError

_EXPORTS = {
    "ImageRow": "records",
    "SearchResult": "records",
    "SignatureMismatch": "store",
    "Store": "store",
    "StoreError": "store",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
