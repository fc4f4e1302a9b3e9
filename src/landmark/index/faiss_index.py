"""What every FAISS index of a store shares: the error of a bad index setting, the search parameters
a config sets (``nprobe``), and an index's memory, bytes per vector and name."""

from __future__ import annotations

from typing import Any

import faiss

from ..errors import LandmarkError
from .config import IndexConfig

AUTO_NPROBE_SHARE = 0.07  # index.nprobe = 0: the share of cells visited per query


class AnnError(LandmarkError, ValueError):
    """A compressed index cannot be built or used as asked."""


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
    # Any: FAISS's SWIG stubs type downcasts as the base Index, without the IVF/PQ attributes (pq, nlist, ...)
    ivf: Any = faiss.downcast_index(faiss.extract_index_ivf(index))
    fast_scan = "fs" if isinstance(ivf, faiss.IndexIVFFastScan) else ""
    pq = f"PQ{ivf.pq.M}x{ivf.pq.nbits}{fast_scan}{'r' if ivf.by_residual else ''}"
    parts = [f"IVF{ivf.nlist}", pq]
    outer = faiss.downcast_index(index)
    if isinstance(outer, faiss.IndexPreTransform):
        chain: Any = outer.chain  # Any: a SWIG std::vector (with .at), typed as a list in the stubs
        first = faiss.downcast_VectorTransform(chain.at(0))
        parts.insert(0, f"{'PCAR' if isinstance(first, faiss.PCAMatrix) else 'RR'}{first.d_out}")
    return ",".join(parts)


def remap_ids(index: faiss.Index, mapping) -> None:
    """Rename, in place, every id held in the inverted lists of ``index``: ``ids <- mapping(ids)``.

    ``mapping`` takes and returns int64 arrays. The ids of an inverted list are a plain array (also
    for fast-scan lists, whose codes are packed in blocks), rewritten here through a NumPy view.
    """
    ivf: Any = faiss.extract_index_ivf(index)  # Any: the stubs lack DirectMap and type invlists as Optional
    if ivf.direct_map.type != ivf.direct_map.NoMap:
        raise AnnError("cannot rename the ids of an inverted file that keeps a direct map")
    lists = ivf.invlists
    for lst in range(ivf.nlist):
        size = lists.list_size(lst)
        if size:
            ids = faiss.rev_swig_ptr(lists.get_ids(lst), size)
            ids[:] = mapping(ids.copy())
