"""The full vectors a compressed index re-ranks its shortlist with: on disk in a FAISS flat file
(float16 by default, ``index.vectors_dtype``) that FAISS memory-maps, so only the pages touched are
read; FAISS's ``IndexRefine`` re-scores the candidates in C++ (:class:`RefineVectors`,
:class:`RerankedIndex`), or numpy does from an array (:func:`rerank_rows`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ..utils.io import atomic_path
from .config import VECTOR_DTYPES, IndexConfig
from .faiss_index import AnnError, bytes_per_vector, set_search_params


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
        sc = np.einsum("ij,j->i", fetch(cand), queries[i])  # no BLAS threads for a mat-vec
        top = np.argsort(-sc, kind="stable")[:k]
        scores_out[i, : len(top)] = sc[top]
        ids_out[i, : len(top)] = cand[top]
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
        faiss.knn_inner_products_by_idx(  # type: ignore[attr-defined]  # in faiss, missing from its stubs
            faiss.swig_ptr(queries),
            faiss.swig_ptr(array),
            faiss.swig_ptr(rows),
            d,
            q_n,
            n,
            width,
            k,
            faiss.swig_ptr(scores),
            faiss.swig_ptr(out),
            width,
        )
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
    def write(path: str | Path, chunks: Iterable[np.ndarray], n: int, dim: int, dtype=np.float32) -> DiskVectors:
        """Stream ``chunks`` into a new ``.npy`` of ``n x dim`` (atomically); returns it opened."""
        path = Path(path)
        with atomic_path(path) as tmp:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n, dim))
            i = 0
            for c in chunks:
                arr[i : i + len(c)] = c
                i += len(c)
            if i != n:
                raise AnnError(f"{path}: expected {n} vectors, got {i}")
            arr.flush()
            del arr
        return DiskVectors(path)


def flat_codes(dim: int, dtype: str) -> faiss.IndexFlatCodes:
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

    def refine(
        self,
        base: faiss.Index,
        queries: np.ndarray,
        k: int,
        shortlist: int,
        base_params: faiss.SearchParameters | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top-``k`` of ``base``'s ``shortlist`` best candidates per query, re-scored from these vectors.

        ``base``'s ids must be entries of this file. FAISS's ``IndexRefine`` does it in C++: one
        search of ``base`` (with ``base_params``: a selector, nprobe), then the candidates' vectors read
        and scored; when ``base`` holds fewer vectors than the file (some removed since it was
        written), the candidates are re-scored by :func:`exact_rerank` instead. Returns (scores, ids),
        -inf / -1 where fewer candidates exist.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if int(base.ntotal) != len(self):  # IndexRefine wants both to hold as many (e.g. some removed from base)
            _, ids = base.search(queries, max(k, shortlist), params=base_params)
            return exact_rerank(queries, ids, self, k)
        refined = faiss.IndexRefine(base, self.index)
        # FAISS truncates k * k_factor (in float): the half keeps the shortlist exactly max(k, shortlist) long
        # faiss's class wrappers take the fields as keyword arguments; its stubs do not
        params = faiss.IndexRefineSearchParameters(  # type: ignore[call-arg]
            k_factor=(max(k, shortlist) + 0.5) / k, base_index_params=base_params
        )
        scores, ids = refined.search(queries, k, params=params)
        scores[ids < 0] = -np.inf
        return scores, ids

    @staticmethod
    def write(
        path: str | Path, chunks: Iterable[np.ndarray], n: int, dim: int, dtype: str = "float16"
    ) -> RefineVectors:
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


def refined_search(
    base: faiss.Index, vectors: RefineVectors | DiskVectors, queries: np.ndarray, k: int, shortlist: int
) -> tuple[np.ndarray, np.ndarray]:
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
