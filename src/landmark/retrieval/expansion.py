"""Database-side augmentation (DBA) and alpha query expansion (alpha-QE), Baidu GLR19 §2.3.

Both replace a descriptor by a weighted sum of itself and its best neighbours, then re-normalise:

* the top ``shortlist`` (300) neighbours are found by inner product;
* a boolean ``verified`` matrix (Q x K, aligned with those neighbour lists) marks the neighbours some
  verifier accepted as the same landmark — local-feature matching, classification agreement, or a
  similarity threshold. Verified neighbours are moved to the top (stable, so each group keeps its
  similarity order) and ``M`` is their number;
* ``N`` neighbours are kept: eq. (1) for DBA (N = 10 if M <= 10 else min(M, 20)), eq. (3) for QE
  (N = 3 if M <= 3 else min(M, 6));
* the item itself is rank ``x = 0`` and its verified neighbours ranks ``x = 1 .. min(M, N-1)``; weights
  are ``(N - x) / N`` (eq. (2)/(4)). ``qe_weights="alpha"`` uses ``similarity ** alpha`` instead
  (Radenovic et al.'s alpha-QE; the item itself has weight 1).

Only verified neighbours join the sum (§2.3: "verify on the top 300 neighbors to obtain M same landmark
images"): an unverified neighbour of a photo with few photos of its landmark is usually another place,
and averaging it in moves the photo towards that place. A photo with no verified neighbour keeps its
own descriptor, so expansion can only move a photo towards photos verified as its landmark. Without a
verifier (``verified=None``, ``expansion.verify=none``) every neighbour counts as verified: the classic
unverified DBA / QE over the 10 / 3 nearest, which helps where landmarks have many photos and hurts
where they have few.
:func:`vote_verified` and :func:`threshold_verified` make ``verified`` from predicted labels and/or a
similarity threshold (fitted on a validation split); :func:`inlier_verifier` from the local-feature
inliers of each photo with its nearest neighbours (``verify="inliers"``: no label and no fitted
threshold, what a store too small to validate the others falls back to).

Everything here is pure numpy plus FAISS exact search over the given arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import faiss
import numpy as np

from ..features.whitening import l2n
from .config import VERIFIERS, ExpansionConfig

SHORTLIST = 300
EXPANSION_META = "expansion_calibration"  # the store meta value keeping landmark.evaluation.calibration's report

# A Q x K boolean array aligned with the top-K neighbour lists, or a function (sims, idx) -> that array
# (for when the lists are computed here, e.g. QE against the augmented database).
Verified = np.ndarray | Callable[[np.ndarray, np.ndarray], np.ndarray] | None
QeWeights = Literal["rank", "alpha"]  # ExpansionConfig.qe_weights (checked against QE_WEIGHTS)
# neighbour lists (Q x K database indices, -1 = none) -> their local-feature inliers, Q x K (-1 / 0: none)
PairInliers = Callable[[np.ndarray], np.ndarray]


def n_neighbours(m: np.ndarray | int, low: int, high: int) -> np.ndarray:
    """``N = low if M <= low else min(M, high)`` elementwise (eq. (1) with 10/20, eq. (3) with 3/6)."""
    m = np.asarray(m, dtype=np.int64)
    return np.where(m <= low, low, np.minimum(m, high))


def dba_n(m: np.ndarray | int) -> np.ndarray:
    """Eq. (1): neighbours aggregated by DBA."""
    return n_neighbours(m, 10, 20)


def qe_n(m: np.ndarray | int) -> np.ndarray:
    """Eq. (3): neighbours aggregated by query expansion."""
    return n_neighbours(m, 3, 6)


def rank_weights(n: int) -> np.ndarray:
    """Eq. (2)/(4): ``(N - x) / N`` for ``x = 0 .. N-1``."""
    return (n - np.arange(n, dtype=np.float64)) / n


def knn(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k``: (similarities Q x k, indices Q x k; -1 where fewer than k)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    database = np.ascontiguousarray(database, dtype=np.float32)
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    sims, idx = index.search(queries, max(1, min(int(k), len(database))) if len(database) else 1)
    return sims, idx


def move_verified_first(
    idx: np.ndarray, sims: np.ndarray, verified: Verified, *, self_in_list: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reorder each row so verified neighbours come first (stable); returns (idx, sims, verified, M),
    the verified mask in the new order. ``verified=None``: every neighbour counts as verified (M = 0,
    the paper's rule for "no same-landmark photo found"). ``self_in_list``: row ``i`` of the lists
    holds ``i`` itself (DBA over the database), which is never counted in M."""
    if callable(verified):
        verified = verified(sims, idx)
    if verified is None:
        return idx, sims, idx >= 0, np.zeros(len(idx), dtype=np.int64)
    mask = np.asarray(verified, dtype=bool)
    if mask.shape != idx.shape:
        raise ValueError(f"verified must be aligned with the neighbour lists: {mask.shape} vs {idx.shape}")
    mask = mask & (idx >= 0)
    if self_in_list:
        mask = mask & (idx != np.arange(len(idx))[:, None])
    order = np.argsort(~mask, axis=1, kind="stable")
    return (
        np.take_along_axis(idx, order, 1),
        np.take_along_axis(sims, order, 1),
        np.take_along_axis(mask, order, 1),
        mask.sum(axis=1).astype(np.int64),
    )


