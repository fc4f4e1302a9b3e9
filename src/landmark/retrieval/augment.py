"""DBA and alpha-QE through the store's index (Baidu GLR19 §2.3 on large or compressed stores).

:func:`augment_store` is the database side, a resumable store job: each stored photo's top
``expansion.shortlist`` neighbours come from the store's own search (batched, compressed or exact),
are verified as :class:`~landmark.retrieval.search.ExpandedSearch` verifies them (``expansion.verify``:
labels of labelled photos, the top-``vote_k`` vote among the labelled photos for unlabelled ones,
the similarity threshold), and the photo's vector is aggregated with eq. (1)-(2) from its verified
neighbours' stored vectors (:func:`~landmark.retrieval.expansion.aggregate`; a photo with no verified
neighbour keeps its own vector). The augmented vectors are committed chunk by chunk into the store's
second vector set (:class:`~landmark.index.augmented.AugmentedVectors`), which then gets an index of
the store's kind; a killed job goes on where it stopped. Only the chunk's vectors and its verified
neighbours' are read; one label per stored photo (8 bytes) is held in memory.

:class:`IndexedExpansion` is the query side: the query's shortlist from the augmented index, verified,
aggregated with eq. (3)-(4) from the neighbours' augmented vectors read from disk, and searched again.

Photos added later are augmented at add time (``Building`` runs the job for them; the photos already
augmented keep their vectors, which the newcomers do not join until ``landmark index expand --restart``);
removed photos leave the set in the store's own commit. A set that misses stored photos, or was made with
other verification settings than the ones in force, is not searched: ``landmark search`` then does not
expand such a store by default, and where asked to, expands the queries alone (alpha-QE through the
plain index); ``landmark index info`` says which.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from ..index.augmented import MISSING, AugmentedVectors
from ..index.store import Store
from ..utils.progress import progress_bar
from .config import ExpansionConfig
from .expansion import (
    EXPANSION_META,
    PairInliers,
    QeWeights,
    aggregate,
    dba_n,
    inlier_verifier,
    label_verifier,
    move_verified_first,
    qe_n,
    uses_votes,
)
from .search import Ranking, StoredPairInliers, store_vote

log = logging.getLogger(__name__)

CHUNK = 1000  # photos searched, augmented and committed at a time
DBA_WIDTH = 21  # the verified-first neighbour columns DBA can use: N <= 20, the photo itself among them
QE_WIDTH = 6  # and QE: N <= 6, the query itself not among them


def dba_settings(ec: ExpansionConfig, vote_k: int, min_inliers: int = 8) -> dict[str, Any]:
    """What the augmented vectors depend on (the settings that apply to ``ec.verify``): a set made with
    other settings is stale. ``min_inliers``: the inliers that verify a neighbour for ``verify=inliers``
    (``rerank.verified_inliers``)."""
    inliers = ec.verify == "inliers"
    settings = {
        "verify": ec.verify,
        "threshold": ec.threshold if "threshold" in ec.verify else None,
        "shortlist": ec.shortlist,
        "vote_k": vote_k if uses_votes(ec) else None,
        "inlier_k": ec.inlier_k if inliers else None,
        "min_inliers": min_inliers if inliers else None,
    }
    return {k: v for k, v in settings.items() if v is not None}


def calibrated(store: Store, ec: ExpansionConfig) -> bool:
    """Whether the store's calibration validated DBA / alpha-QE as ``ec`` sets them (on its own labelled
    photos, ``landmark calibrate``): its report kept the same switches, verifier and threshold."""
    report = store.meta_value(EXPANSION_META)
    return bool(
        report
        and report.get("dba") == ec.dba
        and report.get("qe") == ec.qe
        and report.get("verify") == ec.verify
        and report.get("threshold") == ec.threshold
    )


@dataclass(frozen=True)
class AugmentStatus:
    """Where a store's augmented vectors stand: ``state`` none | current | stale | partial, and one line."""

    state: str
    indexed: int
    photos: int
    line: str

    @property
    def current(self) -> bool:
        return self.state == "current"


