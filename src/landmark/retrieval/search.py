"""Ranked retrieval over the store: the first stage every re-ranking step builds on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import faiss
import numpy as np

from ..index.store import Store
from ..recognition.knn import voted_labels
from .config import ExpansionConfig
from .expansion import QeWeights, dba, inlier_verifier, label_verifier, query_expansion, uses_votes

# stored keys, and a list of stored neighbour keys for each -> their local-feature inliers (rows padded with -1)
StoredPairInliers = Callable[[Sequence[str], Sequence[Sequence[str]]], np.ndarray]


@dataclass(frozen=True)
class Ranking:
    """Stored images for one query, best first."""

    keys: list[str]
    scores: list[float]


def rank(store: Store, queries: np.ndarray, k: int = 100, *, splits: Sequence[str] | None = None) -> list[Ranking]:
    """Top-``k`` stored images for each query vector (exact inner product on unit vectors)."""
    result = store.search(queries, k, splits=splits)
    out = []
    for keys, scores in zip(result.keys, result.scores):
        pairs = [(key, float(s)) for key, s in zip(keys, scores) if key is not None]
        out.append(Ranking([p[0] for p in pairs], [p[1] for p in pairs]))
    return out


def store_vote(store: Store, vectors: np.ndarray, k: int) -> np.ndarray:
    """Predicted landmark of each vector by the top-``k`` vote among the labelled stored photos (-1: none)."""
    if not len(vectors):
        return np.zeros(0, np.int64)
    result = store.search(vectors, k, labelled_only=True)
    return voted_labels(result.landmark_ids, result.scores, k)


class ExpandedSearch:
    """:func:`rank` with DBA on the database and alpha-QE on the queries (Baidu GLR19 §2.3) over a store.

    The database is the store's photos of ``splits`` (all by default). Made once per store
    generation: the database vectors are read into memory (4 x D bytes a photo), augmented by DBA
    if ``ec.dba`` and searched exactly; alpha-QE (``ec.qe``) expands each query from its neighbours
    in that augmented database. With ``ec.verify="vote"`` a neighbour counts as verified (M of
    eq. (1)/(3)) when its landmark matches the query's predicted one (``vote+threshold``: and it is
    more similar than ``ec.threshold``): a labelled photo's landmark is
    its label, an unlabelled photo's and a query's are the top-``vote_k`` vote among the store's
    labelled photos (what recognition predicts). With ``ec.verify="inliers"`` a database photo's
    neighbour is verified by ``pair_inliers`` (at least ``min_inliers`` local-feature inliers among its
    ``ec.inlier_k`` nearest); queries then have no verified neighbour, so alpha-QE leaves them as they
    are. This is what ``landmark evaluate`` measures (``index`` as the database, ``train`` voting).
    """

    def __init__(
        self,
        store: Store,
        ec: ExpansionConfig,
        splits: Sequence[str] | None = None,
        vote_k: int = 5,
        *,
        pair_inliers: StoredPairInliers | None = None,
        min_inliers: int = 8,
    ):
        self.store, self.ec, self.vote_k = store, ec, vote_k
        self.generation = store.generation
        self.splits = tuple(sorted(splits)) if splits else None
        self.keys = [k for s in self.splits for k in store.keys(s)] if self.splits else store.keys()
        vectors = store.vectors(self.keys).astype(np.float32)
        self.labels = np.full(len(self.keys), -1, np.int64)
        if uses_votes(ec) and len(self.keys):
            rows = store.get(self.keys)
            own = np.array([-1 if rows[k].landmark_id is None else rows[k].landmark_id for k in self.keys], np.int64)
            unlabelled = np.flatnonzero(own < 0)
            own[unlabelled] = self.vote(vectors[unlabelled])
            self.labels = own
        if ec.dba and len(self.keys):
            verified = label_verifier(ec, self.labels, self.labels)
            if ec.verify == "inliers":
                keys = self.keys

                def inliers(idx: np.ndarray) -> np.ndarray:
                    assert pair_inliers is not None
                    lists = [[keys[j] for j in row if j >= 0] for row in idx]
                    out = np.full(idx.shape, -1, np.int32)
                    got = np.asarray(pair_inliers(keys, lists))
                    out[:, : got.shape[1]] = got
                    return out

                verified = inlier_verifier(inliers if pair_inliers else None, ec.inlier_k, min_inliers)
            vectors = dba(vectors, verified, shortlist=ec.shortlist)
        self.vectors = vectors
        self.index = faiss.IndexFlatIP(store.dim)
        self.index.add(np.ascontiguousarray(vectors))

    def vote(self, vectors: np.ndarray) -> np.ndarray:
        """Predicted landmark of each vector by the top-``vote_k`` vote among labelled stored photos (-1: none)."""
        return store_vote(self.store, vectors, self.vote_k)

    def rank(self, queries: np.ndarray, k: int = 100, *, qe: bool | None = None) -> list[Ranking]:
        """Top-``k`` database photos for each query vector, best first; ``qe=False`` searches the
        (augmented) database with the queries as they are (default: ``ec.qe``)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if not len(self.keys):
            return [Ranking([], []) for _ in queries]
        if (self.ec.qe if qe is None else qe) and len(queries):
            q_labels = self.vote(queries) if uses_votes(self.ec) else None
            neighbours = self.index.search(queries, min(self.ec.shortlist, len(self.keys)))
            queries = query_expansion(
                queries,
                self.vectors,
                label_verifier(self.ec, q_labels, self.labels),
                neighbours=neighbours,
                weights=cast(QeWeights, self.ec.qe_weights),
                alpha=self.ec.alpha,
            )
        sims, idx = self.index.search(queries, max(1, min(int(k), len(self.keys))))
        return [
            Ranking([self.keys[j] for j in row if j >= 0], [float(s) for s, j in zip(srow, row) if j >= 0])
            for srow, row in zip(sims, idx)
        ]
