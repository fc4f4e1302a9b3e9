"""What a store reads of one generation's index, made once per generation: where each row sits in an
exact store's flat index, the stored vectors of rows, and searches limited to labelled photos or
to some splits (on an exact store, a flat index of the selected photos, since FAISS's flat search
behind an ID selector gives up BLAS and runs about 10x slower; a compressed store filters with an
ID selector)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..errors import LandmarkError
from .ann import CompressedStoreIndex
from .vectors import sorted_positions


class GenerationViews:
    """Lookups over ``index`` (a store generation's exact ``IndexIDMap2`` or compressed index), whose
    rows SQLite names through ``conn``; made anew whenever the store's index changes."""

    def __init__(self, conn: sqlite3.Connection, index: Any, dim: int, root: Path, generation: int):
        self.conn, self.index, self.dim, self.root, self.generation = conn, index, dim, root, generation
        self._cache: dict[Any, Any] = {}

    @property
    def exact(self) -> bool:
        return isinstance(self.index, faiss.IndexIDMap2)

    def reconstruct(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors of ``rows`` (all present in the index), in one pass."""
        if not self.exact:
            return self.index.reconstruct_rows(rows)
        flat: Any = faiss.downcast_index(self.index.index)  # Any: the stubs type it as the base Index (no get_xb)
        xb = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * self.dim).reshape(flat.ntotal, self.dim)
        pos, present = self.positions(rows)
        if not present.all():
            raise LandmarkError(
                f"{self.root}: rows {rows[~present][:3].tolist()} are in meta.sqlite but not in the index"
            )
        return xb[pos]

    def positions(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each row sits in an exact store's flat index, and whether it is there at all."""
        if "positions" not in self._cache:  # sorted once per generation, not per call
            ids = faiss.vector_to_array(self.index.id_map)
            order = np.argsort(ids, kind="stable")
            self._cache["positions"] = (order, ids[order])
        order, sorted_ids = self._cache["positions"]
        found, present = sorted_positions(sorted_ids, rows)
        return order[found] if len(order) else found, present

    def search(
        self, queries: np.ndarray, k: int, labelled_only: bool, splits: tuple[str, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores and rows of the top ``k`` among the selected photos."""
        if not self.exact:
            # faiss's class wrappers take the fields as keyword arguments; its stubs do not
            params = faiss.SearchParameters(sel=self._selector(labelled_only, splits))  # type: ignore[call-arg]
            return self.index.search(queries, k, params=params)
        subset, subset_rows = self._subset(labelled_only, splits)
        if subset is None:  # every stored photo is selected
            return self.index.search(queries, k)
        assert subset_rows is not None  # _subset gives both or neither
        scores = np.full((len(queries), k), -np.inf, np.float32)
        rows = np.full((len(queries), k), -1, np.int64)
        if subset.ntotal:
            found, pos = subset.search(queries, min(k, subset.ntotal))
            scores[:, : pos.shape[1]] = found
            rows[:, : pos.shape[1]] = np.where(pos >= 0, subset_rows[np.clip(pos, 0, None)], -1)
        return scores, rows

    def _selected_rows(self, labelled_only: bool, splits: tuple[str, ...]) -> np.ndarray:
        where, args = [], []
        if labelled_only:
            where.append("landmark_id IS NOT NULL")
        if splits:
            where.append(f"split IN ({','.join('?' * len(splits))})")
            args += list(splits)
        return np.fromiter(
            (r for (r,) in self.conn.execute(f"SELECT row FROM images WHERE {' AND '.join(where)} ORDER BY row", args)),
            dtype=np.int64,
        )

    def _selector(self, labelled_only: bool, splits: tuple[str, ...]) -> faiss.IDSelector:
        key = ("selector", labelled_only, splits)
        if key not in self._cache:
            ids = self._selected_rows(labelled_only, splits)
            if isinstance(self.index, CompressedStoreIndex):
                ids = self.index.ids_of(ids)  # the compressed index names vectors by position
            self._cache[key] = (faiss.IDSelectorBatch(ids), ids)  # keep ids alive with the selector
        return self._cache[key][0]

    def _subset(self, labelled_only: bool, splits: tuple[str, ...]) -> tuple[faiss.Index | None, np.ndarray | None]:
        """A flat index over the selected photos of an exact store, and the store row of each of its
        entries; (None, None) when every stored photo is selected."""
        key = ("subset", labelled_only, splits)
        if key not in self._cache:
            rows = self._selected_rows(labelled_only, splits)
            rows = rows[self.positions(rows)[1]]  # rows named in SQLite but not in the index cannot be searched
            if len(rows) == self.index.ntotal:
                self._cache[key] = (None, None)
                return self._cache[key]
            subset = faiss.IndexFlatIP(self.dim)
            subset.add(self.reconstruct(rows))
            self._cache[key] = (subset, rows)
        return self._cache[key]
