"""On-disk local features of a store: ``STORE/local/``, keyed by the store's image keys.

Layout::

    local/entries.sqlite        entries(key, segment, start, count, scale, width, height),
                                meta(signature): the extractor that made them,
                                pairs(a, b, tag, sa, sb, inliers): inliers of verified stored pairs, valid
                                while both photos' features stay in segments sa / sb
    local/seg-<n>.kp.npy        float16 keypoints of one write (sum of counts x 4: x, y, size, angle)
    local/seg-<n>.desc.npy      descriptors of that write (sum of counts x D): uint8 (SIFT, binary kinds) or
                                float16 (learned kinds: ALIKED, DISK, XFeat)

A write saves its two segment files atomically (temp file, fsync, rename), then commits the
entries in one SQLite transaction: a killed write leaves at most an unreferenced segment file.
Segments are memory-mapped when read. Removing keys deletes their entries (the rows stay in their
segment until :meth:`LocalStore.compact`); re-adding a key replaces its entry, so the features
follow the store through add / remove.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..features.local import LocalFeatures
from ..utils.io import atomic_path
from .sqlite import chunks, connect, lock, transaction
from .store import Store, StoreError

LOCAL_DIR = "local"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY, segment INTEGER NOT NULL, start INTEGER NOT NULL, count INTEGER NOT NULL,
    scale REAL NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pairs (
    a TEXT NOT NULL, b TEXT NOT NULL, tag TEXT NOT NULL, sa INTEGER NOT NULL, sb INTEGER NOT NULL,
    inliers INTEGER NOT NULL, PRIMARY KEY (a, b, tag)
);
"""


