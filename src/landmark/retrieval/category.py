"""Classification re-rank of a ranking (Baidu GLR19 §2.2).

The paper classifies every query and database photo by retrieving the labelled photos: "if returned
result category of top5 has only two categories and the max score retrieved is greater than 0.85,
then the requested image is considered to be category with max voting number", and "select[s] the
results of the same category of images from the index before all the search results".

Here a photo's *confident label* is that top-k vote (:func:`confident_labels`; ``-1`` where the
rule does not hold); a labelled stored photo's is its own label. :func:`category_first` moves the
ranked photos whose confident label is the query's to the front, keeping the order within both
groups, so the re-rank only reorders what was retrieved. The 0.85 is a similarity of the paper's
descriptor: ``landmark calibrate`` refits it on a validation split of the labelled photos
(:func:`landmark.evaluation.calibration.calibrate_category`). That validation votes among a third of the
labelled photos, and its labelled database photos get voted labels, as unlabelled ones do here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..index import Store
from ..recognition.knn import knn_vote
from .config import CategoryConfig


def confident_labels(labels: np.ndarray, scores: np.ndarray, cfg: CategoryConfig, k: int = 5) -> np.ndarray:
    """The voted landmark of each row of top-``k`` labelled neighbours (``labels`` / ``scores``,
    Q x K, ``-1`` = none) where at most ``cfg.max_labels`` landmarks are among them and the voted
    one's best similarity exceeds ``cfg.min_similarity``; ``-1`` elsewhere (an int64 array)."""
    labels = np.asarray(labels)[:, :k]
    out = np.full(len(labels), -1, np.int64)
    for i, vote in enumerate(knn_vote(labels, scores, k)):
        distinct = len(np.unique(labels[i][labels[i] >= 0]))
        if vote.landmark_id is not None and distinct <= cfg.max_labels and vote.score > cfg.min_similarity:
            out[i] = vote.landmark_id
    return out


def category_first(ranked: Sequence[object], query_label: int, labels: Sequence[int] | np.ndarray) -> list[int]:
    """Positions of ``ranked`` reordered: those whose ``labels`` equal ``query_label`` first, then the
    rest, each group in its ranked order; unchanged for ``query_label < 0``."""
    if query_label < 0:
        return list(range(len(ranked)))
    same = [i for i, lab in enumerate(labels) if lab == query_label]
    taken = set(same)
    return same + [i for i in range(len(ranked)) if i not in taken]


class StoreCategories:
    """Confident labels of stored photos (their own label, or a confident vote among the labelled
    photos for unlabelled ones, voted when first needed) and of query vectors, for one store generation."""

    def __init__(self, store: Store, cfg: CategoryConfig, k: int = 5):
        self.store, self.cfg, self.k = store, cfg, k
        self.generation = store.generation
        self._labels: dict[str, int] = {}

    def vote(self, vectors: np.ndarray) -> np.ndarray:
        """Confident labels of descriptor ``vectors`` (-1: none)."""
        if not len(vectors):
            return np.zeros(0, np.int64)
        result = self.store.search(np.asarray(vectors, np.float32), self.k, labelled_only=True)
        return confident_labels(result.landmark_ids, result.scores, self.cfg, self.k)

    def labels(self, keys: Sequence[str]) -> list[int]:
        """Confident labels of stored photos ``keys``."""
        missing = list(dict.fromkeys(k for k in keys if k not in self._labels))
        if missing:
            rows = self.store.get(missing)
            unlabelled = [k for k in missing if rows[k].landmark_id is None]
            self._labels.update({k: int(lab) for k in missing if (lab := rows[k].landmark_id) is not None})
            if unlabelled:
                self._labels.update(zip(unlabelled, self.vote(self.store.vectors(unlabelled)).tolist()))
        return [self._labels[k] for k in keys]

    def rerank(self, rankings: Mapping[str, Sequence[str]], query_labels: Mapping[str, int]) -> dict[str, list[str]]:
        """Each query's ranked keys with its landmark's photos first (:func:`category_first`)."""
        out = {}
        for q, keys in rankings.items():
            keys = list(keys)
            order = category_first(keys, query_labels.get(q, -1), self.labels(keys))
            out[q] = [keys[i] for i in order]
        return out