def aggregate(
    own: np.ndarray,
    database: np.ndarray,
    idx: np.ndarray,
    sims: np.ndarray,
    n: np.ndarray,
    *,
    weights: Literal["rank", "alpha"] = "rank",
    alpha: float = 3.0,
    self_in_list: bool = False,
    joins: np.ndarray | None = None,
) -> np.ndarray:
    """Weighted sum of each row of ``own`` (rank 0) and its first neighbours in ``idx``, re-normalised.

    ``n[i]`` items at most (the row itself included). ``self_in_list``: the neighbour lists also
    contain the row itself (DBA over the database), which is then skipped. ``joins`` (aligned with
    ``idx``): the neighbours that may join the sum (the verified ones); a row with none keeps its
    own vector (re-normalised). None: all of them.
    """
    own = np.asarray(own, dtype=np.float32)
    out = np.empty_like(own)
    for i in range(len(own)):
        ni = int(n[i])
        row_idx, row_sim = idx[i], sims[i]
        keep = row_idx >= 0
        if joins is not None:
            keep &= np.asarray(joins[i], bool)
        if self_in_list:
            keep &= row_idx != i
        row_idx, row_sim = row_idx[keep][: ni - 1], row_sim[keep][: ni - 1]
        if weights == "rank":
            w = rank_weights(ni)[: 1 + len(row_idx)]
        else:
            w = np.concatenate([[1.0], np.clip(row_sim, 0, None) ** alpha])
        out[i] = w[0] * own[i] + (w[1:, None] * database[row_idx]).sum(axis=0)
    return l2n(out)


