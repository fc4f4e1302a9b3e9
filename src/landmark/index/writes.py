"""How a store is written: rows added or removed in one transaction with the next generation's index
files, committed by the SQLite transaction that names them (the commit protocol of
:mod:`landmark.index.store`). A killed run leaves the last committed generation."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from .ann import CompressedStoreIndex
from .errors import StoreError
from .files import generation_files, index_name, rows_name, vectors_name, write_index
from .sqlite import chunks, lock


@dataclass
class StoreWrite:
    """The transaction of one :meth:`Store.write`."""

    conn: sqlite3.Connection
    generation: int  # the generation its commit makes
    index: CompressedStoreIndex | None = None  # a bulk load's index for that generation (its files already written)


class StoreWrites:
    """The writes of :class:`landmark.index.store.Store` (which holds the state they change)."""

    root: Path
    dim: int
    config: Config
    _conn: sqlite3.Connection
    _index: Any
    _generation: int

    def refresh(self) -> bool:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def add(
        self,
        keys: Sequence[str],
        vectors: np.ndarray,
        *,
        paths: Sequence[str | None] | None = None,
        landmark_ids: Sequence[int | None] | None = None,
        split: str | None = None,
        sizes: Mapping[str, tuple[int, int]] | None = None,
        replace: bool = False,
        extras: Mapping[str, np.ndarray] | None = None,
        contents: Sequence[str | None] | None = None,
    ) -> int:
        """Add descriptors with their metadata (``contents``: each photo's :func:`content_hash`;
        ``extras``: name -> N x G arrays) in one atomic commit; returns the number added."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n = len(keys)
        if vectors.shape != (n, self.dim):
            raise StoreError(f"expected {n} vectors of {self.dim} dimensions, got shape {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise StoreError("refusing to add vectors with NaN or infinite values")
        if len(set(keys)) != n:
            raise StoreError("duplicate ids in one add")
        if n == 0:
            return 0
        paths = list(paths) if paths is not None else [None] * n
        labels = list(landmark_ids) if landmark_ids is not None else [None] * n
        hashes = list(contents) if contents is not None else [None] * n
        if len(paths) != n or len(labels) != n or len(hashes) != n:
            raise StoreError(
                f"expected {n} paths, landmark ids and contents, got {len(paths)}, {len(labels)} and {len(hashes)}"
            )
        sizes = sizes or {}
        now = time.time()
        with self.write() as w:
            conn = w.conn
            existing = self._existing(keys)
            if existing and not replace:
                raise StoreError(
                    f"{len(existing)} id(s) already in the store, e.g. {sorted(existing)[:3]} (use replace)"
                )
            if existing:
                self._delete_rows(conn, list(existing.values()))
            first = conn.execute("SELECT coalesce(max(row), 0) + 1 FROM images").fetchone()[0]
            rows = np.arange(first, first + n, dtype=np.int64)
            conn.executemany(
                "INSERT INTO images (row, key, path, landmark_id, split, width, height, added_at, content) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                [
                    (
                        int(r),
                        k,
                        None if p is None else str(p),
                        None if lab is None else int(lab),
                        split,
                        *(sizes.get(k) or (None, None)),
                        now,
                        h,
                    )
                    for r, k, p, lab, h in zip(rows, keys, paths, labels, hashes)
                ],
            )
            for name, values in (extras or {}).items():
                values = np.asarray(values, dtype=np.float16).reshape(n, -1)
                conn.executemany(
                    "INSERT INTO extras VALUES (?, ?, ?)", [(int(r), name, v.tobytes()) for r, v in zip(rows, values)]
                )
            self._index.add_with_ids(vectors, rows)
        return n

    def remove(self, keys: Iterable[str]) -> int:
        """Remove images by id in one atomic commit; unknown ids are ignored. Returns the number removed."""
        keys = list(keys)
        with self.write() as w:
            conn = w.conn
            existing = self._existing(keys)
            if existing:
                self._delete_rows(conn, list(existing.values()))
        return len(existing)

    def _existing(self, keys: Sequence[str]) -> dict[str, int]:
        rows: dict[str, int] = {}
        for part in chunks(list(keys)):
            q = f"SELECT key, row FROM images WHERE key IN ({','.join('?' * len(part))})"
            rows.update(dict(self._conn.execute(q, list(part))))
        return rows

    def _delete_rows(self, conn: sqlite3.Connection, rows: list[int]) -> None:
        for part in chunks(rows):
            conn.execute(f"DELETE FROM images WHERE row IN ({','.join('?' * len(part))})", list(part))
            conn.execute(f"DELETE FROM extras WHERE row IN ({','.join('?' * len(part))})", list(part))
            # their augmented vectors and votes go with them (landmark.index.augmented)
            conn.execute(f"DELETE FROM augmented WHERE row IN ({','.join('?' * len(part))})", list(part))
            conn.execute(f"DELETE FROM votes WHERE row IN ({','.join('?' * len(part))})", list(part))
        self._index.remove_ids(np.asarray(rows, dtype=np.int64))

    @contextmanager
    def write(self) -> Iterator[StoreWrite]:
        """One write: the writer lock, a SQLite transaction for the rows (``w.conn``), then the next
        generation's index files and the commit that names them (see the commit protocol above). A
        bulk load sets ``w.index`` to the compressed index it built for ``w.generation``."""
        with lock(self.root):
            self.refresh()
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            old = self._generation
            try:
                w = StoreWrite(conn, old + 1)
                yield w
                if w.index is not None:
                    self._index = w.index
                new = old + 1
                ic = self.config.index
                if (
                    ic.kind != "flat"
                    and not isinstance(self._index, CompressedStoreIndex)
                    and len(self) >= ic.train_min
                ):
                    self._index = CompressedStoreIndex.from_flat(self._index, ic)
                if isinstance(self._index, CompressedStoreIndex):
                    self._index.write(
                        self.root / index_name(new), self.root / vectors_name(new), self.root / rows_name(new)
                    )
                else:
                    write_index(self._index, self.root / index_name(new))
                conn.execute("UPDATE meta SET value=? WHERE key='generation'", (str(new),))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                self._generation = -1
                self.refresh()  # back to the last committed index
                raise
            self._generation = new
            current = {index_name(new), vectors_name(new), rows_name(new)}
            for stale in generation_files(self.root):
                if stale.name not in current:
                    stale.unlink(missing_ok=True)
            if isinstance(self._index, CompressedStoreIndex):
                self._generation = -1
                self.refresh()  # re-open the written files: full vectors memory-mapped, pending lists empty
