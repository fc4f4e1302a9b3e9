"""Compressed FAISS indexes with exact re-ranking, and sharded indexes for collections larger than memory.

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
``IndexRefine`` re-scores them in C++ — see :class:`RefineVectors` and :class:`RerankedIndex`.

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

from .config import KINDS, VECTOR_DTYPES, IndexConfig
from ..errors import LandmarkError
from ..utils.io import atomic_path

AUTO_NPROBE_SHARE = 0.07          # index.nprobe = 0: the share of cells visited per query


class AnnError(LandmarkError, ValueError):
    """A compressed index cannot be built or used as asked."""


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


def nprobe_for(nlist: int, cfg: IndexConfig) -> int:
    """Cells visited per query: ``cfg.nprobe``, or with 0 about 7 % of the ``nlist`` cells.

    The share keeps the search's reach steady as the automatic ``nlist`` (about 4 sqrt(N)) grows with
    the collection; a fixed nprobe visits an ever smaller share. On the 1M benchmark
    (``benchmarks/ann.py``) 7 % (144 of 2,048 cells) is where recall@100 crosses 0.95 with its codes.
    """
    return int(cfg.nprobe) if cfg.nprobe > 0 else max(1, min(nlist, round(AUTO_NPROBE_SHARE * nlist)))


def set_search_params(index: faiss.Index, cfg: IndexConfig) -> None:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = nprobe_for(ivf.nlist, cfg)


def memory_bytes(index: faiss.Index) -> int:
    """The bytes FAISS holds for ``index`` (its serialised size: codes, ids, centroids, graph)."""
    return int(faiss.serialize_index(index).size)


def bytes_per_vector(index: faiss.Index) -> float:
    return memory_bytes(index) / max(1, index.ntotal)


def index_name(index: faiss.Index) -> str:
    """A compressed index in FAISS factory terms, e.g. ``PCAR256,IVF4096,PQ128x4fsr``."""
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    pq = f"PQ{ivf.pq.M}x{ivf.pq.nbits}{'fs' if isinstance(ivf, faiss.IndexIVFFastScan) else ''}{'r' if ivf.by_residual else ''}"
    parts = [f"IVF{ivf.nlist}", pq]
    outer = faiss.downcast_index(index)
    if isinstance(outer, faiss.IndexPreTransform):
        first = faiss.downcast_VectorTransform(outer.chain.at(0))
        parts.insert(0, f"{'PCAR' if isinstance(first, faiss.PCAMatrix) else 'RR'}{first.d_out}")
    return ",".join(parts)


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
    """Full-precision vectors in a ``.npy`` file, memory-mapped; row ``i`` holds id ``i``.

    The plain-array form (the vectors of ``benchmarks/ann.py``, from which its exact baseline and its
    :class:`RefineVectors` are made); :class:`RerankedIndex` and :class:`ShardedIndex` re-rank from
    either, FAISS re-ranks faster from :class:`RefineVectors`.
    """

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


def flat_codes(dim: int, dtype: str) -> faiss.Index:
    """An empty FAISS flat index holding ``dim``-d vectors as ``float16`` or ``float32`` (inner product)."""
    if dtype == "float32":
        return faiss.IndexFlatIP(dim)
    if dtype == "float16":
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    raise AnnError(f"index.vectors_dtype must be one of {VECTOR_DTYPES}, got {dtype!r}")


class RefineVectors:
    """The full vectors a compressed index re-ranks from: a FAISS flat-codes file, memory-mapped.

    Entry ``i`` is vector ``i``. ``float16`` (the default, ``index.vectors_dtype``) halves the bytes
    each re-scored candidate reads from the file, and FAISS converts and multiplies them with SIMD;
    scores differ from float32 ones by about 1e-4, so the re-rank is exact up to near-ties
    (``benchmarks/ann.py`` measures its recall against float32 exact search). FAISS maps the file
    (``IO_FLAG_MMAP_IFC``): only the pages of the candidates read are loaded.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.index = faiss.read_index(str(self.path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dtype(self) -> str:
        return "float32" if isinstance(self.index, faiss.IndexFlat) else "float16"

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """Vectors ``ids`` as a len(ids) x d float32 array."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return np.zeros((0, self.index.d), np.float32)
        if ids.min() < 0 or ids.max() >= len(self):
            raise AnnError(f"vector ids must be in [0, {len(self)}), got {int(ids.min())}..{int(ids.max())}")
        return self.index.reconstruct_batch(ids)

    def refine(self, base: faiss.Index, queries: np.ndarray, k: int, shortlist: int,
               base_params: faiss.SearchParameters | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The top-``k`` of ``base``'s ``shortlist`` best candidates per query, re-scored from these vectors.

        ``base``'s ids must be entries of this file. FAISS's ``IndexRefine`` does it in C++: one
        search of ``base`` (with ``base_params``: a selector, nprobe), then the candidates' vectors read
        and scored; when ``base`` holds fewer vectors than the file (some removed since it was
        written), the candidates are re-scored by :func:`exact_rerank` instead. Returns (scores, ids),
        -inf / -1 where fewer candidates exist.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if int(base.ntotal) != len(self):    # IndexRefine wants both to hold as many (e.g. some removed from base)
            _, ids = base.search(queries, max(k, shortlist), params=base_params)
            return exact_rerank(queries, ids, self, k)
        refined = faiss.IndexRefine(base, self.index)
        # FAISS truncates k * k_factor (in float): the half keeps the shortlist exactly max(k, shortlist) long
        params = faiss.IndexRefineSearchParameters(k_factor=(max(k, shortlist) + 0.5) / k, base_index_params=base_params)
        scores, ids = refined.search(queries, k, params=params)
        scores[ids < 0] = -np.inf
        return scores, ids

    @staticmethod
    def write(path: str | Path, chunks: Iterable[np.ndarray], n: int, dim: int, dtype: str = "float16") -> "RefineVectors":
        """Stream ``chunks`` (``n`` vectors in all) into a new file (atomically); returns it opened.

        FAISS writes a flat-codes index as its header (which holds ``ntotal``) followed by its codes
        as one array: ``<uint64 count><bytes>``, the count in floats for float32, in bytes otherwise.
        The header is FAISS's own, for ``n`` vectors; the codes are encoded chunk by chunk after it,
        so no more than a chunk is in memory (the tests check the file is byte for byte FAISS's).
        """
        path = Path(path)
        codes = flat_codes(dim, dtype)
        unit = 4 if isinstance(codes, faiss.IndexFlat) else 1
        codes.ntotal = n
        head = faiss.serialize_index(codes)
        if head[-8:].view(np.uint64)[0] != 0:
            raise AnnError(f"unexpected FAISS layout for {type(codes).__name__}")
        head[-8:] = np.array([n * codes.code_size // unit], np.uint64).view(np.uint8)
        with atomic_path(path) as tmp:
            written = 0
            with open(tmp, "wb") as fh:
                fh.write(head.tobytes())
                for c in chunks:
                    c = np.ascontiguousarray(c, dtype=np.float32)
                    written += len(c)
                    if written > n:
                        raise AnnError(f"{path}: more than the {n} vectors announced")
                    fh.write(codes.sa_encode(c).tobytes())
            if written != n:
                raise AnnError(f"{path}: expected {n} vectors, got {written}")
        return RefineVectors(path)


def refined_search(base: faiss.Index, vectors: RefineVectors | DiskVectors, queries: np.ndarray, k: int,
                   shortlist: int) -> tuple[np.ndarray, np.ndarray]:
    """``base``'s ``shortlist`` candidates per query, re-ranked from ``vectors`` (ids = their entries)."""
    if isinstance(vectors, RefineVectors):
        return vectors.refine(base, queries, k, shortlist)
    _, ids = base.search(queries, max(k, shortlist))
    return vectors.rerank(queries, ids, k)


class RerankedIndex:
    """A compressed index (in memory) plus the full vectors on disk for re-ranking its shortlist."""

    def __init__(self, index: faiss.Index, vectors: RefineVectors | DiskVectors | None, cfg: IndexConfig):
        self.index, self.vectors, self.cfg = index, vectors, cfg
        set_search_params(index, cfg)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.vectors is None or not self.cfg.rerank:
            return self.index.search(queries, k)
        return refined_search(self.index, self.vectors, queries, k, self.cfg.rerank)

    @property
    def bytes_per_vector(self) -> float:
        return bytes_per_vector(self.index)


class ShardedIndex:
    """Shard files of one trained compressed index, searched one at a time from memory-mapped files.

    Build with :meth:`build`: the trained (empty) index is cloned per shard, filled with that shard's
    vectors (ids are global row numbers) and written to ``shard-NNNN.faiss``. A search asks every
    shard for its shortlist (FAISS ``IndexShards``), keeps the best ``rerank`` of their union and
    re-ranks them from the full vectors.
    """

    def __init__(self, paths: Sequence[Path], cfg: IndexConfig, vectors: RefineVectors | DiskVectors | None = None,
                 mmap: bool = True):
        self.paths, self.cfg, self.vectors = [Path(p) for p in paths], cfg, vectors
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        self.shards = [faiss.read_index(str(p), flags) for p in self.paths]
        if not self.shards:
            raise AnnError("a sharded index needs at least one shard file")
        self.union = faiss.IndexShards(self.shards[0].d, False, False)   # one thread; ids kept as they are
        for s in self.shards:
            set_search_params(s, cfg)
            self.union.add_shard(s)

    @classmethod
    def build(cls, root: str | Path, trained: faiss.Index, chunks: Iterable[np.ndarray], shard_size: int,
              cfg: IndexConfig, vectors: RefineVectors | DiskVectors | None = None) -> "ShardedIndex":
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
        if self.vectors is None or not self.cfg.rerank:
            scores, ids = self.union.search(queries, k)
        else:
            scores, ids = refined_search(self.union, self.vectors, queries, k, self.cfg.rerank)
        return np.where(ids >= 0, scores, -np.inf).astype(np.float32), ids

    def resident_bytes_per_vector(self) -> float:
        """Bytes of the largest shard per vector of the whole collection: what one search step holds."""
        return max(memory_bytes(s) for s in self.shards) / max(1, self.ntotal)


def remap_ids(index: faiss.Index, mapping) -> None:
    """Rename, in place, every id held in the inverted lists of ``index``: ``ids <- mapping(ids)``.

    ``mapping`` takes and returns int64 arrays. The ids of an inverted list are a plain array (also
    for fast-scan lists, whose codes are packed in blocks), rewritten here through a NumPy view.
    """
    ivf = faiss.extract_index_ivf(index)
    if ivf.direct_map.type != faiss.DirectMap.NoMap:
        raise AnnError("cannot rename the ids of an inverted file that keeps a direct map")
    lists = ivf.invlists
    for lst in range(ivf.nlist):
        size = lists.list_size(lst)
        if size:
            ids = faiss.rev_swig_ptr(lists.get_ids(lst), size)
            ids[:] = mapping(ids.copy())


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
        self.rows = np.asarray(rows, np.int64)           # store row of each written position (sorted)
        self.vectors = vectors                           # aligned with rows: a RefineVectors once written
        self._added_rows: list[np.ndarray] = []          # vectors added since, at positions len(rows) + j
        self._added_vecs: list[np.ndarray] = []
        self._removed: set[int] = set()                  # positions removed since
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
            last = {int(r): len(self.rows) + j for j, r in enumerate(pending) if len(self.rows) + j not in self._removed}
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
            out[written] = self.vectors(ids[written]) if isinstance(self.vectors, RefineVectors) \
                else self.vectors[ids[written]]
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
            sp = faiss.SearchParametersIVF(sel=params.sel, nprobe=faiss.extract_index_ivf(self.index).nprobe)
        if not self.cfg.rerank:
            scores, ids = self.index.search(queries, k, params=sp)
        elif not self._added_rows and isinstance(self.vectors, RefineVectors):
            scores, ids = self.vectors.refine(self.index, queries, k, self.cfg.rerank, sp)
        else:
            _, cand = self.index.search(queries, max(k, self.cfg.rerank), params=sp)
            vecs = self.vectors
            if not self._added_rows and isinstance(vecs, np.ndarray) and vecs.dtype == np.float32 and vecs.flags.c_contiguous:
                scores, ids = rerank_rows(queries, cand, vecs, k)
            else:
                scores, ids = exact_rerank(queries, cand, self._fetch, k)
        return scores, self.rows_of(ids)

    # -- persistence ---------------------------------------------------------------------------
    def write(self, index_path: Path, vectors_path: Path, rows_path: Path) -> None:
        """Write the codes, the live vectors in row order, and their rows (atomic files; the caller
        commits SQLite after). The in-memory index is renumbered to the written positions."""
        pending, _ = self._pending()
        if (not len(pending) and not self._removed and isinstance(self.vectors, RefineVectors)
                and self.vectors.path == Path(vectors_path)):    # written there already (a bulk load): keep it
            self._write_codes(index_path, rows_path)
            return
        every = np.concatenate([self.rows, pending])
        alive = np.ones(len(every), bool)
        alive[np.fromiter(self._removed, np.int64, len(self._removed))] = False
        order = np.flatnonzero(alive)
        order = order[np.argsort(every[order], kind="stable")]
        chunk = 65536
        vectors = RefineVectors.write(vectors_path, (self._fetch(order[i:i + chunk]) for i in range(0, len(order), chunk)),
                                      len(order), self.d, self.cfg.vectors_dtype)
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
    def read(cls, index_path: Path, vectors_path: Path, rows_path: Path, cfg: IndexConfig) -> "CompressedStoreIndex":
        index, rows = faiss.read_index(str(index_path)), np.load(rows_path)
        if vectors_path.suffix == ".npy":      # written before RefineVectors: codes named by store row
            def positions(ids: np.ndarray) -> np.ndarray:
                pos, found = sorted_positions(rows, ids)
                if not found.all():
                    raise AnnError(f"{index_path}: ids {ids[~found][:3].tolist()} are not in {rows_path.name}")
                return pos
            remap_ids(index, positions)
            return cls(index, rows, np.load(vectors_path, mmap_mode="r"), cfg)
        return cls(index, rows, RefineVectors(vectors_path), cfg)

    @classmethod
    def from_flat(cls, flat: faiss.Index, cfg: IndexConfig) -> "CompressedStoreIndex":
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
            index.add_with_ids(vectors[i:i + 100_000], np.arange(i, min(i + 100_000, len(rows)), dtype=np.int64))
        return cls(index, rows, vectors, cfg)

    @property
    def bytes_per_vector(self) -> float:
        return bytes_per_vector(self.index)

    def describe(self) -> dict[str, object]:
        """What was built and how it searches: FAISS factory-style name, cells, nprobe, re-rank."""
        return {"index": index_name(self.index), "nlist": int(faiss.extract_index_ivf(self.index).nlist),
                "nprobe": int(faiss.extract_index_ivf(self.index).nprobe), "rerank": int(self.cfg.rerank),
                "vectors": self.vectors.dtype if isinstance(self.vectors, RefineVectors) else "float32"}