def augment_status(store: Store, ec: ExpansionConfig, vote_k: int, min_inliers: int = 8) -> AugmentStatus:
    """The state of ``store``'s augmented vectors for the expansion settings ``ec`` (``landmark index info``)."""
    aug = AugmentedVectors(store)
    state = aug.state()
    n = len(store)
    if state is None:
        how = (
            f"DBA runs in memory on this exact store of at most {ec.search_max} photos"
            if not store.compressed and n <= ec.search_max
            else "`landmark index expand` makes them"
        )
        return AugmentStatus("none", 0, n, f"none: augmented 0 of {n} photos ({how})")
    d = aug.describe()
    indexed, pending, removed = d["indexed"], d["pending"], d["removed_in_index"]
    made, now = aug.settings or {}, dba_settings(ec, vote_k, min_inliers)
    gone = f"; {removed} removed photos left in its index until the next expand" if removed else ""
    if made != now:
        changed = ", ".join(f"{k} {made.get(k)} -> {now.get(k)}" for k in {**made, **now} if made.get(k) != now.get(k))
        return AugmentStatus(
            "stale",
            indexed,
            n,
            f"stale: augmented {indexed} of {n} photos with other settings ({changed}); "
            "search runs no DBA through the index until `landmark index expand` runs again",
        )
    if indexed < n or not aug.indexed:
        return AugmentStatus(
            "partial",
            indexed,
            n,
            f"partial: augmented {indexed} of {n} photos ({pending} awaiting the index); "
            "search runs no DBA through the index until `landmark index expand` finishes",
        )
    return AugmentStatus("current", indexed, n, f"augmented {indexed} of {n} photos ({d['index']} index){gone}")


@dataclass
class AugmentReport:
    """What one :func:`augment_store` run did."""

    augmented: int  # photos augmented by this run
    voted: int  # unlabelled photos voted by this run
    remaining: int  # stored photos still without an augmented vector (a run with a limit)
    indexed: bool  # whether the index of the augmented vectors was (re)written
    seconds: float
    status: AugmentStatus


class _Labels:
    """Each stored photo's landmark by row for verification, votes made when first needed and kept."""

    def __init__(self, store: Store, aug: AugmentedVectors, vote_k: int):
        self.store, self.aug, self.vote_k = store, aug, vote_k
        self.by_row = aug.labels()
        self.voted = 0

    def need(self, rows: np.ndarray) -> np.ndarray:
        """Labels of ``rows`` (-1 for a row that is not stored), voting the unlabelled ones that have none."""
        rows = np.asarray(rows, np.int64)
        if len(rows) and rows.max() >= len(self.by_row):  # added since the job began
            grown = np.full(int(rows.max()) + 1, MISSING, np.int64)
            grown[: len(self.by_row)] = self.by_row
            more = np.arange(len(self.by_row), len(grown))
            got = self.aug.labels_of(more.tolist())
            grown[more] = [got.get(int(r), -1) for r in more]
            self.by_row = grown
        todo = np.unique(rows[self.by_row[rows] == MISSING])
        if len(todo):
            meta = self.store.row_meta(todo.tolist())
            todo = np.array([r for r in todo.tolist() if r in meta], np.int64)
            labels = np.full(len(todo), -1, np.int64)
            for lo in range(0, len(todo), 4096):
                part = todo[lo : lo + 4096]
                labels[lo : lo + len(part)] = store_vote(self.store, self.store.vectors_of_rows(part), self.vote_k)
            self.aug.set_votes(todo, [meta[int(r)][0] for r in todo], labels)
            self.by_row[todo] = labels
            self.voted += len(todo)
        return self.by_row[rows]


