"""Grades A1-A4 / B1-B2 at their boundaries, monotone re-scoring, and the frequent-landmark re-rank."""

import numpy as np
import pytest

from landmark.config import RecognitionConfig
from landmark.recognition.grading import boost_levels, frequent_landmarks, grade_a, grade_b, tiered_scores
from landmark.recognition.knn import knn_vote
from landmark.recognition.pipeline import Evidence, decide

T1, T2 = 0.9, 0.85


def A(labels, scores, t1=T1, t2=T2):
    vote = knn_vote(np.array([labels]), np.array([scores], dtype=np.float64), len(labels))[0]
    return grade_a(labels, scores, vote.landmark_id, t1, t2)


def test_a1_needs_at_most_two_labels_and_min_score_of_the_label_above_t1():
    assert A([7, 7, 7, 3, 3], [0.99, 0.95, 0.91, 0.5, 0.4]) == 1
    assert A([7, 7, 7, 7, 7], [0.99, 0.95, 0.93, 0.92, 0.91]) == 1
    # the lowest similarity of the predicted label sits exactly on t1: not A1 (strictly greater), but A2
    assert A([7, 7, 7, 3, 3], [0.99, 0.95, 0.90, 0.5, 0.4]) == 2
    # three distinct labels is not A1 even with high scores
    assert A([7, 7, 7, 3, 4], [0.99, 0.98, 0.97, 0.5, 0.4]) == 3


def test_a2_needs_at_most_two_labels_and_max_score_above_t2():
    assert A([7, 7, 7, 3, 3], [0.86, 0.60, 0.50, 0.5, 0.4]) == 2
    assert A([7, 7, 7, 3, 3], [0.85, 0.60, 0.50, 0.5, 0.4]) == 3  # exactly t2: not A2
    assert A([7, 7, 3, 3, 3], [0.99, 0.98, 0.5, 0.4, 0.3]) == 3  # the vote goes to 3, whose max is 0.5


def test_a4_is_all_neighbours_different_and_a3_the_rest():
    assert A([1, 2, 3, 4, 5], [0.99, 0.98, 0.97, 0.96, 0.95]) == 4
    assert A([1, 2, 3, 4, 4], [0.99, 0.98, 0.97, 0.96, 0.95]) == 3
    assert A([1, 1, 2, 2, 2], [0.80, 0.70, 0.60, 0.50, 0.40]) == 3
    assert grade_a([-1, -1, -1, -1, -1], [0.0] * 5, None, T1, T2) == 4
    # missing neighbours do not count as labels: two valid, same label, high score -> A1
    assert grade_a([5, 5, -1, -1, -1], [0.95, 0.94, -np.inf, -np.inf, -np.inf], 5, T1, T2) == 1


def test_thresholds_move_the_boundaries():
    row = ([7, 7, 7, 3, 3], [0.80, 0.75, 0.72, 0.5, 0.4])
    assert A(*row) == 3
    assert A(*row, t1=0.7, t2=0.6) == 1
    assert A(*row, t1=0.75, t2=0.6) == 2


def test_grade_b_is_agreement():
    assert grade_b(7, 7) == 1
    assert grade_b(7, 8) == 2
    assert grade_b(None, 7) == 2 and grade_b(7, None) == 2


def test_tiered_scores_are_monotone_within_and_across_tiers():
    rng = np.random.default_rng(0)
    tiers = rng.integers(0, 9, 500)
    within = rng.random(500)
    within[:5] = [1.0, 1.2, -0.3, 0.0, 0.999999999]  # out-of-range similarities are clipped
    s = tiered_scores(tiers, within, 9)
    assert s.min() >= 0 and s.max() <= 1
    for t in range(8):
        if (tiers == t).any() and (tiers == t + 1).any():
            assert s[tiers == t].min() >= s[tiers == t + 1].max()
    same = tiers == 3
    order = np.argsort(-within[same])
    assert np.all(np.diff(s[same][order]) <= 0)
    with pytest.raises(ValueError):
        tiered_scores([9], [0.5], 9)


def test_boosts_come_first_inside_a_tier_but_never_cross_tiers():
    s = tiered_scores([0, 0, 0, 1, 1], [0.2, 0.99, 0.5, 0.99, 0.1], 3, boosts=[2, 0, 1, 2, 0])
    assert s[0] > s[2] > s[1]  # boost 2 > boost 1 > no boost, whatever the similarity
    assert s[1] > s[3]  # tier 0 without boost still above tier 1 with boost
    assert s[3] > s[4]


def test_frequent_landmarks_counts_only_the_top_grade_and_needs_more_than_min():
    labels = [1] * 6 + [2] * 5 + [3] * 9
    top = [True] * 11 + [False] * 9
    assert frequent_landmarks(labels, top, 5) == {1: 6}
    levels = boost_levels([1, 2, 1, 4], {1: 6, 4: 9}, [True, True, False, True])
    assert levels.tolist() == [1, 0, 0, 2]


