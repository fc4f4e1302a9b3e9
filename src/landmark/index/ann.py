"""Compressed FAISS indexes with exact re-ranking, and sharded indexes for collections larger than memory.

``ivfpq``: an inverted file of ``nlist`` cells over product-quantised codes of ``pq_m`` bytes (FAISS
``RR<d>,IVF<nlist>,PQ<2 pq_m>x4fsr``: a random rotation that spreads the PCA'd variance evenly over
the PQ sub-spaces — or, with ``pca_dim``, a rotating PCA to fewer dimensions — then 4-bit
"fast-scan" PQ of each vector's residual from its cell centre, which trains in seconds and scans
codes with SIMD). In memory per vector: the code plus its 8-byte id (+ the shared centroids). (HNSW was
left out: its graph links alone cost 2 * M * 4 bytes per vector, over the 128-byte budget, and it
cannot remove vectors.)

The compressed index proposes a shortlist of ``rerank`` candidates per query; they are re-scored
exactly against the full-precision vectors, which live **on disk** (a ``.npy`` file opened with
``mmap_mode="r"``, so only the pages touched are read) — see :class:`RerankedIndex`.

:class:`ShardedIndex` splits a collection into shard files that share one trained quantizer; each
shard is memory-mapped by FAISS (``IO_FLAG_MMAP``) and searched in turn, the results merged, so
neither the codes nor the full vectors need to fit in RAM at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import faiss
import numpy as np

from ..config import IndexConfig
from ..utils.io import atomic_path

KINDS = ("flat", "ivfpq")


class AnnError(ValueError):
    """A compressed index cannot be built or used as asked."""


def default_nlist(n: int) -> int:
    """About ``4 sqrt(N)`` cells, a power of two, with at least 39 training vectors per cell."""
    if n < 39 * 4:
        return 1
    target = 4 * math.sqrt(n)
    nlist = 2 ** int(round(math.log2(target)))
    return int(max(1, min(nlist, n // 39)))


def make_index(dim: int, cfg: IndexConfig, n_train: int) -> faiss.Index:
    """An untrained compressed index for ``dim``-d unit vectors (inner product)."""
    coded = cfg.pca_dim or dim
    if coded > dim or coded % (2 * cfg.pq_m):
        raise AnnError(f"2 * pq_m = {2 * cfg.pq_m} 4-bit sub-quantizers must divide the coded dimension {coded} (<= {dim})")
    if cfg.kind == "ivfpq":
        nlist = cfg.nlist or default_nlist(n_train)
        pre = f"PCAR{coded}" if cfg.pca_dim else f"RR{dim}"
        index = faiss.index_factory(dim, f"{pre},IVF{nlist},PQ{2 * cfg.pq_m}x4fs{'r' if cfg.residual else ''}",
                                    faiss.METRIC_INNER_PRODUCT)
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
            raise AnnError(f"training an IVF index of {ivf.nlist} cells needs at least {min_n} vectors, got {len(sample)}")
    index.train(sample)
    return index


def set_search_params(index: faiss.Index, cfg: IndexConfig) -> None:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = cfg.nprobe


def memory_bytes(index: faiss.Index) -> int:
    """The bytes FAISS holds for ``index`` (its serialised size: codes, ids, centroids, graph)."""
    return int(faiss.serialize_index(index).size)


def bytes_per_vector(index: faiss.Index) -> float:
    return memory_bytes(index) / max(1, index.ntotal)


def exact_rerank(queries: np.ndarray, ids: np.ndarray, fetch, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-score each query's candidate ``ids`` (Q x S, -1 = none) exactly; ``fetch(ids) -> vectors``.

    One query at a time, so at most S full vectors are in memory at once (the general path: see
    :func:`rerank_rows` for candidates that are rows of one array).
    Returns the top-``k`` (scores, ids), -inf / -1 where fewer candidates exist.
    """
    q_n = len(ids)
    scores_out = np.full((q_n, k), -np.inf, np.float32)
    ids_out = np.full((q_n, k), -1, np.int64)
    for i in range(q_n):
        cand = np.unique(ids[i][ids[i] >= 0])
        if not len(cand):
            continue
        sc = np.einsum("ij,j->i", fetch(cand), queries[i])   # no BLAS threads for a mat-vec
        top = np.argsort(-sc, kind="stable")[:k]
        scores_out[i, :len(top)] = sc[top]
        ids_out[i, :len(top)] = cand[top]
    return scores_out, ids_out


