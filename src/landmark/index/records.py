"""The rows a store gives back: stored images, where a photo came from, search results; and the
content hash that identifies a photo whatever its name."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageRow:
    key: str
    path: str | None
    landmark_id: int | None
    split: str | None
    width: int | None
    height: int | None


@dataclass(frozen=True)
class StoredFile:
    """Where a stored photo came from: its file (resolved path), when it was added, and the SHA-256 of
    its bytes (None for photos stored before content hashes were kept, until one is recorded)."""

    path: str | None
    added_at: float
    content: str | None


def content_hash(path: str | os.PathLike[str]) -> str:
    """The SHA-256 (hex) of a file's bytes: a photo's identity in the store, whatever its name.
    Raises OSError when the file cannot be read."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@dataclass
class SearchResult:
    """``k`` neighbours per query; missing neighbours have key ``None`` and score ``-inf``."""

    keys: list[list[str | None]]
    scores: np.ndarray  # Q x k float32, inner products (cosine for unit vectors)
    landmark_ids: np.ndarray  # Q x k int64, -1 where unlabelled or missing
    rows: np.ndarray  # Q x k int64 store rows, -1 where missing

    def __len__(self) -> int:
        return len(self.keys)
