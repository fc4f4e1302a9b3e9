"""Compressed FAISS indexes with exact re-ranking: how they are made, trained and kept in a store.

``ivfpq``: an inverted file of ``nlist`` cells over product-quantised codes of ``pq_m`` bytes (FAISS
``PCAR<p>,IVF<nlist>,PQ<2 pq_m>x4fsr``: a PCA to the ``p`` dimensions that hold most of the
variance (``pca_dim``, or chosen from ``pca_energy``), randomly rotated so that it spreads evenly
over the PQ sub-spaces — ``RR<d>``, a random rotation of all dimensions, when no fewer hold it —
then 4-bit "fast-scan" PQ of each vector's residual from its cell centre, which trains in seconds
and scans codes with SIMD). In memory per vector: the code plus its 8-byte id (+ the shared centroids). (HNSW was
left out: its graph links alone cost 2 * M * 4 bytes per vector, over the 128-byte budget, and it
cannot remove vectors.)

The compressed index proposes a shortlist of ``rerank`` candidates per query; they are re-scored
against the full vectors, which live **on disk** in a FAISS flat file (float16 by default,
``index.vectors_dtype``) that FAISS memory-maps, so only the pages touched are read; FAISS's
``IndexRefine`` re-scores them in C++ (:mod:`landmark.index.vectors`). Sharded indexes for
collections larger than memory are :mod:`landmark.index.sharded`.
"""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np

from ..utils.io import atomic_path
from .config import KINDS, IndexConfig
from .faiss_index import AnnError, bytes_per_vector, index_name, remap_ids, set_search_params
from .vectors import RefineVectors, exact_rerank, rerank_rows, sorted_positions


