"""Sharded indexes for collections larger than memory: shard files that share one trained quantizer,
each memory-mapped by FAISS (``IO_FLAG_MMAP``) and searched in turn, the results merged, so neither
the codes nor the full vectors need to fit in RAM at once."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import faiss
import numpy as np

from ..utils.io import atomic_path
from .config import IndexConfig
from .faiss_index import AnnError, memory_bytes, set_search_params
from .vectors import DiskVectors, RefineVectors, refined_search


class ShardedIndex:
    """Shard files of one trained compressed index, searched one at a time from memory-mapped files.

    Build with :meth:`build`: the trained (empty) index is cloned per shard, filled with that shard's
    vectors (ids are global row numbers) and written to ``shard-NNNN.faiss``. A search asks every
    shard for its shortlist (FAISS ``IndexShards``), keeps the best ``rerank`` of their union and
    re-ranks them from the full vectors.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        cfg: IndexConfig,
        vectors: RefineVectors | DiskVectors | None = None,
        mmap: bool = True,
    ):
        self.paths, self.cfg, self.vectors = [Path(p) for p in paths], cfg, vectors
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        self.shards = [faiss.read_index(str(p), flags) for p in self.paths]
        if not self.shards:
            raise AnnError("a sharded index needs at least one shard file")
        # one thread; ids kept as they are (the stubs lack the successive_ids argument)
        self.union = faiss.IndexShards(self.shards[0].d, False, False)  # type: ignore[call-arg]
        for s in self.shards:
            set_search_params(s, cfg)
            self.union.add_shard(s)

    @classmethod
    def build(
        cls,
        root: str | Path,
        trained: faiss.Index,
        chunks: Iterable[np.ndarray],
        shard_size: int,
        cfg: IndexConfig,
        vectors: RefineVectors | DiskVectors | None = None,
    ) -> ShardedIndex:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        current: faiss.Index | None = None
        start, filled = 0, 0
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
                current.add_with_ids(chunk[off : off + take], ids)
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