def _evidence(rows, clf=None, prior=None, distractor=None):
    labels = np.array([r[0] for r in rows], dtype=np.int64)
    scores = np.array([r[1] for r in rows], dtype=np.float64)
    from landmark.recognition.classifier import ClassifierPrediction

    ev = Evidence(
        [f"q{i}" for i in range(len(rows))],
        labels,
        scores,
        [[f"n{i}{j}" for j in range(labels.shape[1])] for i in range(len(rows))],
        knn_vote(labels, scores, 5),
    )
    if clf is not None:
        ev.classifier = ClassifierPrediction(
            np.array(clf, dtype=np.int64).reshape(-1, 1), np.ones((len(rows), 1), np.float32)
        )
    ev.prior, ev.distractor = prior, distractor
    return ev


def test_decide_orders_a1b1_above_a1b2_above_a2b1_and_so_on():
    a1 = ([7, 7, 7, 7, 3], [0.95, 0.94, 0.93, 0.92, 0.3])
    a2 = ([7, 7, 7, 3, 3], [0.88, 0.70, 0.60, 0.3, 0.2])
    a3 = ([7, 7, 3, 4, 4], [0.99, 0.98, 0.97, 0.96, 0.9])
    a4 = ([7, 3, 4, 5, 6], [0.99, 0.98, 0.97, 0.96, 0.95])
    rows = [a4, a4, a3, a3, a2, a2, a1, a1]  # given worst first
    clf = [7, 1, 7, 1, 7, 1, 7, 1]  # B1 for even rows, B2 for odd rows
    ev = _evidence(rows, clf)
    out = decide(ev, RecognitionConfig(frequent_rerank=False))
    grades = [d.grade for d in out]
    assert grades == ["A4B1", "A4B2", "A3B1", "A3B2", "A2B1", "A2B2", "A1B1", "A1B2"]
    ranked = [grades[i] for i in np.argsort([-d.score for d in out], kind="stable")]
    assert ranked == ["A1B1", "A1B2", "A2B1", "A2B2", "A3B1", "A3B2", "A4B1", "A4B2"]
    assert all(0 <= d.score <= 1 for d in out)
    # without grading and classifier the kNN similarity alone orders them (a4 has the highest: 0.99)
    plain = decide(ev, RecognitionConfig(grading=False, classifier=False, frequent_rerank=False))
    assert {d.grade for d in plain} == {""}
    assert plain[0].score > plain[6].score


def test_filtered_queries_are_demoted_below_every_grade_or_dropped():
    from landmark.recognition.filters import PriorDecision

    a1 = ([7, 7, 7, 7, 7], [0.99, 0.98, 0.97, 0.96, 0.95])
    a4 = ([7, 3, 4, 5, 6], [0.5, 0.4, 0.3, 0.2, 0.1])
    prior = [PriorDecision("non_landmark", 0.0, 0.9, "food"), PriorDecision("uncertain", 0.1, 0.1, "scenery")]
    ev = _evidence([a1, a4], prior=prior, distractor=np.array([0.1, 0.95]))
    cfg = RecognitionConfig(distractor_threshold=0.9, frequent_rerank=False)
    out = decide(ev, cfg)
    assert out[0].grade == "non-landmark" and out[0].evidence["filters"]["non_landmark"] == ["object_prior"]
    assert out[1].grade == "non-landmark" and out[1].evidence["filters"]["non_landmark"] == ["distractor"]
    ev2 = _evidence(
        [a1, a4, a4],
        prior=prior + [PriorDecision("landmark", 0.9, 0.0, "landmark")],
        distractor=np.array([0.1, 0.95, 0.2]),
    )
    out = decide(ev2, cfg)
    assert out[2].grade == "A4" and out[2].score > max(out[0].score, out[1].score)
    dropped = decide(ev2, RecognitionConfig(distractor_threshold=0.9, filtered="drop"))
    assert dropped[0].landmark_id is None and dropped[1].landmark_id is None and dropped[2].landmark_id == 7
    # switching the filters off un-flags them
    off = decide(ev2, RecognitionConfig(object_prior=False, distractor_filter=False, distractor_threshold=0.9))
    assert [d.grade for d in off] == ["A1", "A4", "A4"]


def test_frequent_landmark_rerank_lifts_frequent_labels_inside_their_grade():
    a1 = ([7, 7, 7, 7, 7], [0.99, 0.98, 0.97, 0.96, 0.95])
    a3_other = ([9, 9, 3, 4, 4], [0.99, 0.98, 0.5, 0.4, 0.3])
    a3_frequent = ([7, 7, 3, 4, 5], [0.60, 0.55, 0.97, 0.96, 0.9])  # votes 7 (2 of 5), four labels: A3
    rows = [a1] * 6 + [a3_frequent, a3_other]
    ev = _evidence(rows)
    with_rerank = decide(ev, RecognitionConfig(frequent_min=5))
    without = decide(ev, RecognitionConfig(frequent_min=5, frequent_rerank=False))
    assert [d.grade for d in with_rerank[6:]] == ["A3", "A3"]
    assert without[7].score > without[6].score  # by similarity 0.99 > 0.60
    assert with_rerank[6].score > with_rerank[7].score  # landmark 7 is frequent in A1 (6 > 5)
    assert with_rerank[6].evidence["grade"]["frequent_landmark"] is True
    assert min(d.score for d in with_rerank[:6]) > with_rerank[6].score  # never above a better grade
    # five A1 predictions are not "more than 5"
    assert (
        decide(_evidence([a1] * 5 + [a3_frequent, a3_other]), RecognitionConfig(frequent_min=5))[5].evidence["grade"][
            "frequent_landmark"
        ]
        is False
    )
