"""The embedded store: FAISS index files + SQLite metadata in one directory, with atomic writes."""

from .store import ImageRow, SearchResult, SignatureMismatch, Store, StoreError

__all__ = ["ImageRow", "SearchResult", "SignatureMismatch", "Store", "StoreError"]