def dba(
    database: np.ndarray,
    verified: Verified = None,
    *,
    shortlist: int = SHORTLIST,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Database-side augmentation of N x D unit vectors (eq. (1)-(2)).

    ``verified`` (N x K) is aligned with ``neighbours`` = (sims, idx) of each database vector among the
    database (its own row included, as exact search returns it); both are computed if not given.
    """
    database = np.asarray(database, dtype=np.float32)
    sims, idx = neighbours if neighbours is not None else knn(database, database, shortlist)
    idx, sims, joins, m = move_verified_first(idx, sims, verified, self_in_list=True)
    return aggregate(database, database, idx, sims, dba_n(m), self_in_list=True, joins=joins)


def query_expansion(
    queries: np.ndarray,
    database: np.ndarray,
    verified: Verified = None,
    *,
    shortlist: int = SHORTLIST,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
    weights: Literal["rank", "alpha"] = "rank",
    alpha: float = 3.0,
) -> np.ndarray:
    """Expanded query vectors (eq. (3)-(4)); search the database again with them."""
    queries = np.asarray(queries, dtype=np.float32)
    sims, idx = neighbours if neighbours is not None else knn(queries, database, shortlist)
    idx, sims, joins, m = move_verified_first(idx, sims, verified)
    return aggregate(
        queries, np.asarray(database, np.float32), idx, sims, qe_n(m), weights=weights, alpha=alpha, joins=joins
    )


def threshold_verified(sims: np.ndarray, threshold: float) -> np.ndarray:
    """Neighbours whose similarity exceeds ``threshold`` count as verified (threshold fit on validation)."""
    return np.asarray(sims) > threshold


def vote_verified(query_labels: np.ndarray, neighbour_labels: np.ndarray) -> np.ndarray:
    """Neighbours whose predicted landmark equals the query's predicted landmark (classification agreement).

    Labels are integers, ``-1`` = no prediction (never verified).
    """
    q = np.asarray(query_labels)[:, None]
    nl = np.asarray(neighbour_labels)
    return (nl == q) & (q >= 0) & (nl >= 0)


def inlier_verifier(pair_inliers: PairInliers | None, k: int, min_inliers: int) -> Verified:
    """Neighbours verified by local features: among the first ``k`` of each list (``k + 1`` columns, as a
    database photo's own list starts with itself), those with at least ``min_inliers`` inliers
    (``pair_inliers`` counts them for the lists it is given). Without ``pair_inliers`` (no local
    features) nothing is verified, so every photo keeps its own descriptor."""

    def verified(sims: np.ndarray, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx).reshape(len(idx), -1)
        mask = np.zeros(idx.shape, dtype=bool)
        cols = min(int(k) + 1, idx.shape[1])
        if pair_inliers is not None and cols and len(idx):
            mask[:, :cols] = np.asarray(pair_inliers(idx[:, :cols])) >= min_inliers
        return mask & (idx >= 0)

    return verified


def uses_votes(ec: ExpansionConfig) -> bool:
    """Whether ``ec.verify`` needs each photo's predicted landmark."""
    return ec.verify in ("vote", "vote+threshold")


def label_verifier(ec: ExpansionConfig, own_labels: np.ndarray | None, db_labels: np.ndarray | None) -> Verified:
    """The verifier ``ec.verify`` names, as a function of a (sims, idx) neighbour list (``inliers``: none
    here, as labels and similarities verify nothing then; see :func:`inlier_verifier`).

    ``vote``: the neighbour's predicted landmark (``db_labels[idx]``) equals the row's own
    (``own_labels``); ``threshold``: similarity above ``ec.threshold``; ``vote+threshold``: both
    (a photo that is no landmark still gets a voted label, so agreement alone lets such photos
    verify each other and real landmark photos); ``none``: no verifier (M = 0).
    """
    if ec.verify not in VERIFIERS:
        raise ValueError(f"expansion.verify must be one of {', '.join(VERIFIERS)}, got {ec.verify!r}")
    if ec.verify == "none":
        return None
    if ec.verify == "inliers":
        return lambda sims, idx: np.zeros(np.shape(idx), dtype=bool)
    if ec.verify == "threshold":
        return lambda sims, idx: threshold_verified(sims, ec.threshold)
    db_labels = np.asarray(db_labels)

    def voted(sims: np.ndarray, idx: np.ndarray) -> np.ndarray:
        assert own_labels is not None  # uses_votes(ec): the caller voted its rows
        agree = vote_verified(own_labels, np.where(idx >= 0, db_labels[np.clip(idx, 0, None)], -1))
        return agree & threshold_verified(sims, ec.threshold) if ec.verify == "vote+threshold" else agree

    return voted


def expanded_search(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    *,
    dba_on: bool = True,
    qe_on: bool = True,
    db_verified: Verified = None,
    q_verified: Verified = None,
    shortlist: int = SHORTLIST,
    weights: Literal["rank", "alpha"] = "rank",
    alpha: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """DBA the database, alpha-QE the queries, search again: (similarities Q x k, indices Q x k).

    ``db_verified`` / ``q_verified`` are aligned with the top-``shortlist`` lists of the *original*
    database vectors (for DBA) and of the queries against the augmented database (for QE); pass
    functions ``(sims, idx) -> bool array`` to verify lists computed here.
    """
    db = dba(database, db_verified, shortlist=shortlist) if dba_on else np.asarray(database, np.float32)
    q = np.asarray(queries, np.float32)
    if qe_on:
        q = query_expansion(q, db, q_verified, shortlist=shortlist, weights=weights, alpha=alpha)
    return knn(q, db, k)
