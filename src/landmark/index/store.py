"""The embedded store: one directory with SQLite metadata and a FAISS index of global descriptors.

Layout::

    meta.sqlite            images(row, key, path, landmark_id, split, width, height, added_at, content),
                           landmarks(landmark_id, name), meta(key, value): version, generation, signature
    global-<generation>.faiss   IndexIDMap2 over exact inner product; FAISS ids = images.row
                           (compressed: IVF-PQ codes, named by position in vectors-<generation>.faiss,
                           whose rows-<generation>.npy gives each position's images.row; see ann.py)
    augmented/             a second vector set: each photo's DBA-augmented vector and their index
                           (augmented.py; its SQLite tables augmented / votes are in meta.sqlite)
    config.yaml            the pipeline configuration the store was built with
    .lock                  held by the one writer

Searches limited to labelled photos or to some splits use, on an exact store, a flat index of
those photos' vectors made once per generation (FAISS's flat search behind an ID selector gives up
BLAS); a compressed store filters with an ID selector.

``images.content`` is the SHA-256 of the photo file's bytes (:func:`content_hash`): what tells a new
photo that comes with a stored photo's id apart from that photo (see ``landmark.pipeline.Building.add_manifest``).
Stores made before it existed get the column when opened; their rows have none until it is needed.

Commit protocol: a write produces ``global-<g+1>.faiss`` (temp file, fsync, rename) and then commits
the SQLite transaction that moves ``generation`` to ``g+1``; only then is the old file removed. A
run killed at any point leaves SQLite naming a FAISS file that exists and matches it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import yaml

from ..config import Config, config_from_dict
from ..utils.io import atomic_write_text
from .ann import CompressedStoreIndex
from .errors import SignatureMismatch, StoreError
from .files import generation_files, index_name, rows_name, vectors_name, write_index
from .records import ImageRow, SearchResult, StoredFile
from .schema import AUGMENTED_SCHEMA, SCHEMA, STORE_VERSION
from .sqlite import chunks, connect, lock
from .views import GenerationViews
from .writes import StoreWrites


class Store(StoreWrites):
    """Open with :meth:`open`, make with :meth:`create`. Reads are lock-free; writes take ``.lock``."""

    def __init__(self, root: Path, conn: sqlite3.Connection):
        self.root = root
        self._conn = conn
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        if int(meta.get("version", -1)) != STORE_VERSION:
            raise StoreError(f"{root}: store version {meta.get('version')} is not supported (expected {STORE_VERSION})")
        self.signature: dict[str, Any] = json.loads(meta["signature"])
        self.dim = int(self.signature["dim"])
        self.config: Config = config_from_dict(json.loads(meta["config"]))
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='extras'").fetchone() is None:
            try:  # stores made before extras existed (a read-only one simply has none)
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS extras (row INTEGER NOT NULL, name TEXT NOT NULL, "
                    "value BLOB NOT NULL, PRIMARY KEY (row, name))"
                )
            except sqlite3.OperationalError:
                pass
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='votes'").fetchone() is None:
            try:  # stores made before augmented vectors existed (landmark.index.augmented)
                conn.executescript(AUGMENTED_SCHEMA)
            except sqlite3.OperationalError:
                pass
        if not self._has_content_column():
            try:  # stores made before content hashes were kept: their rows have none (see add_manifest)
                conn.execute("ALTER TABLE images ADD COLUMN content TEXT")
            except sqlite3.OperationalError:
                pass  # read-only (reads then see no hashes), or another process added it just now
        self._generation = -1
        self._index: faiss.Index | CompressedStoreIndex | None = None  # loaded by refresh(), below
        self._views_of: GenerationViews | None = None  # per-generation lookups (index/views.py)
        self.refresh()

    # -- opening and creating ------------------------------------------------------------------
    @classmethod
    def create(
        cls, root: str | Path, config: Config, signature: Mapping[str, Any], *, overwrite: bool = False
    ) -> Store:
        """Make an empty store for vectors of ``signature['dim']`` dimensions."""
        root = Path(root)
        if (root / "meta.sqlite").exists():
            if not overwrite:
                raise StoreError(f"{root} already holds a store (use overwrite to replace it)")
            for p in [
                root / "meta.sqlite",
                root / "meta.sqlite-wal",
                root / "meta.sqlite-shm",
                *generation_files(root),
            ]:
                p.unlink(missing_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        with lock(root):
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(int(signature["dim"])))
            write_index(index, root / index_name(0))
            conn = connect(root / "meta.sqlite")
            with conn:
                conn.executescript(SCHEMA + AUGMENTED_SCHEMA)
                conn.executemany(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    [
                        ("version", str(STORE_VERSION)),
                        ("generation", "0"),
                        ("created_at", str(time.time())),
                        ("signature", json.dumps(dict(signature), sort_keys=True)),
                        ("config", json.dumps(config.to_dict())),
                    ],
                )
            atomic_write_text(root / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        return cls(root, conn)

    @classmethod
    def open(cls, root: str | Path) -> Store:
        root = Path(root)
        if not (root / "meta.sqlite").is_file():
            raise StoreError(f"no store at {root} (build one with: landmark index build DATA --store {root})")
        conn = None
        try:
            conn = connect(root / "meta.sqlite")
            return cls(root, conn)
        except sqlite3.DatabaseError as exc:  # an empty, truncated or foreign file (OperationalError included)
            if conn is not None:
                conn.close()
            raise StoreError(
                f"{root / 'meta.sqlite'} is not a readable store database ({exc}); rebuild the store "
                f"(landmark index build DATA --store {root} --overwrite) or restore that file"
            ) from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- state ---------------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        return self._generation

    def refresh(self) -> bool:
        """Reload the FAISS index if another writer committed a newer generation; True if reloaded."""
        gen = int(self._conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])
        if gen == self._generation and self._index is not None:
            return False
        path = self.root / index_name(gen)
        if not path.is_file():
            raise StoreError(f"{self.root}: index file {path.name} named by meta.sqlite is missing")
        if (self.root / rows_name(gen)).is_file():  # compressed: codes + full vectors on disk
            vectors = self.root / vectors_name(gen)
            if not vectors.is_file():  # written before the vectors became a FAISS file
                vectors = vectors.with_suffix(".npy")
            self._index = CompressedStoreIndex.read(path, vectors, self.root / rows_name(gen), self.config.index)
        else:
            self._index = faiss.read_index(str(path))
        if self._index.d != self.dim:
            raise StoreError(f"{path}: index has {self._index.d} dimensions, the store expects {self.dim}")
        self._generation = gen
        return True

    def __len__(self) -> int:
        assert self._index is not None  # loaded by __init__ (refresh)
        return int(self._index.ntotal)

    def info(self) -> dict[str, Any]:
        c = self._conn
        by_split = dict(c.execute("SELECT coalesce(split, ''), count(*) FROM images GROUP BY split"))
        return {
            "root": str(self.root),
            "images": len(self),
            "dim": self.dim,
            "generation": self._generation,
            "labelled": c.execute("SELECT count(*) FROM images WHERE landmark_id IS NOT NULL").fetchone()[0],
            "landmarks": c.execute("SELECT count(DISTINCT landmark_id) FROM images").fetchone()[0],
            "splits": by_split,
            "signature": self.signature,
            "index_kind": "flat" if not isinstance(self._index, CompressedStoreIndex) else self.config.index.kind,
            "bytes_per_vector": self._index.bytes_per_vector
            if isinstance(self._index, CompressedStoreIndex)
            else 4 * self.dim,
            **({"compressed": self._index.describe()} if isinstance(self._index, CompressedStoreIndex) else {}),
        }

    def label_names(self) -> dict[int, str]:
        return dict(self._conn.execute("SELECT landmark_id, name FROM landmarks"))

    def set_label_names(self, names: Mapping[int, str]) -> None:
        with lock(self.root), self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO landmarks VALUES (?, ?)", [(int(k), str(v)) for k, v in names.items()]
            )

    def keys(
        self,
        split: str | None = None,
        *,
        labelled: bool | None = None,
        other_than: str | None = None,
        limit: int | None = None,
    ) -> list[str]:
        """Stored ids in insertion order: all, those of ``split``, and/or only the (un)labelled ones
        (``labelled``), or those of any split but ``other_than``; the first ``limit`` of them. Read by
        SQL alone: a million-photo store lists its few distractors without making a row object per photo."""
        where: list[str] = []
        args: list[str | int] = []
        if split is not None:
            where.append("split=?")
            args.append(split)
        if other_than is not None:
            where.append("(split IS NULL OR split!=?)")
            args.append(other_than)
        if labelled is not None:
            where.append("landmark_id IS NOT NULL" if labelled else "landmark_id IS NULL")
        sql = "SELECT key FROM images" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY row"
        if limit is not None:
            sql, args = sql + " LIMIT ?", [*args, int(limit)]
        return [r[0] for r in self._conn.execute(sql, args)]

    def get(self, keys: Sequence[str]) -> dict[str, ImageRow]:
        out: dict[str, ImageRow] = {}
        for part in chunks(list(keys)):
            q = (
                "SELECT key, path, landmark_id, split, width, height FROM images "
                f"WHERE key IN ({','.join('?' * len(part))})"
            )
            out.update({r[0]: ImageRow(*r) for r in self._conn.execute(q, list(part))})
        return out

    def stored_files(self, keys: Sequence[str]) -> dict[str, StoredFile]:
        """Where each stored one of ``keys`` came from (unknown keys are left out): what decides whether
        a photo coming with a stored id is that photo again."""
        content = "content" if self._has_content_column() else "NULL"
        out: dict[str, StoredFile] = {}
        for part in chunks(list(keys)):
            q = f"SELECT key, path, added_at, {content} FROM images WHERE key IN ({','.join('?' * len(part))})"
            out.update({r[0]: StoredFile(*r[1:]) for r in self._conn.execute(q, list(part))})
        return out

    def set_contents(self, contents: Mapping[str, str]) -> None:
        """Record the content hashes of stored photos that were added without one (one commit; unknown
        keys are ignored). Metadata only: the index and its generation stay as they are."""
        if not contents:
            return
        with lock(self.root), self._conn:
            self._conn.executemany("UPDATE images SET content=? WHERE key=?", [(h, k) for k, h in contents.items()])

    def _has_content_column(self) -> bool:
        return any(r[1] == "content" for r in self._conn.execute("PRAGMA table_info(images)"))

    def landmark_counts(self) -> list[tuple[int | None, int, str]]:
        """``(landmark_id, photos, first key)`` per landmark (``None`` = unlabelled), most photos first."""
        q = (
            "SELECT landmark_id, count(*) AS n, key, min(row) FROM images GROUP BY landmark_id "
            "ORDER BY n DESC, landmark_id"
        )
        return [(lab, int(n), key) for lab, n, key, _ in self._conn.execute(q)]

    def list_images(
        self, landmark_id: int | None = None, *, unlabelled: bool = False, offset: int = 0, limit: int = 100
    ) -> list[ImageRow]:
        """A page of stored images in insertion order: all, one landmark's, or the unlabelled ones."""
        where, args = "", []
        if unlabelled:
            where = "WHERE landmark_id IS NULL"
        elif landmark_id is not None:
            where, args = "WHERE landmark_id = ?", [int(landmark_id)]
        q = f"SELECT key, path, landmark_id, split, width, height FROM images {where} ORDER BY row LIMIT ? OFFSET ?"
        return [ImageRow(*r) for r in self._conn.execute(q, [*args, max(0, int(limit)), max(0, int(offset))])]

    def pin(self) -> Store:
        """Hold a read transaction so this object keeps seeing the generation it has now loaded.

        For a long-lived reader beside a writer (the HTTP service): its SQLite reads and its FAISS
        index stay one consistent committed generation until it is closed or dropped; open a new
        one to see later commits. Do not write through a pinned store.
        """
        self._conn.execute("BEGIN")
        self._conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()  # the snapshot starts here
        self.refresh()  # a commit between open and BEGIN: load the index the snapshot names
        return self

    def vectors(self, keys: Sequence[str]) -> np.ndarray:
        """The stored descriptors of ``keys`` (KeyError for an unknown key)."""
        if not keys:
            return np.zeros((0, self.dim), np.float32)
        rows = self._rows_of(keys)
        return self._views.reconstruct(np.array([rows[k] for k in keys], np.int64))

    def extras(self, keys: Sequence[str], name: str) -> np.ndarray:
        """The ``name`` extra of each key as ``len(keys) x G`` float32; a row of NaN where it is missing."""
        rows = self._rows_of(keys)
        found: dict[int, np.ndarray] = {}
        if self._conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='extras'").fetchone() is None:
            return np.full((len(keys), 0), np.nan, np.float32)
        for part in chunks([rows[k] for k in keys]):
            q = f"SELECT row, value FROM extras WHERE name=? AND row IN ({','.join('?' * len(part))})"
            found.update({r: np.frombuffer(v, dtype=np.float16) for r, v in self._conn.execute(q, [name, *part])})
        width = max((len(v) for v in found.values()), default=0)
        out = np.full((len(keys), width), np.nan, np.float32)
        for i, k in enumerate(keys):
            v = found.get(rows[k])
            if v is not None and len(v) == width:
                out[i] = v
        return out

    def set_extras(self, keys: Sequence[str], name: str, values: np.ndarray) -> None:
        """Attach (or replace) the ``name`` extra of stored photos in one commit (KeyError for unknown keys)."""
        values = np.asarray(values, dtype=np.float32).reshape(len(keys), -1)
        with lock(self.root):
            rows = self._rows_of(keys)
            with self._conn:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO extras VALUES (?, ?, ?)",
                    [(int(rows[k]), name, v.astype(np.float16).tobytes()) for k, v in zip(keys, values)],
                )

    def update_config(self, config: Config) -> None:
        """Replace the stored pipeline configuration (meta and config.yaml), e.g. after calibration.
        The model and extraction settings must stay those that made the vectors."""
        with lock(self.root):
            with self._conn:
                self._conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)", ("config", json.dumps(config.to_dict()))
                )
            atomic_write_text(self.root / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        self.config = config

    def meta_value(self, key: str) -> Any:
        """A JSON value kept in the store's meta table (None if absent)."""
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (f"user.{key}",)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta_value(self, key: str, value: Any) -> None:
        with lock(self.root), self._conn:
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"user.{key}", json.dumps(value)))

    def _rows_of(self, keys: Sequence[str]) -> dict[str, int]:
        rows: dict[str, int] = {}
        for part in chunks(list(keys)):
            q = f"SELECT key, row FROM images WHERE key IN ({','.join('?' * len(part))})"
            rows.update(dict(self._conn.execute(q, list(part))))
        missing = [k for k in keys if k not in rows]
        if missing:
            raise KeyError(f"{len(missing)} id(s) not in the store, e.g. {missing[:3]}")
        return rows

    # -- search --------------------------------------------------------------------------------
    def search(
        self, queries: np.ndarray, k: int, *, labelled_only: bool = False, splits: Sequence[str] | None = None
    ) -> SearchResult:
        """Top-``k`` stored images by inner product, optionally among labelled images or some splits."""
        scores, rows = self.search_rows(queries, k, labelled_only=labelled_only, splits=splits)
        meta = self._row_meta(np.unique(rows[rows >= 0]).tolist())
        keys = [[meta[r][0] if r >= 0 else None for r in row] for row in rows.tolist()]
        labels = np.array(
            [[(meta[r][1] if r >= 0 and meta[r][1] is not None else -1) for r in row] for row in rows.tolist()],
            dtype=np.int64,
        ).reshape(rows.shape)
        return SearchResult(keys, scores, labels, rows.astype(np.int64))

    def search_rows(
        self, queries: np.ndarray, k: int, *, labelled_only: bool = False, splits: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` without the metadata: (scores, store rows), Q x ``k``, -inf / -1 where fewer."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise StoreError(f"queries must be N x {self.dim}, got shape {queries.shape}")
        k = max(1, int(k))
        selection = (labelled_only, tuple(sorted(splits or ())))
        if not len(self):
            scores, rows = np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        elif labelled_only or splits:
            scores, rows = self._views.search(queries, k, *selection)
        else:
            assert self._index is not None  # loaded by __init__ (refresh)
            scores, rows = self._index.search(queries, k)
        rows = np.asarray(rows, np.int64)
        return np.where(rows >= 0, scores, -np.inf).astype(np.float32), rows

    def vectors_of_rows(self, rows: np.ndarray) -> np.ndarray:
        """The stored descriptors of store ``rows`` (all stored), read in one pass."""
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(self._views.reconstruct(rows), np.float32)

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored row in order, and its landmark (-1: unlabelled), by SQL alone."""
        got = np.array(
            [
                (r, -1 if lab is None else lab)
                for r, lab in self._conn.execute("SELECT row, landmark_id FROM images ORDER BY row")
            ],
            np.int64,
        ).reshape(-1, 2)
        return got[:, 0].copy(), got[:, 1].copy()

    def row_meta(self, rows: Sequence[int]) -> dict[int, tuple[str, int | None]]:
        """``(key, landmark_id)`` of each stored one of ``rows`` (rows no longer stored are left out)."""
        return self._row_meta(list(rows))

    @property
    def compressed(self) -> bool:
        """Whether the index of the generation now loaded is compressed (else it is exact)."""
        return isinstance(self._index, CompressedStoreIndex)

    @property
    def index(self) -> faiss.Index | CompressedStoreIndex:
        """The FAISS index of the generation now loaded (a :class:`CompressedStoreIndex` once compressed)."""
        assert self._index is not None  # loaded by __init__ (refresh)
        return self._index

    @property
    def _views(self) -> GenerationViews:
        """The lookups of the generation now loaded (made again for another generation or index)."""
        if self._views_of is None or (self._views_of.index, self._views_of.generation) != (
            self._index,
            self._generation,
        ):
            self._views_of = GenerationViews(self._conn, self._index, self.dim, self.root, self._generation)
        return self._views_of

    def _row_meta(self, rows: list[int]) -> dict[int, tuple[str, int | None]]:
        out: dict[int, tuple[str, int | None]] = {}
        for part in chunks(rows):
            q = f"SELECT row, key, landmark_id FROM images WHERE row IN ({','.join('?' * len(part))})"
            out.update({r: (k, lab) for r, k, lab in self._conn.execute(q, list(part))})
        return out


def check_signature(store: Store, signature: Mapping[str, Any]) -> None:
    """Refuse vectors made by another model or preprocessing than the store's."""
    mine, theirs = store.signature, json.loads(json.dumps(dict(signature), sort_keys=True))
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise SignatureMismatch(
            f"store {store.root} was built with {json.dumps({k: mine.get(k) for k in diff})}, "
            f"but the query extractor uses {json.dumps({k: theirs.get(k) for k in diff})}"
        )
