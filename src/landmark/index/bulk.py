"""A compressed store filled shard by shard: millions of photos without all their vectors in RAM.

:func:`bulk_load` trains the store's IVF-PQ index (``index.kind=ivfpq``) once, on a sample, then
reads the photos one shard at a time (a slice of a ``.npy``, a chunk of an extraction): each shard's
vectors are encoded into the index, appended to the on-disk full vectors (``vectors-<g>.faiss``,
what searches re-rank from) and their metadata inserted into SQLite as one batch. What stays in
memory is the index's codes and ids (what a search holds anyway) plus one shard; the float vectors
of the whole collection never are. Everything is one generation of the store's commit protocol: a
killed load leaves the store as it was (empty), and the next run starts it again.

(``Store.add`` is the incremental path: past ``index.train_min`` it trains on what it holds and
rewrites the vectors file at every commit, which is what a batched import of millions would repeat.)

>>> store = Store.create(root, config, signature)                            # doctest: +SKIP
>>> sample = sample_rows(np.load("vectors.npy", mmap_mode="r"), train_size(len(ids), config.index))
>>> bulk_load(store, npy_shards("vectors.npy", ids, 100_000), len(ids), sample)
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import IndexConfig
from ..utils.progress import progress_bar
from .ann import CompressedStoreIndex, default_nlist, make_index, train_index
from .files import vectors_name
from .store import Store, StoreError
from .vectors import RefineVectors

TRAIN_SAMPLE = 100_000  # the fewest vectors the quantizers are trained on (more for many cells: train_size)


@dataclass
class Shard:
    """Photos of one shard: ids and their unit-norm vectors (N x dim), optionally labels and paths."""

    ids: Sequence[str]
    vectors: np.ndarray
    landmark_ids: Sequence[int | None] | None = None
    paths: Sequence[str | None] | None = None


def train_size(n: int, cfg: IndexConfig) -> int:
    """How many of ``n`` vectors to train on: 40 per IVF cell (FAISS asks for 39), at least ``TRAIN_SAMPLE``."""
    return min(n, max(TRAIN_SAMPLE, 40 * (cfg.nlist or default_nlist(n))))


def sample_rows(vectors: np.ndarray, n: int = TRAIN_SAMPLE, seed: int = 0) -> np.ndarray:
    """``n`` rows of ``vectors`` (an array or a memory map) drawn at random, read in file order."""
    take = np.sort(np.random.default_rng(seed).choice(len(vectors), min(n, len(vectors)), replace=False))
    return np.ascontiguousarray(vectors[take], dtype=np.float32)


def sample_shards(shards: Iterable[Shard], total: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` of the ``total`` rows of ``shards`` drawn at random, gathered in one pass over them."""
    take = np.sort(np.random.default_rng(seed).choice(total, min(n, total), replace=False))
    out, first = [], 0
    for shard in shards:
        m = len(shard.ids)
        lo, hi = np.searchsorted(take, [first, first + m])
        out.append(np.asarray(shard.vectors[take[lo:hi] - first], dtype=np.float32))
        first += m
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def npy_shards(
    path: str | Path,
    ids: Sequence[str],
    size: int,
    *,
    landmark_ids: Sequence[int | None] | None = None,
    paths: Sequence[str | None] | None = None,
) -> Iterator[Shard]:
    """Shards of ``size`` rows of the 2-d ``.npy`` at ``path``, read with plain file reads (no memory
    map: the pages read stay the OS's file cache, not this process's memory)."""
    head = np.load(path, mmap_mode="r", allow_pickle=False)  # the header only: shape, dtype, data offset
    shape, dtype, offset, c_order = head.shape, head.dtype, head.offset, head.flags.c_contiguous
    del head
    if len(shape) != 2 or not c_order:
        raise StoreError(f"{path}: expected a C-ordered N x D array, got shape {shape}")
    with open(path, "rb") as fh:
        fh.seek(offset)
        if shape[0] != len(ids):
            raise StoreError(f"{path}: {shape[0]} rows for {len(ids)} ids")
        for lo in range(0, shape[0], size):
            n = min(size, shape[0] - lo)
            rows = np.fromfile(fh, dtype=dtype, count=n * shape[1]).reshape(n, shape[1])
            yield Shard(
                ids[lo : lo + n],
                rows,
                None if landmark_ids is None else landmark_ids[lo : lo + n],
                None if paths is None else paths[lo : lo + n],
            )


def array_shards(
    vectors: np.ndarray,
    ids: Sequence[str],
    size: int,
    *,
    landmark_ids: Sequence[int | None] | None = None,
    paths: Sequence[str | None] | None = None,
) -> Iterator[Shard]:
    """Shards of ``size`` rows of an array (or memory map) and its ids."""
    for lo in range(0, len(ids), size):
        part = slice(lo, min(len(ids), lo + size))
        yield Shard(
            ids[part],
            vectors[part],
            None if landmark_ids is None else landmark_ids[part],
            None if paths is None else paths[part],
        )


