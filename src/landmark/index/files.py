"""The files of a store generation: its FAISS index and, for a compressed store, the full vectors
and the row of each position (see :mod:`landmark.index.ann`)."""

from __future__ import annotations

from pathlib import Path

import faiss

from ..utils.io import atomic_path


def index_name(generation: int) -> str:
    return f"global-{generation:06d}.faiss"


def vectors_name(generation: int) -> str:
    return f"vectors-{generation:06d}.faiss"


def rows_name(generation: int) -> str:
    return f"rows-{generation:06d}.npy"


def generation_files(root: Path) -> list[Path]:
    """Every generation file in the store directory ``root``, current or stale."""
    return [*root.glob("global-*.faiss"), *root.glob("vectors-*"), *root.glob("rows-*.npy")]


def write_index(index: faiss.Index, path: Path) -> None:
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