def sorted_positions(sorted_ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each of ``wanted`` in the ascending ``sorted_ids``, and whether it is there at all."""
    wanted = np.asarray(wanted, np.int64)
    if not len(sorted_ids):
        return np.zeros(wanted.shape, np.int64), np.zeros(wanted.shape, bool)
    pos = np.minimum(np.searchsorted(sorted_ids, wanted), len(sorted_ids) - 1)
    return pos, sorted_ids[pos] == wanted


def rerank_rows(queries: np.ndarray, rows: np.ndarray, array: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of each query among its candidate ``rows`` (Q x S, -1 = none) of ``array`` (N x D).

    The same result as :func:`exact_rerank`, computed by FAISS in C++ (``knn_inner_products_by_idx``,
    OpenMP over queries) straight from ``array``, which may be a read-only memory map: only the
    candidates' pages are read. Returns (scores, rows), -inf / -1 where fewer candidates exist.
    """
    queries = np.ascontiguousarray(queries, np.float32)
    if array.dtype != np.float32 or not array.flags.c_contiguous or array.ndim != 2:
        raise AnnError("rerank_rows needs a C-contiguous N x D float32 array")
    q_n, width = rows.shape
    n, d = array.shape
    if queries.shape != (q_n, d):
        raise AnnError(f"queries {queries.shape} do not match {q_n} candidate lists of {d}-d vectors")
    # FAISS stops reading a candidate list at its first -1: move the -1s (IVF padding) to the end.
    rows = np.asarray(rows, np.int64)
    valid = rows >= 0
    if not valid.all() and (valid[:, 1:] > valid[:, :-1]).any():
        rows = np.take_along_axis(rows, np.argsort(~valid, axis=1, kind="stable"), 1)
    if rows.size and rows.max() >= n:
        raise AnnError(f"candidate row {int(rows.max())} is outside the {n} stored vectors")
    rows = np.ascontiguousarray(rows)
    scores = np.empty((q_n, k), np.float32)
    out = np.empty((q_n, k), np.int64)
    if q_n and width and n:
        faiss.knn_inner_products_by_idx(faiss.swig_ptr(queries), faiss.swig_ptr(array), faiss.swig_ptr(rows),
                                        d, q_n, n, width, k, faiss.swig_ptr(scores), faiss.swig_ptr(out), width)
    else:
        scores.fill(-np.inf)
        out.fill(-1)
    scores[out < 0] = -np.inf
    return scores, out


@dataclass
class DiskVectors:
    """Full-precision vectors on disk (``.npy``, memory-mapped); row ``i`` holds id ``i``."""

    path: Path

    def __post_init__(self) -> None:
        self.array = np.load(self.path, mmap_mode="r")

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` as float32 (pass them sorted: reads then go forward through the file)."""
        return np.asarray(self.array[np.asarray(ids, dtype=np.int64)], dtype=np.float32)

    def rerank(self, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` among each query's candidate ``ids`` (Q x S, -1 = none)."""
        if self.array.dtype == np.float32:
            return rerank_rows(queries, ids, self.array, k)
        return exact_rerank(queries, ids, self, k)

    @staticmethod
    def write(path: str | Path, chunks: Iterable[np.ndarray], n: int, dim: int, dtype=np.float32) -> "DiskVectors":
        """Stream ``chunks`` into a new ``.npy`` of ``n x dim`` (atomically); returns it opened."""
        path = Path(path)
        with atomic_path(path) as tmp:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n, dim))
            i = 0
            for c in chunks:
                arr[i:i + len(c)] = c
                i += len(c)
            if i != n:
                raise AnnError(f"{path}: expected {n} vectors, got {i}")
            arr.flush()
            del arr
        return DiskVectors(path)


class RerankedIndex:
    """A compressed index (in memory) plus the full vectors on disk for exact re-ranking of its shortlist."""

    def __init__(self, index: faiss.Index, vectors: DiskVectors | None, cfg: IndexConfig):
        self.index, self.vectors, self.cfg = index, vectors, cfg
        set_search_params(index, cfg)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        shortlist = max(k, self.cfg.rerank)
        scores, ids = self.index.search(queries, shortlist if self.vectors is not None and self.cfg.rerank else k)
        if self.vectors is None or not self.cfg.rerank:
            return scores, ids
        return self.vectors.rerank(queries, ids, k)

    @property
    def bytes_per_vector(self) -> float:
        return bytes_per_vector(self.index)


