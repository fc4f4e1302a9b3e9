"""Retrieval on arrays already extracted: a space of queries, database and labelled photos, its
whitening, DBA / alpha-QE and category re-rank, and the validation split carved from labelled photos
(per landmark: a third votes, a third is the database, a third are the queries). What the ablation
and the calibrations score."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from ..config import CategoryConfig, ExpansionConfig, WhiteningConfig
from ..features.whitening import learn_whitening
from ..metrics import mean_average_precision_at_k
from ..recognition.knn import voted_labels
from ..retrieval.category import category_first, confident_labels
from ..retrieval.expansion import QeWeights, dba, knn, label_verifier, query_expansion

log = logging.getLogger(__name__)


@dataclass
class Space:
    """Vectors of one descriptor space: the retrieval database and the queries, plus the landmark
    each of them is predicted to show (-1 = none) — the classification verifier of ``verify="vote"`` —
    and, where known, the top-k labelled neighbours behind it (labels, similarities; for the category
    re-rank, whose confidence rule reads them)."""

    index: np.ndarray  # N x D, the database that is ranked
    queries: np.ndarray  # Q x D
    index_pred: np.ndarray  # N, predicted landmark ids
    query_pred: np.ndarray  # Q
    index_votes: tuple[np.ndarray, np.ndarray] | None = None  # (N x k labels, N x k similarities)
    query_votes: tuple[np.ndarray, np.ndarray] | None = None

    def map(self, fn: Callable[[np.ndarray], np.ndarray]) -> Space:
        return dataclasses.replace(self, index=fn(self.index), queries=fn(self.queries))

    @classmethod
    def with_votes(
        cls, index: np.ndarray, queries: np.ndarray, labelled: np.ndarray, labels: np.ndarray, k: int = 5
    ) -> Space:
        """Predictions by top-``k`` voting among ``labelled`` photos (what ``landmark recognize`` does)."""
        iv, qv = neighbour_labels(index, labelled, labels, k), neighbour_labels(queries, labelled, labels, k)
        return cls(index, queries, voted_labels(*iv, k), voted_labels(*qv, k), iv, qv)


def whiten(
    space: Space, wc: WhiteningConfig, source: np.ndarray | None = None
) -> tuple[Space, Callable[[np.ndarray], np.ndarray]]:
    """PCA(-whitening) learned on ``source`` (default: ``space.index``, unlabelled), applied to every
    part; returns the new space and the transform."""
    source = space.index if source is None else source
    dim = min(wc.dim, source.shape[1], len(source) - 1)
    w = learn_whitening(source, dim, power=wc.power, shrinkage=wc.shrinkage)
    return space.map(w.apply), w.apply


def neighbour_labels(
    vectors: np.ndarray, labelled: np.ndarray, labels: np.ndarray, k: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and similarities (each N x k, -1 / -inf where missing) of each vector's top-``k`` labelled photos."""
    if not len(labelled) or not len(vectors):
        return np.full((len(vectors), k), -1, np.int64), np.full((len(vectors), k), -np.inf, np.float32)
    sims, idx = knn(vectors, labelled, k)
    return np.where(idx >= 0, np.asarray(labels)[np.clip(idx, 0, None)], -1), sims


def category_ranks(ranks: np.ndarray, space: Space, cfg: CategoryConfig) -> np.ndarray:
    """``ranks`` (Q x k database indices, -1 = none) with each query's confident landmark first
    (Baidu §2.2, :func:`landmark.retrieval.category.category_first`)."""
    if space.index_votes is None or space.query_votes is None:
        raise ValueError("the category re-rank needs the labelled neighbours of the space (Space.with_votes)")
    k = space.query_votes[0].shape[1]
    q_lab = confident_labels(*space.query_votes, cfg, k)
    d_lab = confident_labels(*space.index_votes, cfg, k)
    out = np.full_like(ranks, -1)
    for i, row in enumerate(ranks):
        row = row[row >= 0]
        out[i, : len(row)] = row[category_first(row, int(q_lab[i]), d_lab[row])]
    return out


def retrieve(space: Space, ec: ExpansionConfig, *, dba_on: bool, qe_on: bool, k: int = 100) -> np.ndarray:
    """Q x k database indices after optional DBA and alpha-QE (M from ``ec.verify``)."""
    return retrieve_scored(space, ec, dba_on=dba_on, qe_on=qe_on, k=k)[1]


