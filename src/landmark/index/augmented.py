"""A store's second vector set: one augmented vector per stored photo (database-side augmentation,
computed by :mod:`landmark.retrieval.augment`), with an index of the same kind as the store's, so that
DBA / alpha-QE search a large or compressed store through an index instead of all-pairs products.

Layout (beside the store's own files)::

    meta.sqlite   augmented(row, part): the photos that have an augmented vector and where it is (part 0:
                  in the index below; part n > 0: in part file n, committed and not indexed yet);
                  votes(row, label): the voted landmark of unlabelled photos (what verification compares);
                  meta 'augmented': {"settings": what made the vectors, "generation": g, "indexed": whether
                  index-<g> exists}; g grows with every start and index written, never reused
    augmented/part-<n>.npy, part-<n>.rows.npy   one committed chunk: its vectors and their store rows
    augmented/index-<g>.faiss   on an exact store: an ``IndexIDMap2`` over exact inner product (float32,
                  ids = store rows). On a compressed store: the store's own trained index (PCA, cells, PQ
                  codebooks), emptied and filled with the augmented vectors, with ``vectors-<g>.faiss``
                  (their full vectors, ``index.vectors_dtype``: float16 by default, memory-mapped for the
                  re-rank) and ``rows-<g>.npy``, kept as :class:`CompressedStoreIndex` keeps the store's

Writes follow the store's commit protocol under its writer lock: files first (atomically), then the
SQLite transaction that names them; replaced files are removed after. A killed job keeps its committed
parts, and the next run augments only the photos not yet in ``augmented``. Removing a photo from the
store deletes its ``augmented`` and ``votes`` rows in the store's own transaction
(:meth:`StoreWrites._delete_rows`), so this set never names a photo the store lacks; its vector stays in
the index file, skipped by searches, until the next :meth:`AugmentedVectors.finish` drops it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from typing import Any

import faiss
import numpy as np

from ..utils.io import atomic_path
from ..utils.progress import progress_bar
from .ann import CompressedStoreIndex
from .files import write_index
from .sqlite import chunks, lock, transaction
from .store import Store
from .vectors import RefineVectors
from .views import GenerationViews

AUGMENTED_DIR = "augmented"
MISSING = -2  # the label of an unlabelled photo that has no vote yet
_STATE = "augmented"  # its key in the store's meta table
_CHUNK = 16384  # vectors read and encoded at a time when an index is rebuilt
REBUILD_PENDING = 100_000  # more committed vectors than this: rebuild a compressed index rather than extend it


def _index_file(g: int) -> str:
    return f"index-{g:06d}.faiss"


def _vectors_file(g: int) -> str:
    return f"vectors-{g:06d}.faiss"


def _rows_file(g: int) -> str:
    return f"rows-{g:06d}.npy"


def _part_file(n: int) -> str:
    return f"part-{n:06d}.npy"


def _part_rows_file(n: int) -> str:
    return f"part-{n:06d}.rows.npy"


def _normal(settings: dict[str, Any] | None) -> dict[str, Any]:
    """``settings`` as JSON keeps them, without the keys that do not apply (None)."""
    return {k: v for k, v in json.loads(json.dumps(settings or {}, sort_keys=True)).items() if v is not None}


class AugmentedVectors:
    """The augmented vectors of ``store`` (see the module): what the DBA job writes and searches read."""

    def __init__(self, store: Store):
        self.store = store
        self.root = store.root / AUGMENTED_DIR
        self._loaded: tuple[int, Any] | None = None  # (generation, index)
        self._views: GenerationViews | None = None
        self._alive: tuple[tuple[int, int], int] | None = None  # ((store gen, own gen), indexed count)

    # -- state ---------------------------------------------------------------------------------
    @property
    def _conn(self):
        return self.store._conn  # the store's connection: its transactions and snapshot (Store.pin) are ours

    def state(self) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (_STATE,)).fetchone()
        return json.loads(row[0]) if row else None

    def _set_state(self, state: dict[str, Any]) -> None:  # inside a transaction
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_STATE, json.dumps(state, sort_keys=True)))

    @property
    def generation(self) -> int:
        """The committed generation of the set: a new one at each :meth:`start` anew and each index
        written (-1: never started)."""
        return int((self.state() or {}).get("generation", -1))

    @property
    def indexed(self) -> bool:
        """Whether the set's generation has an index (:meth:`finish` wrote it)."""
        return bool((self.state() or {}).get("indexed"))

    @property
    def settings(self) -> dict[str, Any] | None:
        """What made the vectors (the verifier and its thresholds, those that apply), as :meth:`start`
        recorded it."""
        state = self.state()
        return None if state is None else _normal(state.get("settings"))

    def counts(self) -> tuple[int, int]:
        """(indexed, pending): stored photos whose augmented vector is in the index / in a part file."""
        indexed = self._conn.execute("SELECT count(*) FROM augmented WHERE part = 0").fetchone()[0]
        pending = self._conn.execute("SELECT count(*) FROM augmented WHERE part > 0").fetchone()[0]
        return int(indexed), int(pending)

    def current(self, settings: dict[str, Any]) -> bool:
        """Whether the set was made with ``settings`` and its index holds every stored photo."""
        state = self.state()
        return (
            state is not None
            and _normal(state.get("settings")) == _normal(settings)
            and bool(state.get("indexed"))
            and self.counts()[0] == len(self.store)
        )

    def start(self, settings: dict[str, Any], *, restart: bool = False) -> bool:
        """Go on with the set made with ``settings``, or begin a new one (dropping one made with other
        settings, or any with ``restart``); True when it began anew. Votes are kept unless ``restart``
        or their ``vote_k`` changed."""
        settings = _normal(settings)
        state = self.state()
        if state is not None and _normal(state.get("settings")) == settings and not restart:
            return False
        with lock(self.store.root), transaction(self._conn):
            self._conn.execute("DELETE FROM augmented")
            if restart or state is None or (state.get("settings") or {}).get("vote_k") != settings.get("vote_k"):
                self._conn.execute("DELETE FROM votes")
            self._set_state({"settings": settings, "generation": self.generation + 1, "indexed": False})
        shutil.rmtree(self.root, ignore_errors=True)  # no longer named by meta.sqlite
        self._loaded, self._views, self._alive = None, None, None
        return True

    def todo(self) -> np.ndarray:
        """Stored rows without an augmented vector, in row order."""
        q = "SELECT i.row FROM images i WHERE NOT EXISTS (SELECT 1 FROM augmented a WHERE a.row = i.row) ORDER BY i.row"
        return np.fromiter((r for (r,) in self._conn.execute(q)), np.int64)

    # -- labels for verification -----------------------------------------------------------------
    def labels(self) -> np.ndarray:
        """Each stored photo's landmark, indexed by row (0 .. the largest row): its label, else its kept
        vote, else :data:`MISSING`; -1 at rows not stored."""
        top = self._conn.execute("SELECT coalesce(max(row), 0) FROM images").fetchone()[0]
        out = np.full(int(top) + 1, -1, np.int64)
        q = "SELECT i.row, coalesce(i.landmark_id, v.label, ?) FROM images i LEFT JOIN votes v ON v.row = i.row"
        got = np.array(self._conn.execute(q, (MISSING,)).fetchall(), np.int64).reshape(-1, 2)
        out[got[:, 0]] = got[:, 1]
        return out

    def labels_of(self, rows: Sequence[int]) -> dict[int, int]:
        """:meth:`labels` of the stored ones of ``rows``."""
        out: dict[int, int] = {}
        for part in chunks(list(rows)):
            q = (
                "SELECT i.row, coalesce(i.landmark_id, v.label, ?) FROM images i LEFT JOIN votes v ON v.row = i.row "
                f"WHERE i.row IN ({','.join('?' * len(part))})"
            )
            out.update(dict(self._conn.execute(q, [MISSING, *part])))
        return out

    def set_votes(self, rows: np.ndarray, keys: Sequence[str], labels: np.ndarray) -> None:
        """Keep the voted landmark of unlabelled photos (``rows`` with their ``keys``: a row whose photo
        changed since is skipped) in one commit."""
        with lock(self.store.root), transaction(self._conn):
            self._conn.executemany(
                "INSERT OR REPLACE INTO votes SELECT ?, ? WHERE EXISTS (SELECT 1 FROM images WHERE row=? AND key=?)",
                [(int(r), int(lab), int(r), k) for r, k, lab in zip(rows, keys, labels)],
            )

    # -- writing -------------------------------------------------------------------------------
    @property
    def dtype(self) -> type[np.floating]:
        """How part files keep vectors: as the store's full vectors are (float16 on a compressed store)."""
        compressed = self.store.compressed
        return np.float16 if compressed and self.store.config.index.vectors_dtype == "float16" else np.float32

    def add_part(self, rows: np.ndarray, keys: Sequence[str], vectors: np.ndarray) -> int:
        """Commit the augmented ``vectors`` of stored ``rows`` (with their ``keys``: a row whose photo
        was removed or replaced since is left out) as one part; returns its number."""
        rows = np.asarray(rows, np.int64)
        if len(rows) != len(vectors) or len(rows) != len(keys) or (np.diff(rows) <= 0).any():
            raise ValueError("a part holds one vector per row, rows ascending")
        with lock(self.store.root):
            n = 1 + int(self._conn.execute("SELECT coalesce(max(part), 0) FROM augmented").fetchone()[0])
            for name, array in ((_part_file(n), vectors.astype(self.dtype)), (_part_rows_file(n), rows)):
                with atomic_path(self.root / name) as tmp, open(tmp, "wb") as fh:
                    np.save(fh, array)
            with transaction(self._conn):
                self._conn.executemany(
                    "INSERT OR REPLACE INTO augmented SELECT ?, ? WHERE EXISTS "
                    "(SELECT 1 FROM images WHERE row=? AND key=?)",
                    [(int(r), n, int(r), k) for r, k in zip(rows, keys)],
                )
        return n

    def finish(self, *, progress: bool | None = None) -> bool:
        """Index the committed parts and drop the vectors of removed photos: the next generation of the
        set's index, committed (the store's lock is held throughout). False where nothing changed."""
        with lock(self.store.root):
            self.store.refresh()
            gen = self.generation
            parts = [
                p for (p,) in self._conn.execute("SELECT DISTINCT part FROM augmented WHERE part > 0 ORDER BY part")
            ]
            indexed = np.fromiter(
                (r for (r,) in self._conn.execute("SELECT row FROM augmented WHERE part = 0 ORDER BY row")), np.int64
            )
            old = self._read(gen) if self.indexed else None
            dead = np.setdiff1d(_rows_in(old), indexed) if old is not None else np.zeros(0, np.int64)
            if old is not None and not parts and not len(dead):
                return False
            new = gen + 1
            part_rows = {p: self._part_rows(p) for p in parts}
            pending = sum(len(r) for r, _ in part_rows.values())
            compressed = self.store.compressed
            self.root.mkdir(parents=True, exist_ok=True)
            if compressed and (not isinstance(old, CompressedStoreIndex) or pending > REBUILD_PENDING):
                self._rebuild(old, indexed, part_rows, new, progress)
            else:
                self._extend(old, indexed, dead, part_rows, new, compressed)
            with transaction(self._conn):
                self._conn.execute("UPDATE augmented SET part = 0 WHERE part > 0")
                self._set_state({**(self.state() or {}), "generation": new, "indexed": True})
            keep = {_index_file(new), _vectors_file(new), _rows_file(new)}
            for f in self.root.iterdir():
                if f.name not in keep and not f.name.startswith("."):
                    f.unlink(missing_ok=True)
            self._loaded, self._views, self._alive = None, None, None
        return True

    def _part_rows(self, part: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows of part file ``part`` still committed to it, and their positions in the file."""
        rows = np.load(self.root / _part_rows_file(part))
        live = {r for (r,) in self._conn.execute("SELECT row FROM augmented WHERE part = ?", (part,))}
        pos = np.flatnonzero(np.fromiter((int(r) in live for r in rows), bool, len(rows)))
        return rows[pos], pos

    def _part_vectors(self, part: int) -> np.ndarray:
        return np.load(self.root / _part_file(part), mmap_mode="r")

    def _extend(
        self,
        old: Any,
        indexed: np.ndarray,
        dead: np.ndarray,
        part_rows: dict[int, tuple[np.ndarray, np.ndarray]],
        new: int,
        compressed: bool,
    ) -> None:
        """Remove the dead rows from ``old`` (or a new exact index), add the parts, write generation ``new``."""
        if old is None or (not compressed and isinstance(old, CompressedStoreIndex)):
            index: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(self.store.dim))
            if old is not None and len(indexed):
                index.add_with_ids(_fetch(old, indexed), indexed)
        else:
            index = old
            if len(dead):
                index.remove_ids(dead)
        for p, (rows, pos) in part_rows.items():
            if len(rows):
                index.add_with_ids(np.asarray(self._part_vectors(p)[pos], np.float32), rows)
        if isinstance(index, CompressedStoreIndex):
            index.write(self.root / _index_file(new), self.root / _vectors_file(new), self.root / _rows_file(new))
        else:
            write_index(index, self.root / _index_file(new))

    def _rebuild(
        self,
        old: Any,
        indexed: np.ndarray,
        part_rows: dict[int, tuple[np.ndarray, np.ndarray]],
        new: int,
        progress: bool | None,
    ) -> None:
        """A compressed index of every augmented vector (those of ``old`` still indexed, and the parts'),
        streamed in row order: the store's trained index, emptied, encodes them while their full vectors
        are written (a chunk in memory at a time, as a bulk load does)."""
        sources = [indexed] + [rows for rows, _ in part_rows.values()]
        every = np.concatenate(sources) if sources else np.zeros(0, np.int64)
        source = np.repeat(np.arange(len(sources)), [len(s) for s in sources])
        offset = np.concatenate([np.arange(len(indexed))] + [pos for _, pos in part_rows.values()])
        order = np.argsort(every, kind="stable")
        files = [None] + [self._part_vectors(p) for p in part_rows]
        store_index = self.store.index
        assert isinstance(store_index, CompressedStoreIndex)  # _rebuild is for compressed stores
        codes = faiss.clone_index(store_index.index)  # trained (PCA, cells, codebooks), then emptied
        codes.reset()
        cfg = self.store.config.index

        def gather(sel: np.ndarray) -> np.ndarray:
            out = np.empty((len(sel), self.store.dim), np.float32)
            src = source[sel]
            for s in np.unique(src):
                at = src == s
                out[at] = _fetch(old, every[sel[at]]) if s == 0 else files[s][offset[sel[at]]]
            return out

        def encoded() -> Iterator[np.ndarray]:
            with progress_bar("index augmented vectors", total=len(order), enabled=progress) as bar:
                for lo in range(0, len(order), _CHUNK):
                    x = gather(order[lo : lo + _CHUNK])
                    codes.add_with_ids(x, np.arange(lo, lo + len(x), dtype=np.int64))
                    bar.advance(len(x))
                    yield x

        path = self.root / _vectors_file(new)
        vectors = RefineVectors.write(path, encoded(), len(order), self.store.dim, cfg.vectors_dtype)
        index = CompressedStoreIndex(codes, every[order], vectors, cfg)
        index.write(self.root / _index_file(new), path, self.root / _rows_file(new))  # the codes: vectors are there

    # -- reading -------------------------------------------------------------------------------
    def _read(self, gen: int) -> Any:
        path = self.root / _index_file(gen)
        if (self.root / _rows_file(gen)).is_file():
            return CompressedStoreIndex.read(
                path, self.root / _vectors_file(gen), self.root / _rows_file(gen), self.store.config.index
            )
        return faiss.read_index(str(path))

    def index(self) -> Any:
        """The committed index (``IndexIDMap2`` or :class:`CompressedStoreIndex`, ids = store rows); None
        before the first :meth:`finish`."""
        gen = self.generation
        if not self.indexed:
            return None
        if self._loaded is None or self._loaded[0] != gen:
            self._loaded = (gen, self._read(gen))
            self._views = GenerationViews(self._conn, self._loaded[1], self.store.dim, self.root, gen)
        return self._loaded[1]

    def _indexed(self) -> int:
        key = (self.store.generation, self.generation)
        if self._alive is None or self._alive[0] != key:
            self._alive = (key, self.counts()[0])
        return self._alive[1]

    def search(
        self, queries: np.ndarray, k: int, *, splits: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, store rows) among the indexed augmented vectors of stored photos (of
        ``splits``), -inf / -1 where fewer."""
        index = self.index()
        if index is None:
            raise RuntimeError(f"{self.root}: no augmented vectors indexed yet (landmark index expand)")
        assert self._views is not None  # made with the index
        queries = np.ascontiguousarray(queries, np.float32)
        k = max(1, int(k))
        if splits:  # the views select stored photos of the splits by SQL: removed ones are not among them
            scores, rows = self._views.search(queries, k, False, tuple(sorted(splits)))
            return np.where(rows >= 0, scores, -np.inf).astype(np.float32), np.asarray(rows, np.int64)
        dead = int(index.ntotal) - self._indexed()  # removed since the index was written
        scores, rows = index.search(queries, k + max(0, dead))
        rows = np.asarray(rows, np.int64)
        if dead > 0:
            found = np.unique(rows[rows >= 0])
            live: set[int] = set()
            for part in chunks(found.tolist()):
                q = f"SELECT row FROM augmented WHERE part = 0 AND row IN ({','.join('?' * len(part))})"
                live.update(r for (r,) in self._conn.execute(q, list(part)))
            alive = np.isin(rows, np.fromiter(live, np.int64, len(live)))
            order = np.argsort(~alive, axis=1, kind="stable")
            rows = np.where(np.take_along_axis(alive, order, 1), np.take_along_axis(rows, order, 1), -1)
            scores = np.take_along_axis(scores, order, 1)
        rows, scores = rows[:, :k], scores[:, :k]
        return np.where(rows >= 0, scores, -np.inf).astype(np.float32), rows

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The indexed augmented vectors of ``rows`` (float32, one pass)."""
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return np.zeros((0, self.store.dim), np.float32)
        if self.index() is None:
            raise RuntimeError(f"{self.root}: no augmented vectors indexed yet (landmark index expand)")
        assert self._views is not None  # made with the index
        return np.asarray(self._views.reconstruct(rows), np.float32)

    def describe(self) -> dict[str, Any]:
        """Counts, settings, index and bytes on disk of the set (``landmark index info``)."""
        indexed, pending = self.counts()
        index = self.index()
        return {
            "photos": len(self.store),
            "indexed": indexed,
            "pending": pending,
            "removed_in_index": max(0, int(index.ntotal) - indexed) if index is not None else 0,
            "generation": self.generation,
            "settings": self.settings,
            "index": "none" if index is None else ("compressed" if isinstance(index, CompressedStoreIndex) else "flat"),
            "disk_bytes": sum(f.stat().st_size for f in self.root.iterdir() if f.is_file())
            if self.root.is_dir()
            else 0,
        }


def _rows_in(index: Any) -> np.ndarray:
    """The store rows an index holds, ascending."""
    if isinstance(index, CompressedStoreIndex):
        return index.rows.copy()
    return np.sort(faiss.vector_to_array(index.id_map).astype(np.int64))


def _fetch(index: Any, rows: np.ndarray) -> np.ndarray:
    """Vectors of ``rows`` (all held) from an exact ``IndexIDMap2`` or a :class:`CompressedStoreIndex`."""
    if isinstance(index, CompressedStoreIndex):
        return index.reconstruct_rows(rows)
    return index.reconstruct_batch(np.ascontiguousarray(rows, np.int64))