class ShardedIndex:
    """Shard files of one trained compressed index, searched one at a time from memory-mapped files.

    Build with :meth:`build`: the trained (empty) index is cloned per shard, filled with that shard's
    vectors (ids are global row numbers) and written to ``shard-NNNN.faiss``.
    """

    def __init__(self, paths: Sequence[Path], cfg: IndexConfig, vectors: DiskVectors | None = None, mmap: bool = True):
        self.paths, self.cfg, self.vectors = [Path(p) for p in paths], cfg, vectors
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        self.shards = [faiss.read_index(str(p), flags) for p in self.paths]
        for s in self.shards:
            set_search_params(s, cfg)

    @classmethod
    def build(cls, root: str | Path, trained: faiss.Index, chunks: Iterable[np.ndarray], shard_size: int,
              cfg: IndexConfig, vectors: DiskVectors | None = None) -> "ShardedIndex":
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        paths, current, start, filled = [], None, 0, 0
        template = faiss.serialize_index(trained)

        def flush():
            path = root / f"shard-{len(paths):04d}.faiss"
            with atomic_path(path) as tmp:
                faiss.write_index(current, str(tmp))
            paths.append(path)

        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype=np.float32)
            off = 0
            while off < len(chunk):
                if current is None:
                    current, filled = faiss.deserialize_index(template), 0
                take = min(shard_size - filled, len(chunk) - off)
                ids = np.arange(start, start + take, dtype=np.int64)
                current.add_with_ids(chunk[off:off + take], ids)
                start, off, filled = start + take, off + take, filled + take
                if filled == shard_size:
                    flush()
                    current = None
        if current is not None and filled:
            flush()
        return cls(paths, cfg, vectors)

    @property
    def ntotal(self) -> int:
        return sum(int(s.ntotal) for s in self.shards)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        shortlist = max(k, self.cfg.rerank) if self.vectors is not None and self.cfg.rerank else k
        all_s, all_i = [], []
        for s in self.shards:
            sc, ids = s.search(queries, shortlist)
            all_s.append(sc)
            all_i.append(ids)
        scores, ids = np.concatenate(all_s, axis=1), np.concatenate(all_i, axis=1)
        scores = np.where(ids >= 0, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :shortlist]
        scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
        if self.vectors is None or not self.cfg.rerank:
            return scores[:, :k], ids[:, :k]
        return self.vectors.rerank(queries, ids, k)

    def resident_bytes_per_vector(self) -> float:
        """Bytes of the largest shard per vector of the whole collection: what one search step holds."""
        return max(memory_bytes(s) for s in self.shards) / max(1, self.ntotal)


