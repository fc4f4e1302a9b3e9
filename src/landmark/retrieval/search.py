"""Ranked retrieval over the store: the first stage every re-ranking step builds on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..index.store import Store


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
