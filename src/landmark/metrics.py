"""The challenge metrics: GAP (GLR recognition), accuracy, and mAP@k (GLDv2 retrieval)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

Truth = int | None | Collection[int]


def _is_landmark(t: Truth) -> bool:
    if t is None:
        return False
    if isinstance(t, int):
        return True
    return len(t) > 0


def _correct(label: int | None, t: Truth) -> bool:
    if label is None or t is None:
        return False
    return label == t if isinstance(t, int) else label in t


def global_average_precision(
    predictions: Mapping[str, tuple[int | None, float] | None], truth: Mapping[str, Truth]
) -> float:
    """Micro-AP over all queries as the GLR challenges define it.

    One prediction per query, sorted by decreasing score over all queries; at each rank ``i``
    holding a correct prediction add ``correct_so_far / i``; divide by the number of queries that
    show a landmark. Predictions on non-landmark queries are wrong but still take a rank.
    """
    m = sum(1 for t in truth.values() if _is_landmark(t))
    if m == 0:
        return 0.0
    preds = [(q, p) for q, p in predictions.items() if q in truth and p is not None and p[0] is not None]
    preds.sort(key=lambda qp: -qp[1][1])  # stable: ties keep insertion order
    correct, total = 0, 0.0
    for i, (q, (label, _)) in enumerate(preds, start=1):
        if _correct(label, truth[q]):
            correct += 1
            total += correct / i
    return total / m


def accuracy(predictions: Mapping[str, tuple[int | None, float] | None], truth: Mapping[str, Truth]) -> float:
    """Fraction of landmark queries whose predicted label is right (no prediction = wrong)."""
    queries = [q for q, t in truth.items() if _is_landmark(t)]
    if not queries:
        return 0.0
    hits = sum(1 for q in queries if (p := predictions.get(q)) is not None and _correct(p[0], truth[q]))
    return hits / len(queries)


def _dedupe(ranked: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for r in ranked:
        if r not in seen:
            seen.add(r)
            out.append(r)
    return out


def average_precision_at_k(ranked: Sequence[str], relevant: Collection[str], k: int = 100) -> float:
    """GLDv2 retrieval AP@k: ``sum_{i<=k} P(i) rel(i) / min(|relevant|, k)``; repeated ids count once."""
    relevant = set(relevant)
    if not relevant:
        raise ValueError("average precision needs at least one relevant item")
    hits, total = 0, 0.0
    for i, r in enumerate(_dedupe(ranked)[:k], start=1):
        if r in relevant:
            hits += 1
            total += hits / i
    return total / min(len(relevant), k)


def mean_average_precision_at_k(
    rankings: Mapping[str, Sequence[str]], solution: Mapping[str, Collection[str]], k: int = 100
) -> float:
    """Mean AP@k over the queries of ``solution`` that have relevant items (no ranking = 0)."""
    queries = [q for q, rel in solution.items() if rel]
    if not queries:
        return 0.0
    return sum(average_precision_at_k(rankings.get(q, ()), solution[q], k) for q in queries) / len(queries)


def precision_at_k(
    rankings: Mapping[str, Sequence[str]], solution: Mapping[str, Collection[str]], k: int = 10
) -> float:
    """Mean precision of the first ``k`` results over the same queries as mAP@k."""
    queries = [q for q, rel in solution.items() if rel]
    if not queries:
        return 0.0
    return sum(len(set(_dedupe(rankings.get(q, ()))[:k]) & set(solution[q])) / k for q in queries) / len(queries)
