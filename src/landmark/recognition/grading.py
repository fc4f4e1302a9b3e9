"""Grading and re-scoring (Baidu GLR19 §3.3).

Grades A1-A4 come from the top-k labelled neighbours (labels and similarities), B1/B2 from the
agreement of the kNN label with the classifier's. Queries are ordered A1B1 > A1B2 > A2B1 > ... > A4B2
> filtered (non-landmark); inside a grade, landmarks that are frequent among the A1B1 predictions
come first (ordered by that frequency), then the kNN similarity decides. :func:`tiered_scores` turns
that lexicographic order into one score in [0, 1] that is monotone within and across grades.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def grade_a(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    predicted: int | None,
    t1: float,
    t2: float,
) -> int:
    """Grade 1-4 of one query from its top-k labelled neighbours (``-1`` = no neighbour).

    A1: at most 2 distinct labels and the lowest similarity of the predicted label's neighbours > t1;
    A2: at most 2 distinct labels and the highest similarity of the predicted label > t2;
    A4: every neighbour has a different label (at least 3 neighbours); A3: the rest.
    """
    valid = [(int(lab), float(s)) for lab, s in zip(labels, scores) if lab >= 0]
    if predicted is None or not valid:
        return 4
    pred = [s for lab, s in valid if lab == predicted]
    if not pred:
        return 4
    distinct = len({lab for lab, _ in valid})
    if distinct <= 2 and min(pred) > t1:
        return 1
    if distinct <= 2 and max(pred) > t2:
        return 2
    if distinct == len(valid) and len(valid) >= 3:
        return 4
    return 3


def grade_b(knn_label: int | None, classifier_label: int | None) -> int:
    """B1 when the classifier predicts the kNN label, else B2."""
    return (
        1 if knn_label is not None and classifier_label is not None and int(knn_label) == int(classifier_label) else 2
    )


def frequent_landmarks(
    labels: Sequence[int | None], in_top_grade: Sequence[bool], min_count: int = 5
) -> dict[int, int]:
    """Landmarks predicted more than ``min_count`` times among the queries of the top grade (A1B1)."""
    counts = Counter(int(lab) for lab, top in zip(labels, in_top_grade) if top and lab is not None)
    return {lab: n for lab, n in counts.items() if n > min_count}


def tiered_scores(
    tiers: Sequence[int] | np.ndarray,
    within: Sequence[float] | np.ndarray,
    n_tiers: int,
    boosts: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """Scores in [0, 1] ordering queries by (tier ascending, boost descending, within descending).

    ``tiers`` are 0 (best) .. ``n_tiers - 1``; ``within`` the similarity inside the tier (clipped to
    [0, 1]); ``boosts`` optional integer levels >= 0 (higher first inside a tier). Every score of tier
    ``t`` is at least every score of tier ``t + 1``.
    """
    tier = np.asarray(tiers, dtype=np.int64)
    if len(tier) and (tier.min() < 0 or tier.max() >= n_tiers):
        raise ValueError(f"tiers must lie in 0..{n_tiers - 1}")
    s = np.clip(np.asarray(within, dtype=np.float64), 0.0, 1.0 - 1e-9)
    b = np.zeros(len(tier), np.int64) if boosts is None else np.asarray(boosts, dtype=np.int64)
    levels = int(b.max()) + 1 if len(b) else 1
    inner = (b + s) / levels  # in [0, 1): boost level first, then the similarity
    return ((n_tiers - 1 - tier) + inner) / n_tiers


def boost_levels(labels: Sequence[int | None], frequent: dict[int, int], eligible: Sequence[bool]) -> np.ndarray:
    """Level 0 for queries outside the frequent set; 1.. for frequent ones, higher for more frequent landmarks."""
    ranks = {n: i + 1 for i, n in enumerate(sorted(set(frequent.values())))}
    return np.array(
        [
            ranks[frequent[int(lab)]] if ok and lab is not None and int(lab) in frequent else 0
            for lab, ok in zip(labels, eligible)
        ],
        dtype=np.int64,
    )