def retrieve_scored(
    space: Space, ec: ExpansionConfig, *, dba_on: bool, qe_on: bool, k: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, database indices), each Q x k, after optional DBA and alpha-QE."""
    db = space.index
    db_labels, q_labels = space.index_pred, space.query_pred
    if dba_on:
        db = dba(db, label_verifier(ec, db_labels, db_labels), shortlist=ec.shortlist)
    q = space.queries
    if qe_on:
        q = query_expansion(
            q,
            db,
            label_verifier(ec, q_labels, db_labels),
            shortlist=ec.shortlist,
            weights=cast(QeWeights, ec.qe_weights),
            alpha=ec.alpha,
        )
    return knn(q, db, k)


# -- validation split from train -----------------------------------------------------------------
def validation_split(
    keys: Sequence[str], labels: Sequence[int], seed: int = 0, held: Sequence[bool] | None = None
) -> tuple[list[int], list[int], list[int]]:
    """Per landmark, shuffled photos dealt round-robin into (vote, database, query) positions.

    ``held`` marks photos a trained model never trained on: then the others all vote (as the
    trained-on ``train`` photos do on test) and the held ones are dealt into (database, query), so
    that only photos the model never saw are retrieved and searched for, as on test.
    """
    rng = np.random.default_rng(seed)
    folds: tuple[list[int], list[int], list[int]] = ([], [], [])
    by_label: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(int(lab), []).append(i)
    for lab in sorted(by_label):
        idx = [int(i) for i in rng.permutation(by_label[lab])]
        if held is None:
            for j, i in enumerate(idx):
                folds[j % 3].append(i)
            continue
        folds[0].extend(i for i in idx if not held[i])
        for j, i in enumerate(i for i in idx if held[i]):
            folds[1 + j % 2].append(i)
    return folds


def validation_space(
    train: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    negatives: np.ndarray | None = None,
    k: int = 5,
    held: Sequence[bool] | None = None,
) -> tuple[Space, Callable[[np.ndarray], float]]:
    """A :class:`Space` and scorer for held-out train photos (whitened by the caller, if at all).

    ``negatives`` (known non-landmark photos) join the database after the landmark photos, relevant
    to no query. ``held``: photos a trained model never saw (see :func:`validation_split`).
    """
    vote, db, qs = validation_split([str(i) for i in range(len(labels))], np.asarray(labels).tolist(), seed, held)
    labels = np.asarray(labels)
    database, db_labels = train[db], labels[db]
    if negatives is not None and len(negatives):
        database = np.concatenate([database, np.asarray(negatives, database.dtype)])
        db_labels = np.concatenate([db_labels, np.full(len(negatives), -1, db_labels.dtype)])
    space = Space.with_votes(database, train[qs], train[vote], labels[vote], k)
    q_labels = labels[qs]
    rankings_truth = {str(i): [str(j) for j in np.flatnonzero(db_labels == q_labels[i])] for i in range(len(qs))}

    def score(ranks: np.ndarray) -> float:
        return mean_average_precision_at_k(
            {str(i): [str(j) for j in r if j >= 0] for i, r in enumerate(ranks)}, rankings_truth, k=100
        )

    return space, score


THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(18))  # 0 (agreement alone, in practice) .. 0.85


def fit_threshold(
    space: Space, score: Callable[[np.ndarray], float], ec: ExpansionConfig, thresholds: Sequence[float] = THRESHOLDS
) -> tuple[ExpansionConfig, list[dict[str, float]]]:
    """``ec`` with the similarity threshold of its verifier under which its DBA / alpha-QE score best
    on ``space`` (ties: the lowest), and every trial; ``ec`` unchanged where nothing reads a threshold."""
    if "threshold" not in ec.verify or not (ec.dba or ec.qe):
        return ec, []
    best, best_map, trials = ec, -1.0, []
    for t in thresholds:
        e = dataclasses.replace(ec, threshold=float(t))
        m = score(retrieve(space, e, dba_on=ec.dba, qe_on=ec.qe))
        trials.append({"threshold": float(t), "map": m})
        if m > best_map + 1e-9:
            best, best_map = e, m
    return best, trials