class CompressedStoreIndex:
    """The store's index once it is compressed: FAISS codes in memory, full vectors on disk.

    It answers the calls :class:`~landmark.index.store.Store` makes on a FAISS ``IndexIDMap2``
    (``add_with_ids``, ``remove_ids``, ``search``, ``reconstruct``, ``ntotal``, ``d``) so the store's
    commit protocol is unchanged: :meth:`write` produces ``global-<g>.faiss`` (the codes) plus
    ``vectors-<g>.npy`` / ``rows-<g>.npy`` (the full vectors for exact re-ranking) before SQLite
    commits generation ``g``.
    """

    def __init__(self, index: faiss.Index, rows: np.ndarray, vectors: np.ndarray, cfg: IndexConfig):
        self.index, self.cfg = index, cfg
        self.rows = np.asarray(rows, np.int64)           # sorted store rows
        self.vectors = vectors                           # aligned with rows; a memmap once written
        self._added_rows: list[np.ndarray] = []
        self._added_vecs: list[np.ndarray] = []
        self._removed: set[int] = set()
        set_search_params(index, cfg)
        self.d = int(index.d)

    # -- FAISS-like surface used by the store ---------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add_with_ids(self, x: np.ndarray, ids: np.ndarray) -> None:
        x = np.ascontiguousarray(x, np.float32)
        ids = np.asarray(ids, np.int64)
        self.index.add_with_ids(x, ids)
        self._added_rows.append(ids)
        self._added_vecs.append(x)
        self._removed.difference_update(ids.tolist())

    def remove_ids(self, ids: np.ndarray) -> int:
        ids = np.asarray(ids, np.int64)
        self._removed.update(ids.tolist())
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))

    def _positions(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each store row sits in the written vectors, and whether it is there at all."""
        return sorted_positions(self.rows, rows)

    def _fetch(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), self.d), np.float32)
        pos, inside = self._positions(rows)
        if inside.any():
            out[inside] = self.vectors[pos[inside]]
        if (~inside).any():
            added_rows = np.concatenate(self._added_rows)
            added_vecs = np.concatenate(self._added_vecs)
            last = {int(r): i for i, r in enumerate(added_rows)}
            for j in np.flatnonzero(~inside):
                out[j] = added_vecs[last[int(rows[j])]]
        return out

    def reconstruct(self, row: int) -> np.ndarray:
        return self._fetch(np.array([row]))[0]

    def reconstruct_rows(self, rows: np.ndarray) -> np.ndarray:
        """The full vectors of store ``rows`` (len(rows) x d), read in one pass."""
        return self._fetch(rows)

    def search(self, queries: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, np.float32)
        shortlist = max(k, self.cfg.rerank) if self.cfg.rerank else k
        sp = None
        if params is not None and params.sel is not None:
            sp = faiss.SearchParametersIVF(sel=params.sel, nprobe=self.cfg.nprobe)
        scores, ids = self.index.search(queries, shortlist, params=sp)
        if not self.cfg.rerank:
            return scores, ids
        return self._rerank(queries, ids, k)

    def _rerank(self, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact re-ranking: in C++ from the written vectors, unless a candidate was added since."""
        valid = ids >= 0
        pos, inside = self._positions(ids)
        vecs = self.vectors
        if (inside | ~valid).all() and isinstance(vecs, np.ndarray) and vecs.dtype == np.float32 and vecs.flags.c_contiguous:
            scores, got = rerank_rows(queries, np.where(valid, pos, -1), vecs, k)
            return scores, np.where(got >= 0, self.rows[np.maximum(got, 0)], -1)
        return exact_rerank(queries, ids, self._fetch, k)

    # -- persistence ---------------------------------------------------------------------------
    def write(self, index_path: Path, vectors_path: Path, rows_path: Path) -> None:
        """Write the codes and the merged full vectors (atomic files; the caller commits SQLite after)."""
        rows = [self.rows]
        if self._added_rows:
            rows.append(np.concatenate(self._added_rows))
        all_rows = np.unique(np.concatenate(rows))
        if self._removed:
            all_rows = all_rows[~np.isin(all_rows, np.fromiter(self._removed, np.int64))]
        chunk = 65536
        DiskVectors.write(vectors_path, (self._fetch(all_rows[i:i + chunk]) for i in range(0, len(all_rows), chunk)),
                          len(all_rows), self.d)
        with atomic_path(rows_path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, all_rows)
        with atomic_path(index_path) as tmp:
            faiss.write_index(self.index, str(tmp))

    @classmethod
    def read(cls, index_path: Path, vectors_path: Path, rows_path: Path, cfg: IndexConfig) -> "CompressedStoreIndex":
        return cls(faiss.read_index(str(index_path)), np.load(rows_path), np.load(vectors_path, mmap_mode="r"), cfg)

    @classmethod
    def from_flat(cls, flat: faiss.Index, cfg: IndexConfig) -> "CompressedStoreIndex":
        """Train a compressed index on every vector of an exact ``IndexIDMap2`` and move them into it."""
        rows = faiss.vector_to_array(flat.id_map).astype(np.int64)
        vectors = flat.index.reconstruct_n(0, flat.ntotal) if flat.ntotal else np.zeros((0, flat.d), np.float32)
        order = np.argsort(rows)
        rows, vectors = rows[order], vectors[order]
        index = make_index(flat.d, cfg, len(rows))
        rng = np.random.default_rng(0)
        sample = vectors[np.sort(rng.choice(len(rows), min(len(rows), 100_000), replace=False))]
        train_index(index, sample)
        for i in range(0, len(rows), 100_000):
            index.add_with_ids(vectors[i:i + 100_000], rows[i:i + 100_000])
        return cls(index, rows, vectors, cfg)

    @property
    def bytes_per_vector(self) -> float:
        return bytes_per_vector(self.index)