def augment_rows(
    store: Store,
    rows: np.ndarray,
    ec: ExpansionConfig,
    labels: _Labels | None,
    *,
    inliers: tuple[StoredPairInliers, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """DBA (eq. (1)-(2)) of the stored photos ``rows`` through the store's search: their vectors and
    their augmented vectors. ``labels``: for a verifier that compares landmarks; ``inliers``: for
    ``verify=inliers``, the stored pairs' local-feature inliers and how many verify a neighbour."""
    vectors = store.vectors_of_rows(rows)
    sims, nb = store.search_rows(vectors, min(ec.shortlist, max(1, len(store))))
    nb = np.where(nb == rows[:, None], -1, nb)  # the photo itself (exact dba skips it in its list)
    if labels is not None:
        valid = nb[nb >= 0]
        db = labels.need(np.concatenate([rows, valid]))
        by_row = labels.by_row
        own = db[: len(rows)]
    else:
        by_row, own = None, None
    verified = label_verifier(ec, own, by_row)
    if ec.verify == "inliers":  # without local features nothing is verified: every photo keeps its vector
        pairs, min_inliers = inliers if inliers else (None, 0)
        verified = inlier_verifier(pairs and _row_inliers(store, rows, pairs), ec.inlier_k, min_inliers)
    idx, sims, joins, m = move_verified_first(nb, sims, verified)
    idx, sims, joins = idx[:, :DBA_WIDTH], sims[:, :DBA_WIDTH], joins[:, :DBA_WIDTH]
    used = np.unique(idx[joins & (idx >= 0)])
    local = np.where(joins & (idx >= 0), np.searchsorted(used, idx), -1)
    return vectors, aggregate(vectors, store.vectors_of_rows(used), local, sims, dba_n(m), joins=local >= 0)


def _row_inliers(store: Store, rows: np.ndarray, pair_inliers: StoredPairInliers) -> PairInliers:
    """``pair_inliers`` (stored keys) as a function of neighbour lists of store rows (-1 = none, kept
    in place) of the photos ``rows``."""

    def inliers(idx: np.ndarray) -> np.ndarray:
        meta = store.row_meta(np.unique(np.concatenate([rows, idx[idx >= 0]])).tolist())
        keys = [meta[int(r)][0] for r in rows]
        lists = [[meta[int(j)][0] for j in row if j >= 0] for row in idx]
        got = np.asarray(pair_inliers(keys, lists))
        out = np.full(idx.shape, -1, np.int32)
        for i, row in enumerate(idx):
            cols = np.flatnonzero(row >= 0)
            out[i, cols] = got[i, : len(cols)]
        return out

    return inliers


def augment_store(
    store: Store,
    ec: ExpansionConfig,
    vote_k: int = 5,
    *,
    chunk: int = CHUNK,
    limit: int | None = None,
    restart: bool = False,
    pair_inliers: StoredPairInliers | None = None,
    min_inliers: int = 8,
    progress: bool | None = None,
) -> AugmentReport:
    """Augment (DBA) every stored photo that has no augmented vector yet, ``chunk`` photos a commit, then
    index them all (see the module). ``limit``: augment at most so many this run (the index is written
    once none is left). ``restart``: drop the augmented vectors (and votes) and begin again (a set made
    with other verification settings is dropped anyway). Resumable: a killed run keeps its commits."""
    t0 = time.perf_counter()
    aug = AugmentedVectors(store)
    aug.start(dba_settings(ec, vote_k, min_inliers), restart=restart)
    todo = aug.todo()
    if limit is not None:
        todo = todo[: max(0, int(limit))]
    labels = _Labels(store, aug, vote_k) if uses_votes(ec) else None
    with progress_bar("augment (DBA)", total=len(todo), enabled=progress) as bar:
        for lo in range(0, len(todo), chunk):
            rows = todo[lo : lo + chunk]
            meta = store.row_meta(rows.tolist())
            rows = np.array([r for r in rows.tolist() if r in meta], np.int64)  # removed since the job began
            if len(rows):
                _, augmented = augment_rows(
                    store, rows, ec, labels, inliers=(pair_inliers, min_inliers) if pair_inliers else None
                )
                aug.add_part(rows, [meta[int(r)][0] for r in rows], augmented)
            bar.advance(len(todo[lo : lo + chunk]))
    remaining = len(aug.todo())
    indexed = aug.finish(progress=progress) if not remaining else False
    return AugmentReport(
        len(todo),
        labels.voted if labels else 0,
        remaining,
        indexed,
        time.perf_counter() - t0,
        augment_status(store, ec, vote_k, min_inliers),
    )


class IndexedExpansion:
    """:class:`~landmark.retrieval.search.ExpandedSearch` through the index: the database is the store's
    augmented vectors where they are current for ``ec`` (DBA), else its own vectors (no DBA, with a
    warning when ``ec.dba`` asks for it); alpha-QE (``ec.qe``) expands each query from its verified
    neighbours' vectors, read from disk. Nothing is read into memory but those neighbours' vectors.
    ``splits``: search only the stored photos of these splits (the augmented vectors are of the whole
    store). Made once per store generation and augmented generation."""

    def __init__(
        self,
        store: Store,
        ec: ExpansionConfig,
        splits: Sequence[str] | None = None,
        vote_k: int = 5,
        *,
        min_inliers: int = 8,
    ):
        self.store, self.ec, self.vote_k = store, ec, vote_k
        self.splits = tuple(sorted(splits)) if splits else None
        self.aug = AugmentedVectors(store)
        self.generation, self.aug_generation = store.generation, self.aug.generation
        self.dba = bool(ec.dba and self.aug.current(dba_settings(ec, vote_k, min_inliers)))
        if ec.dba and not self.dba:
            log.warning(
                "DBA skipped on %s (%s): run `landmark index expand`",
                store.root,
                augment_status(store, ec, vote_k, min_inliers).line,
            )
        self._votes: dict[int, int] = {}

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.dba:
            return self.aug.search(queries, k, splits=self.splits)
        return self.store.search_rows(queries, k, splits=self.splits)

    def _vectors(self, rows: np.ndarray) -> np.ndarray:
        return self.aug.vectors(rows) if self.dba else self.store.vectors_of_rows(rows)

    def vote(self, vectors: np.ndarray) -> np.ndarray:
        """Predicted landmark of each vector by the top-``vote_k`` vote among labelled stored photos (-1: none)."""
        return store_vote(self.store, vectors, self.vote_k)

    def labels(self, rows: np.ndarray) -> np.ndarray:
        """Landmarks of stored ``rows`` for verification: label, kept vote, or a vote made now (cached)."""
        got = self.aug.labels_of(rows.tolist())
        out = np.array([got.get(int(r), -1) for r in rows], np.int64)
        todo = [int(r) for r in rows[out == MISSING] if int(r) not in self._votes]
        if todo:
            self._votes.update(zip(todo, self.vote(self.store.vectors_of_rows(np.array(todo, np.int64))).tolist()))
        missing = np.flatnonzero(out == MISSING)
        out[missing] = [self._votes[int(r)] for r in rows[missing]]
        return out

    def expand(self, queries: np.ndarray) -> np.ndarray:
        """alpha-QE of ``queries`` (eq. (3)-(4)) from their verified neighbours in the database."""
        ec = self.ec
        sims, rows = self._search(queries, min(ec.shortlist, max(1, len(self.store))))
        found = np.unique(rows[rows >= 0])
        local = np.where(rows >= 0, np.searchsorted(found, rows), -1)
        verifier = label_verifier(
            ec,
            self.vote(queries) if uses_votes(ec) else None,
            self.labels(found) if uses_votes(ec) else None,
        )
        idx, sims, joins, m = move_verified_first(local, sims, verifier)
        idx, sims, joins = idx[:, :QE_WIDTH], sims[:, :QE_WIDTH], joins[:, :QE_WIDTH]
        used = np.unique(idx[joins & (idx >= 0)])
        near = np.where(joins & (idx >= 0), np.searchsorted(used, idx), -1)
        return aggregate(
            queries,
            self._vectors(found[used]),
            near,
            sims,
            qe_n(m),
            weights=cast(QeWeights, ec.qe_weights),
            alpha=ec.alpha,
            joins=near >= 0,
        )

    def rank(self, queries: np.ndarray, k: int = 100, *, qe: bool | None = None) -> list[Ranking]:
        """Top-``k`` stored photos for each query vector, best first; ``qe=False`` searches the database
        with the queries as they are (default: ``ec.qe``)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if not len(self.store):
            return [Ranking([], []) for _ in queries]
        if (self.ec.qe if qe is None else qe) and len(queries):
            queries = self.expand(queries)
        sims, rows = self._search(queries, max(1, min(int(k), len(self.store))))
        meta = self.store.row_meta(np.unique(rows[rows >= 0]).tolist())
        return [
            Ranking([meta[j][0] for j in row if j in meta], [float(s) for s, j in zip(srow, row) if j in meta])
            for srow, row in zip(sims, rows.tolist())
        ]