def bulk_load(
    store: Store,
    shards: Iterable[Shard],
    n: int,
    sample: np.ndarray,
    *,
    split: str = "index",
    progress: bool | None = None,
) -> int:
    """Fill the empty ``store`` (``index.kind`` compressed) with ``n`` photos given shard by shard;
    the index is trained on ``sample`` (rows like the shards', e.g. :func:`sample_rows`). One commit;
    returns the number of photos added. Vectors must be finite and unit-norm, ids new and unique."""
    cfg = store.config.index
    if cfg.kind == "flat":
        raise StoreError("a bulk load builds a compressed index: set index.kind=ivfpq")
    if len(store):
        raise StoreError(f"{store.root} already holds {len(store)} photos: a bulk load fills an empty store")
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    index = make_index(store.dim, cfg, n, sample)
    train_index(index, sample)
    del sample
    now = time.time()

    with store.write() as w, progress_bar(f"bulk load {split}", total=n, enabled=progress) as bar:

        def encoded() -> Iterator[np.ndarray]:
            done = 0
            for shard in shards:
                x = np.ascontiguousarray(shard.vectors, dtype=np.float32)
                m = len(shard.ids)
                if x.shape != (m, store.dim):
                    raise StoreError(f"shard at photo {done}: expected {m} x {store.dim} vectors, got {x.shape}")
                _check_unit(x, done, shard.ids)
                labels = shard.landmark_ids if shard.landmark_ids is not None else [None] * m
                paths = shard.paths if shard.paths is not None else [None] * m
                index.add_with_ids(x, np.arange(done, done + m, dtype=np.int64))  # position = row - 1
                try:
                    w.conn.executemany(
                        "INSERT INTO images (row, key, path, landmark_id, split, added_at) VALUES (?,?,?,?,?,?)",
                        [
                            (
                                done + j + 1,
                                k,
                                None if p is None else str(p),
                                None if lab is None else int(lab),
                                split,
                                now,
                            )
                            for j, (k, p, lab) in enumerate(zip(shard.ids, paths, labels))
                        ],
                    )
                except sqlite3.IntegrityError as exc:
                    raise StoreError(f"shard at photo {done}: an id repeats ({exc})") from None
                done += m
                bar.advance(m)
                yield x

        # the next generation's vectors file, written as the shards come: the commit then keeps it as it is
        vectors = RefineVectors.write(
            store.root / vectors_name(w.generation), encoded(), n, store.dim, cfg.vectors_dtype
        )
        w.index = CompressedStoreIndex(index, np.arange(1, n + 1, dtype=np.int64), vectors, cfg)
    return n


def bulk_import(
    store: Store,
    vectors: np.ndarray,
    ids: Sequence[str],
    *,
    landmark_ids: Sequence[int | None] | None = None,
    paths: Sequence[str | None] | None = None,
    split: str = "index",
    shard_size: int = 100_000,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    progress: bool | None = None,
) -> int:
    """:func:`bulk_load` of an array (or memory map) of unit-norm rows, ``shard_size`` rows at a time;
    ``transform`` maps them into the store's space first (e.g. its whitening). Returns the number added."""
    if len(vectors) != len(ids):
        raise StoreError(f"expected {len(ids)} vector rows (one per id), got {len(vectors)}")

    def mapped(x: np.ndarray, first: int) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if transform is None:  # bulk_load checks the rows it stores
            return x
        _check_unit(x, first, ids[first : first + len(x)])  # the rows as given, before they are mapped
        return transform(x)

    shards = (
        Shard(s.ids, mapped(s.vectors, i * shard_size), s.landmark_ids, s.paths)
        for i, s in enumerate(array_shards(vectors, ids, shard_size, landmark_ids=landmark_ids, paths=paths))
    )
    sample = sample_rows(vectors, train_size(len(ids), store.config.index))
    sample = sample[np.isfinite(sample).all(axis=1)]  # a bad row is reported by its shard, with its id
    sample = sample if transform is None else transform(sample)
    return bulk_load(store, shards, len(ids), sample, split=split, progress=progress)


def _check_unit(x: np.ndarray, first: int, ids: Sequence[str]) -> None:
    """Refuse rows that are not finite unit vectors; ``ids`` are the rows' own, ``first`` the first's number."""
    norms = np.linalg.norm(x, axis=1)
    if not (np.isfinite(norms).all() and np.allclose(norms, 1.0, atol=1e-3)):
        bad = int(np.argmax(np.where(np.isfinite(norms), np.abs(norms - 1.0), np.inf)))
        raise StoreError(
            f"row {first + bad} ({ids[bad]!r}) has norm {norms[bad]:.4f}: descriptors are finite L2-normalised rows"
        )
