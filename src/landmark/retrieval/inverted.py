"""Local-feature retrieval with an inverted index (Baidu GLR19 §2.1.2).

k-means (FAISS) with 512 centres over the stored local descriptors; every stored descriptor goes
into the posting list of its nearest centre; each query descriptor visits the posting lists of
its 20 nearest centres (``nprobe``), finds its ``neighbours`` nearest stored descriptors there, and
votes once for each photo owning one of them that is distinctive: squared distance below
``ratio**2`` times that of the last (background) neighbour. (A plain first/second ratio test would
discard exactly the descriptors seen in several photos of one landmark.) Photos are ranked by votes.

This is a FAISS ``IndexIVFFlat`` (inner product on RootSIFT, or on +-1 bits for binary kinds).
Use it alone (:meth:`LocalInvertedIndex.search`) or merged with the global shortlist
(:func:`merge_shortlists`) before verification.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import faiss
import numpy as np

from ..features.delf import decode_descriptors
from ..features.local import BINARY_KINDS, LocalFeatures, rootsift
from ..features.whitening import l2n
from ..index.local import LocalStore
from ..utils.io import atomic_path
from ..utils.progress import progress_bar


def descriptors_for_search(descriptors: np.ndarray, kind: str) -> np.ndarray:
    """Float32 rows for the inverted index: RootSIFT, or binary strings as +-1/sqrt(D) vectors."""
    d = np.asarray(descriptors)
    if kind in BINARY_KINDS:
        bits = np.unpackbits(d.astype(np.uint8, copy=False), axis=1).astype(np.float32)
        return np.ascontiguousarray((2 * bits - 1) / np.sqrt(bits.shape[1]))
    if kind == "delf":
        return np.ascontiguousarray(l2n(decode_descriptors(d)))
    if d.dtype != np.uint8:  # learned kinds: already unit vectors
        return np.ascontiguousarray(d, dtype=np.float32)
    return np.ascontiguousarray(rootsift(d))


class LocalInvertedIndex:
    """Posting lists of stored local descriptors over k-means centres, and voting search."""

    def __init__(self, index: faiss.IndexIVF, owners: np.ndarray, keys: list[str], kind: str, nprobe: int = 20):
        self.index, self.owners, self.keys, self.kind = index, owners, keys, kind
        self.nprobe = nprobe

    @classmethod
    def build(
        cls,
        local: LocalStore,
        keys: Sequence[str] | None = None,
        *,
        centres: int = 512,
        nprobe: int = 20,
        train_size: int = 200_000,
        seed: int = 0,
        progress: bool | None = None,
    ) -> LocalInvertedIndex:
        """Cluster (a sample of) the descriptors of ``keys`` (default: all) and fill the posting lists."""
        kind = str(local.signature.get("kind", "rootsift"))
        keys = list(keys) if keys is not None else local.keys()
        feats = local.get(keys)
        keys = [k for k in keys if k in feats and len(feats[k])]
        counts = np.array([len(feats[k]) for k in keys], np.int64)
        total = int(counts.sum())
        if total == 0:
            raise ValueError("no local descriptors to index")
        dim = descriptors_for_search(feats[keys[0]].descriptors[:1], kind).shape[1]
        centres = int(min(centres, max(1, total // 39)))  # FAISS wants >= 39 points per centre
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(total, min(train_size, total), replace=False))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        img_of = np.searchsorted(starts, pick, side="right") - 1
        sample = (
            np.concatenate(
                [
                    descriptors_for_search(feats[keys[i]].descriptors[[p - starts[i]]], kind)
                    for i, p in zip(img_of, pick)
                ]
            )
            if len(pick) < 5000
            else None
        )
        if sample is None:  # vectorised gather per image for large samples
            parts = []
            for i in np.unique(img_of):
                rows = pick[img_of == i] - starts[i]
                parts.append(descriptors_for_search(np.asarray(feats[keys[i]].descriptors)[rows], kind))
            sample = np.concatenate(parts)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, centres, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(sample)
        owners = np.repeat(np.arange(len(keys), dtype=np.int32), counts)
        with progress_bar("inverted index", total=len(keys), enabled=progress) as bar:
            for s in range(0, len(keys), 256):
                part = keys[s : s + 256]
                x = np.concatenate([descriptors_for_search(feats[k].descriptors, kind) for k in part])
                index.add(x)
                bar.advance(len(part))
        return cls(index, owners, keys, kind, nprobe)

    def votes(self, query: LocalFeatures, *, ratio: float = 0.9, neighbours: int = 10) -> np.ndarray:
        """Votes per indexed photo (array aligned with :attr:`keys`)."""
        if len(query) == 0:
            return np.zeros(len(self.keys), np.int64)
        x = descriptors_for_search(query.descriptors, self.kind)
        self.index.nprobe = self.nprobe
        sims, ids = self.index.search(x, neighbours)
        dist = np.maximum(2.0 - 2.0 * sims, 0.0)
        found = ids >= 0
        last = np.where(found, dist, -np.inf).max(axis=1, keepdims=True)  # background distance
        last = np.where(found.all(axis=1, keepdims=True), last, np.inf)  # fewer found: no background
        ok = found & (dist < (ratio * ratio) * last)
        rows, cols = np.nonzero(ok)
        pairs = np.unique(np.stack([rows, self.owners[ids[rows, cols]]], axis=1), axis=0)  # one vote per photo
        return np.bincount(pairs[:, 1], minlength=len(self.keys)) if len(pairs) else np.zeros(len(self.keys), np.int64)

    def search(
        self, query: LocalFeatures, k: int = 100, *, ratio: float = 0.9, neighbours: int = 10
    ) -> tuple[list[str], np.ndarray]:
        """The ``k`` photos with most votes (at least one), best first, and their votes."""
        v = self.votes(query, ratio=ratio, neighbours=neighbours)
        order = np.argsort(-v, kind="stable")[:k]
        order = order[v[order] > 0]
        return [self.keys[i] for i in order], v[order]

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """``path`` (FAISS index) and ``path.npz`` (owners, keys, kind), each written atomically."""
        path = Path(path)
        with atomic_path(path) as tmp:
            faiss.write_index(self.index, str(tmp))
        with atomic_path(path.with_suffix(path.suffix + ".npz")) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh, owners=self.owners, keys=np.array(self.keys, dtype=str), kind=self.kind, nprobe=self.nprobe
                )

    @classmethod
    def load(cls, path: str | Path) -> LocalInvertedIndex:
        path = Path(path)
        with np.load(path.with_suffix(path.suffix + ".npz"), allow_pickle=False) as z:
            owners, keys, kind, nprobe = z["owners"], z["keys"].tolist(), str(z["kind"]), int(z["nprobe"])
        index = faiss.read_index(str(path))
        assert isinstance(index, faiss.IndexIVF)  # save() writes build()'s IndexIVFFlat
        return cls(index, owners, keys, kind, nprobe)


def merge_shortlists(
    global_keys: Sequence[str],
    global_scores: Sequence[float],
    local_keys: Sequence[str],
    similarity: Callable[[list[str]], np.ndarray],
) -> tuple[list[str], np.ndarray]:
    """The global shortlist followed by the local-index candidates it lacks.

    Appended photos get their true global similarity from ``similarity(keys)`` so that a
    re-ranking over the union compares like with like; the union is sorted by global score.
    """
    seen = set(global_keys)
    extra = [k for k in local_keys if k not in seen]
    keys = list(global_keys) + extra
    scores = np.concatenate(
        [
            np.asarray(global_scores, np.float32),
            np.asarray(similarity(extra), np.float32) if extra else np.zeros(0, np.float32),
        ]
    )
    order = np.argsort(-scores, kind="stable")
    return [keys[i] for i in order], scores[order]
