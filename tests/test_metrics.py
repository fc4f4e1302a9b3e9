import pytest

from landmark.metrics import (
    accuracy,
    average_precision_at_k,
    global_average_precision,
    mean_average_precision_at_k,
    precision_at_k,
)

# 5 queries: a, b, c show landmarks 1, 2, 3; n1, n2 show none.
TRUTH = {"a": 1, "b": 2, "c": 3, "n1": None, "n2": None}


def test_gap_hand_computed():
    preds = {"a": (1, 0.9), "n1": (5, 0.8), "b": (7, 0.7), "c": (3, 0.6), "n2": (1, 0.1)}
    # sorted: a(ok) n1(wrong) b(wrong) c(ok) n2(wrong) -> (1/1 + 2/4) / 3 landmark queries
    assert global_average_precision(preds, TRUTH) == pytest.approx((1 + 2 / 4) / 3)


def test_gap_non_landmark_predictions_hurt_only_when_ranked_above():
    good = {"a": (1, 0.9), "b": (2, 0.8), "c": (3, 0.7)}
    assert global_average_precision(good, TRUTH) == pytest.approx(1.0)
    assert global_average_precision(good | {"n1": (1, 0.1)}, TRUTH) == pytest.approx(1.0)
    # the same distractor at the top: 1/2 + 2/3 + 3/4 over 3
    assert global_average_precision(good | {"n1": (1, 0.99)}, TRUTH) == pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3)


def test_gap_missing_predictions_sets_and_ties():
    # c has no prediction; b's truth is a set; ties keep insertion order (b before a)
    preds = {"b": (9, 0.5), "a": (1, 0.5)}
    truth = {"a": 1, "b": {2, 9}, "c": 3}
    assert global_average_precision(preds, truth) == pytest.approx((1 / 1 + 2 / 2) / 3)
    assert global_average_precision({"n1": (1, 0.5)}, {"n1": None, "n2": set()}) == 0.0
    # predictions for unknown ids are ignored
    assert global_average_precision({"zzz": (1, 1.0), "a": (1, 0.1)}, {"a": 1}) == 1.0


def test_gap_invariant_to_monotone_score_maps():
    preds = {"a": (1, 0.9), "n1": (5, 0.8), "b": (7, 0.7), "c": (3, 0.6)}
    warped = {q: (lab, s**3 * 10 - 4) for q, (lab, s) in preds.items()}
    assert global_average_precision(preds, TRUTH) == pytest.approx(global_average_precision(warped, TRUTH))


def test_accuracy():
    preds = {"a": (1, 0.1), "b": (3, 0.9), "n1": (1, 0.9)}
    assert accuracy(preds, TRUTH) == pytest.approx(1 / 3)  # a right, b wrong, c missing


def test_ap_at_k_hand_cases():
    # relevant at ranks 1 and 3 of 2 relevant: (1/1 + 2/3) / 2
    assert average_precision_at_k(["x", "n", "y"], {"x", "y"}) == pytest.approx((1 + 2 / 3) / 2)
    # more relevant than k: divide by k
    assert average_precision_at_k(["x", "y"], {"x", "y", "z"}, k=2) == pytest.approx(1.0)
    # a relevant item below rank k does not count
    ranked = [f"n{i}" for i in range(100)] + ["x"]
    assert average_precision_at_k(ranked, {"x"}, k=100) == 0.0
    # duplicates count once: x, x, y -> x at 1, y at 2
    assert average_precision_at_k(["x", "x", "y"], {"x", "y"}) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        average_precision_at_k(["x"], set())


def test_map_and_precision():
    rankings = {"q1": ["a", "b"], "q2": ["c", "d"]}
    solution = {"q1": ["a"], "q2": ["d"], "q3": ["e"], "q4": []}
    # q1: 1, q2: 1/2, q3 (no ranking): 0; q4 has no relevant items and is not a query
    assert mean_average_precision_at_k(rankings, solution) == pytest.approx((1 + 0.5 + 0) / 3)
    assert precision_at_k(rankings, solution, k=2) == pytest.approx((0.5 + 0.5 + 0) / 3)
