"""Recognition by voting among the nearest labelled photos (Baidu GLR19 §3.1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Vote:
    """The prediction for one query: label, score, and the votes it got among ``k`` neighbours."""

    landmark_id: int | None
    score: float
    votes: int


def knn_vote(labels: np.ndarray, scores: np.ndarray, k: int = 5) -> list[Vote]:
    """Label each query with the most frequent label among its top-``k`` labelled neighbours.

    ``labels`` and ``scores`` are ``Q x K`` (K >= k), neighbours sorted by decreasing score,
    ``-1`` marking a missing or unlabelled neighbour. The predicted score is the highest
    similarity among the neighbours that carry the predicted label. Ties in the vote count go
    to the label with the higher best score. A query with no labelled neighbour gets
    ``Vote(None, 0.0, 0)``.
    """
    labels = np.asarray(labels)[:, :k]
    scores = np.asarray(scores, dtype=np.float64)[:, :k]
    out: list[Vote] = []
    for lab_row, sc_row in zip(labels, scores):
        valid = lab_row >= 0
        if not valid.any():
            out.append(Vote(None, 0.0, 0))
            continue
        best: tuple[int, float, int] | None = None  # (votes, best score, label)
        for lab in np.unique(lab_row[valid]):
            mask = lab_row == lab
            cand = (int(mask.sum()), float(sc_row[mask].max()), int(lab))
            if best is None or cand[:2] > best[:2]:
                best = cand
        assert best is not None  # a valid label was voted for
        votes, score, lab = best
        out.append(Vote(lab, score, votes))
    return out


def voted_labels(labels: np.ndarray, scores: np.ndarray, k: int = 5) -> np.ndarray:
    """The landmark id :func:`knn_vote` predicts for each row, ``-1`` where none (an int64 array)."""
    return np.array([-1 if v.landmark_id is None else v.landmark_id for v in knn_vote(labels, scores, k)], np.int64)


def stack_views(vectors: np.ndarray, regions: np.ndarray | None) -> np.ndarray:
    """``Q x V x d`` float32: each query's global descriptor, then its regions (``Q x R x d``) if given."""
    views = np.asarray(vectors, np.float32)[:, None]
    return views if regions is None else np.concatenate([views, regions.astype(np.float32)], axis=1)


def at_positions(values: np.ndarray, pos: np.ndarray, fill) -> np.ndarray:
    """``values`` (``Q x (V * K)``, one row per query) at the positions :func:`merge_views` picked; ``fill`` at -1."""
    return np.where(pos >= 0, np.take_along_axis(values, np.maximum(pos, 0), axis=1), fill)


def merge_views(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge the neighbour lists of several views of each query (its global descriptor and its regions).

    ``rows`` and ``scores`` are ``Q x V x K``: for each of V views, K neighbours (database row ids,
    ``-1`` = missing). Each database photo is kept once, at its best similarity over the views, and
    the ``k`` best are returned: ``Q x k`` positions into the flattened ``V * K`` candidates (``-1``
    where fewer exist) and their similarities (``-inf`` there). A photo seen only by a region can
    thus vote: a small or partial view of a landmark matches its photos where the whole frame does not.
    """
    q, v, kk = rows.shape
    flat_rows, flat_scores = rows.reshape(q, v * kk), scores.reshape(q, v * kk)
    order = np.argsort(-flat_scores, axis=1, kind="stable")
    pos = np.full((q, k), -1, np.int64)
    out = np.full((q, k), -np.inf, np.float32)
    for qi in range(q):
        seen: set[int] = set()
        n = 0
        for j in order[qi]:
            r = int(flat_rows[qi, j])
            if r < 0 or r in seen:
                continue
            seen.add(r)
            pos[qi, n], out[qi, n] = j, flat_scores[qi, j]
            n += 1
            if n == k:
                break
    return pos, out