def default_nlist(n: int) -> int:
    """About ``4 sqrt(N)`` cells, a power of two, with at least 39 training vectors per cell."""
    if n < 39 * 4:
        return 1
    target = 4 * math.sqrt(n)
    nlist = 2 ** int(round(math.log2(target)))
    return int(max(1, min(nlist, n // 39)))


def auto_pca_dim(sample: np.ndarray, step: int, energy: float, max_rows: int = 20_000) -> int:
    """The fewest principal dimensions of ``sample``, a multiple of ``step``, that hold ``energy`` of
    its variance; all of its dimensions when no fewer do (a flat spectrum, e.g. whitened vectors)."""
    sample = np.asarray(sample)
    dim = sample.shape[1]
    x = np.asarray(sample[:: max(1, len(sample) // max_rows)], dtype=np.float64)
    x = x - x.mean(axis=0)
    eig = np.clip(np.linalg.eigvalsh(x.T @ x)[::-1], 0, None)
    held = np.cumsum(eig) / max(float(eig.sum()), 1e-30)
    return next((m for m in range(step, dim, step) if held[m - 1] >= energy), dim)


def make_index(dim: int, cfg: IndexConfig, n_train: int, sample: np.ndarray | None = None) -> faiss.Index:
    """An untrained compressed index for ``dim``-d unit vectors (inner product).

    With ``index.pca_dim`` 0 the codes cover the fewest PCA dimensions of ``sample`` (the training
    vectors) holding ``index.pca_energy`` of their variance (:func:`auto_pca_dim`), after a random
    rotation that spreads it over the sub-quantizers (FAISS ``PCAR``); all ``dim`` of them, randomly
    rotated (``RR``), when no fewer do or no sample is given.
    """
    step = 2 * cfg.pq_m
    if cfg.pca_dim:
        coded = cfg.pca_dim
    else:
        coded = auto_pca_dim(sample, step, cfg.pca_energy) if sample is not None and len(sample) > 1 else dim
    if coded > dim or coded % step:
        raise AnnError(f"2 * pq_m = {step} 4-bit sub-quantizers must divide the coded dimension {coded} (<= {dim})")
    if cfg.kind == "ivfpq":
        nlist = cfg.nlist or default_nlist(n_train)
        pre = f"PCAR{coded}" if cfg.pca_dim or coded < dim else f"RR{dim}"
        index = faiss.index_factory(
            dim, f"{pre},IVF{nlist},PQ{2 * cfg.pq_m}x4fs{'r' if cfg.residual else ''}", faiss.METRIC_INNER_PRODUCT
        )
        set_search_params(index, cfg)
        return index
    raise AnnError(f"index.kind must be one of {KINDS} for a compressed index, got {cfg.kind!r}")


def train_index(index: faiss.Index, sample: np.ndarray, seed: int = 1234) -> faiss.Index:
    """Train ``index`` on ``sample`` (an N x D float32 array or memmap)."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed
        min_n = max(39 * ivf.nlist, 256)
        if len(sample) < min_n:
            raise AnnError(
                f"training an IVF index of {ivf.nlist} cells needs at least {min_n} vectors, got {len(sample)}"
            )
    index.train(sample)
    return index


class CompressedStoreIndex:
    """The store's index once it is compressed: FAISS codes in memory, full vectors on disk.

    It answers the calls :class:`~landmark.index.store.Store` makes on a FAISS ``IndexIDMap2``
    (``add_with_ids``, ``remove_ids``, ``search``, ``ntotal``, ``d``) in store rows — except the
    selector of a filtered :meth:`search`, which names index ids (make it from :meth:`ids_of`) — so the
    store's commit protocol is unchanged: :meth:`write` produces ``global-<g>.faiss`` (the codes) plus
    ``vectors-<g>.faiss`` / ``rows-<g>.npy`` (the full vectors for re-ranking, and the store row of
    each) before SQLite commits generation ``g``.

    Inside, the compressed index names each vector by its **position** in the written vectors file
    (rows sorted), and the j-th vector added since by ``written + j``: FAISS then re-ranks a
    shortlist straight from the file (:meth:`RefineVectors.refine`). Store rows are translated at
    the edges (:meth:`ids_of`, :meth:`rows_of`); :meth:`write` renumbers the positions of the next
    generation in place. Stores written before the vectors file was a FAISS file (``vectors-<g>.npy``,
    float32, codes named by store row) are read and renamed on load, and re-ranked exactly.
    """

    def __init__(self, index: faiss.Index, rows: np.ndarray, vectors: RefineVectors | np.ndarray, cfg: IndexConfig):
        self.index, self.cfg = index, cfg
        self.rows = np.asarray(rows, np.int64)  # store row of each written position (sorted)
        self.vectors = vectors  # aligned with rows: a RefineVectors once written
        self._added_rows: list[np.ndarray] = []  # vectors added since, at positions len(rows) + j
        self._added_vecs: list[np.ndarray] = []
        self._removed: set[int] = set()  # positions removed since
        set_search_params(index, cfg)
        self.d = int(index.d)

    # -- FAISS-like surface used by the store ---------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def _pending(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._added_rows:
            return np.zeros(0, np.int64), np.zeros((0, self.d), np.float32)
        return np.concatenate(self._added_rows), np.concatenate(self._added_vecs)

    def ids_of(self, rows: np.ndarray, *, strict: bool = False) -> np.ndarray:
        """The index ids (positions) of the store ``rows`` it holds; with ``strict``, all must be held."""
        rows = np.asarray(rows, np.int64)
        ids = np.full(len(rows), -1, np.int64)
        pos, inside = sorted_positions(self.rows, rows)
        ids[inside] = pos[inside]
        if self._removed:
            ids[np.isin(ids, np.fromiter(self._removed, np.int64))] = -1
        pending, _ = self._pending()
        if len(pending) and (ids < 0).any():
            last = {
                int(r): len(self.rows) + j for j, r in enumerate(pending) if len(self.rows) + j not in self._removed
            }
            for i in np.flatnonzero(ids < 0):
                ids[i] = last.get(int(rows[i]), -1)
        if strict and (ids < 0).any():
            raise AnnError(f"rows {rows[ids < 0][:3].tolist()} are not in the compressed index")
        return ids if strict else ids[ids >= 0]

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Store rows of index ``ids`` (-1 stays -1)."""
        pending, _ = self._pending()
        every = np.concatenate([self.rows, pending]) if len(pending) else self.rows
        if not len(every):
            return np.full(np.shape(ids), -1, np.int64)
        return np.where(ids >= 0, every[np.clip(ids, 0, len(every) - 1)], -1)

    def add_with_ids(self, x: np.ndarray, rows: np.ndarray) -> None:
        x = np.ascontiguousarray(x, np.float32)
        rows = np.asarray(rows, np.int64)
        start = len(self.rows) + sum(len(r) for r in self._added_rows)
        self.index.add_with_ids(x, np.arange(start, start + len(x), dtype=np.int64))
        self._added_rows.append(rows)
        self._added_vecs.append(x)

    def remove_ids(self, rows: np.ndarray) -> int:
        ids = self.ids_of(rows)
        self._removed.update(ids.tolist())
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))

    def _fetch(self, ids: np.ndarray) -> np.ndarray:
        """Full vectors of index ``ids`` (all >= 0)."""
        ids = np.asarray(ids, np.int64)
        out = np.empty((len(ids), self.d), np.float32)
        written = ids < len(self.rows)
        if written.any():
            out[written] = (
                self.vectors(ids[written]) if isinstance(self.vectors, RefineVectors) else self.vectors[ids[written]]
            )
        if (~written).any():
            out[~written] = self._pending()[1][ids[~written] - len(self.rows)]
        return out

    def reconstruct(self, row: int) -> np.ndarray:
        return self.reconstruct_rows(np.array([row]))[0]

    def reconstruct_rows(self, rows: np.ndarray) -> np.ndarray:
        """The full vectors of store ``rows`` (len(rows) x d), read in one pass."""
        return self._fetch(self.ids_of(rows, strict=True))

    def search(self, queries: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` store rows; ``params.sel`` selects index ids (make it from :meth:`ids_of`)."""
        queries = np.ascontiguousarray(queries, np.float32)
        sp = None
        if params is not None and params.sel is not None:
            nprobe = faiss.extract_index_ivf(self.index).nprobe
            # faiss's class wrappers take the fields as keyword arguments; its stubs do not
            sp = faiss.SearchParametersIVF(sel=params.sel, nprobe=nprobe)  # type: ignore[call-arg]
        if not self.cfg.rerank:
            scores, ids = self.index.search(queries, k, params=sp)
        elif not self._added_rows and isinstance(self.vectors, RefineVectors):
            scores, ids = self.vectors.refine(self.index, queries, k, self.cfg.rerank, sp)
        else:
            _, cand = self.index.search(queries, max(k, self.cfg.rerank), params=sp)
            vecs = self.vectors
            if (
                not self._added_rows
                and isinstance(vecs, np.ndarray)
                and vecs.dtype == np.float32
                and vecs.flags.c_contiguous
            ):
                scores, ids = rerank_rows(queries, cand, vecs, k)
            else:
                scores, ids = exact_rerank(queries, cand, self._fetch, k)
        return scores, self.rows_of(ids)

    # -- persistence ---------------------------------------------------------------------------
    def write(self, index_path: Path, vectors_path: Path, rows_path: Path) -> None:
        """Write the codes, the live vectors in row order, and their rows (atomic files; the caller
        commits SQLite after). The in-memory index is renumbered to the written positions."""
        pending, _ = self._pending()
        if (
            not len(pending)
            and not self._removed
            and isinstance(self.vectors, RefineVectors)
            and self.vectors.path == Path(vectors_path)
        ):  # written there already (a bulk load): keep it
            self._write_codes(index_path, rows_path)
            return
        every = np.concatenate([self.rows, pending])
        alive = np.ones(len(every), bool)
        alive[np.fromiter(self._removed, np.int64, len(self._removed))] = False
        order = np.flatnonzero(alive)
        order = order[np.argsort(every[order], kind="stable")]
        chunk = 65536
        vectors = RefineVectors.write(
            vectors_path,
            (self._fetch(order[i : i + chunk]) for i in range(0, len(order), chunk)),
            len(order),
            self.d,
            self.cfg.vectors_dtype,
        )
        new_of_old = np.full(len(every), -1, np.int64)
        new_of_old[order] = np.arange(len(order))
        remap_ids(self.index, lambda ids: new_of_old[ids])
        self.rows, self.vectors = every[order], vectors
        self._added_rows, self._added_vecs, self._removed = [], [], set()
        self._write_codes(index_path, rows_path)

    def _write_codes(self, index_path: Path, rows_path: Path) -> None:
        with atomic_path(rows_path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, self.rows)
        with atomic_path(index_path) as tmp:
            faiss.write_index(self.index, str(tmp))

    @classmethod
    def read(cls, index_path: Path, vectors_path: Path, rows_path: Path, cfg: IndexConfig) -> CompressedStoreIndex:
        index, rows = faiss.read_index(str(index_path)), np.load(rows_path)
        if vectors_path.suffix == ".npy":  # written before RefineVectors: codes named by store row

            def positions(ids: np.ndarray) -> np.ndarray:
                pos, found = sorted_positions(rows, ids)
                if not found.all():
                    raise AnnError(f"{index_path}: ids {ids[~found][:3].tolist()} are not in {rows_path.name}")
                return pos

            remap_ids(index, positions)
            return cls(index, rows, np.load(vectors_path, mmap_mode="r"), cfg)
        return cls(index, rows, RefineVectors(vectors_path), cfg)

    @classmethod
    def from_flat(cls, flat: faiss.IndexIDMap2, cfg: IndexConfig) -> CompressedStoreIndex:
        """Train a compressed index on every vector of an exact ``IndexIDMap2`` and move them into it."""
        rows = faiss.vector_to_array(flat.id_map).astype(np.int64)
        vectors = flat.index.reconstruct_n(0, flat.ntotal) if flat.ntotal else np.zeros((0, flat.d), np.float32)
        order = np.argsort(rows)
        rows, vectors = rows[order], vectors[order]
        rng = np.random.default_rng(0)
        sample = vectors[np.sort(rng.choice(len(rows), min(len(rows), 100_000), replace=False))]
        index = make_index(flat.d, cfg, len(rows), sample)
        train_index(index, sample)
        for i in range(0, len(rows), 100_000):
            index.add_with_ids(vectors[i : i + 100_000], np.arange(i, min(i + 100_000, len(rows)), dtype=np.int64))
        return cls(index, rows, vectors, cfg)

    @property
    def bytes_per_vector(self) -> float:
        return bytes_per_vector(self.index)

    def describe(self) -> dict[str, object]:
        """What was built and how it searches: FAISS factory-style name, cells, nprobe, re-rank."""
        return {
            "index": index_name(self.index),
            "nlist": int(faiss.extract_index_ivf(self.index).nlist),
            "nprobe": int(faiss.extract_index_ivf(self.index).nprobe),
            "rerank": int(self.cfg.rerank),
            "vectors": self.vectors.dtype if isinstance(self.vectors, RefineVectors) else "float32",
        }