class LocalStore:
    """Local features in one directory (usually ``STORE/local``); reads are lock-free."""

    def __init__(self, root: Path, conn: sqlite3.Connection):
        self.root = root
        self._conn = conn
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        self.signature: dict[str, Any] = json.loads(meta["signature"])
        self._maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def create(cls, root: str | Path, signature: Mapping[str, Any]) -> LocalStore:
        """Open ``root`` if it holds features of ``signature``; make it (or clear it) otherwise."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        sig = json.loads(json.dumps(dict(signature), sort_keys=True))
        with lock(root):
            conn = connect(root / "entries.sqlite")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key='signature'").fetchone()
            if row is not None and json.loads(row[0]) != sig:  # made by another extractor: start over
                with transaction(conn):
                    conn.execute("DELETE FROM entries")
                    conn.execute("DELETE FROM pairs")
                for p in root.glob("seg-*.npy"):
                    p.unlink()
            with transaction(conn):
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('signature', ?)", (json.dumps(sig, sort_keys=True),))
        return cls(root, conn)

    @classmethod
    def open(cls, root: str | Path) -> LocalStore:
        root = Path(root)
        if not (root / "entries.sqlite").is_file():
            raise StoreError(f"no local features at {root} (build the store with local.enabled=true)")
        conn = connect(root / "entries.sqlite")
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name='pairs'").fetchone() is None:
            with lock(root):  # a store from before the pairs were kept
                conn.executescript(_SCHEMA)
        return cls(root, conn)

    @classmethod
    def open_if_exists(cls, root: str | Path) -> LocalStore | None:
        return cls.open(root) if (Path(root) / "entries.sqlite").is_file() else None

    def close(self) -> None:
        self._maps.clear()
        self._conn.close()

    # -- reads ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._conn.execute("SELECT count(*) FROM entries").fetchone()[0]

    def __contains__(self, key: str) -> bool:
        return self._conn.execute("SELECT 1 FROM entries WHERE key=?", (key,)).fetchone() is not None

    def keys(self) -> list[str]:
        return [k for (k,) in self._conn.execute("SELECT key FROM entries ORDER BY segment, start")]

    def present(self, keys: Sequence[str]) -> set[str]:
        out: set[str] = set()
        for part in chunks(list(keys)):
            q = f"SELECT key FROM entries WHERE key IN ({','.join('?' * len(part))})"
            out.update(k for (k,) in self._conn.execute(q, list(part)))
        return out

    def get(self, keys: Sequence[str]) -> dict[str, LocalFeatures]:
        """Features of ``keys`` that are stored (arrays are read-only views of memory-mapped files)."""
        out: dict[str, LocalFeatures] = {}
        for part in chunks(list(keys)):
            q = (
                "SELECT key, segment, start, count, scale, width, height FROM entries "
                f"WHERE key IN ({','.join('?' * len(part))})"
            )
            for key, seg, start, count, scale, w, h in self._conn.execute(q, list(part)):
                kp, desc = self._segment(seg)
                out[key] = LocalFeatures(
                    kp[start : start + count], desc[start : start + count], float(scale), int(w), int(h)
                )
        return out

    def __getitem__(self, key: str) -> LocalFeatures:
        got = self.get([key])
        if key not in got:
            raise KeyError(f"no local features for {key!r} in {self.root}")
        return got[key]

    def _segment(self, seg: int) -> tuple[np.ndarray, np.ndarray]:
        if seg not in self._maps:
            kp = np.load(self.root / _seg_name(seg, "kp"), mmap_mode="r")
            desc = np.load(self.root / _seg_name(seg, "desc"), mmap_mode="r")
            self._maps[seg] = (kp, desc)
        return self._maps[seg]

    def info(self) -> dict[str, Any]:
        n, kps = self._conn.execute("SELECT count(*), coalesce(sum(count), 0) FROM entries").fetchone()
        size = sum(p.stat().st_size for p in self.root.glob("seg-*.npy"))
        return {
            "images": n,
            "keypoints": int(kps),
            "mean_keypoints": (kps / n) if n else 0.0,
            "bytes_on_disk": size,
            "signature": self.signature,
        }

    def pair_inliers(self, pairs: Sequence[tuple[str, str]], tag: str) -> dict[tuple[str, str], int]:
        """The kept inliers of those ``(a, b)`` pairs verified under ``tag`` (the verifier's settings) whose
        features have not changed since (a photo re-added or compacted since gets verified again)."""
        out: dict[tuple[str, str], int] = {}
        wanted = set(pairs)
        for part in chunks(sorted({a for a, _ in pairs})):
            q = (
                "SELECT p.a, p.b, p.inliers FROM pairs p "
                "JOIN entries ea ON ea.key = p.a AND ea.segment = p.sa "
                "JOIN entries eb ON eb.key = p.b AND eb.segment = p.sb "
                f"WHERE p.tag = ? AND p.a IN ({','.join('?' * len(part))})"
            )
            for a, b, n in self._conn.execute(q, [tag, *part]):
                if (a, b) in wanted:
                    out[(a, b)] = int(n)
        return out

    def keep_pair_inliers(self, inliers: Mapping[tuple[str, str], int], tag: str) -> None:
        """Keep the inliers of verified pairs of stored photos (see :meth:`pair_inliers`)."""
        keys = sorted({k for pair in inliers for k in pair})
        segment: dict[str, int] = {}
        for part in chunks(keys):
            q = f"SELECT key, segment FROM entries WHERE key IN ({','.join('?' * len(part))})"
            segment.update(self._conn.execute(q, list(part)))
        rows = [
            (a, b, tag, segment[a], segment[b], int(n))
            for (a, b), n in inliers.items()
            if a in segment and b in segment
        ]
        with lock(self.root), transaction(self._conn):
            self._conn.executemany("INSERT OR REPLACE INTO pairs VALUES (?,?,?,?,?,?)", rows)

    # -- writes --------------------------------------------------------------------------------
    def add(self, keys: Sequence[str], features: Sequence[LocalFeatures]) -> int:
        """Store features of ``keys`` in one atomic write (an existing key is replaced)."""
        if len(keys) != len(features):
            raise StoreError(f"{len(keys)} keys but {len(features)} feature sets")
        if len(set(keys)) != len(keys):
            raise StoreError("duplicate keys in one add of local features")
        if not keys:
            return 0
        dims = {f.descriptors.shape[1] for f in features if f.descriptors.ndim == 2}
        if len(dims) > 1:
            raise StoreError(f"descriptors of different widths in one add: {sorted(dims)}")
        dim = dims.pop() if dims else 0
        dtypes = {np.asarray(f.descriptors).dtype for f in features if len(f.descriptors)} or {np.dtype(np.uint8)}
        if len(dtypes) > 1 or not dtypes <= {np.dtype(np.uint8), np.dtype(np.float16)}:
            raise StoreError(f"descriptors must all be uint8 or all float16 in one add, got {sorted(map(str, dtypes))}")
        dtype = dtypes.pop()
        kp = np.concatenate([np.asarray(f.keypoints, np.float16).reshape(-1, 4) for f in features])
        desc = np.concatenate([np.asarray(f.descriptors, dtype).reshape(-1, dim) for f in features])
        with lock(self.root):
            seg = self._conn.execute("SELECT coalesce(max(segment), 0) + 1 FROM entries").fetchone()[0]
            seg = max([seg] + [int(p.name.split("-")[1].split(".")[0]) + 1 for p in self.root.glob("seg-*.npy")])
            for arr, part in ((kp, "kp"), (desc, "desc")):
                with atomic_path(self.root / _seg_name(seg, part)) as tmp:
                    with open(tmp, "wb") as fh:
                        np.save(fh, arr)
            starts = np.concatenate([[0], np.cumsum([len(f.keypoints) for f in features])[:-1]])
            with transaction(self._conn):
                self._conn.executemany(
                    "INSERT OR REPLACE INTO entries VALUES (?,?,?,?,?,?,?)",
                    [
                        (k, seg, int(s), len(f.keypoints), float(f.scale), int(f.width), int(f.height))
                        for k, s, f in zip(keys, starts, features)
                    ],
                )
        return len(keys)

    def remove(self, keys: Sequence[str]) -> int:
        with lock(self.root), transaction(self._conn):
            n = 0
            for part in chunks(list(keys)):
                marks = ",".join("?" * len(part))
                n += self._conn.execute(f"DELETE FROM entries WHERE key IN ({marks})", list(part)).rowcount
                self._conn.execute(f"DELETE FROM pairs WHERE a IN ({marks}) OR b IN ({marks})", list(part) * 2)
        return n

    def compact(self) -> None:
        """Drop the rows of removed keys from the segment files (rewrites everything into one segment)."""
        keys = self.keys()
        feats = self.get(keys)
        old = {int(p.name.split("-")[1].split(".")[0]) for p in self.root.glob("seg-*.npy")}
        self.add(
            keys,
            [
                LocalFeatures(np.array(f.keypoints), np.array(f.descriptors), f.scale, f.width, f.height)
                for f in (feats[k] for k in keys)
            ],
        )
        self._maps.clear()
        with lock(self.root):
            for seg in old:
                for part in ("kp", "desc"):
                    (self.root / _seg_name(seg, part)).unlink(missing_ok=True)

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def local_coverage(store: Store) -> dict[str, Any] | None:
    """What the local features of ``store`` cover: :meth:`LocalStore.info` and ``missing``, how many
    stored photos have none (an add or build interrupted between its two writes, imported vectors, a
    photo whose local features could not be made); None for a store that keeps no local features."""
    local = LocalStore.open_if_exists(store.root / LOCAL_DIR)
    if local is None:
        if not store.config.local.enabled:
            return None
        return {"images": 0, "keypoints": 0, "mean_keypoints": 0.0, "bytes_on_disk": 0, "missing": len(store)}
    with local:
        return local.info() | {"missing": len(store) - len(local.present(store.keys()))}


def _seg_name(seg: int, part: str) -> str:
    return f"seg-{seg:06d}.{part}.npy"
