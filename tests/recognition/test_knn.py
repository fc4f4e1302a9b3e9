import numpy as np

from landmark.recognition import knn_vote


def test_majority_label_with_its_best_score():
    labels = np.array([[7, 3, 7, 3, 7]])
    scores = np.array([[0.9, 0.95, 0.8, 0.7, 0.6]])   # 3 is the nearest, but 7 has 3 votes
    (v,) = knn_vote(labels, scores, k=5)
    assert (v.landmark_id, v.votes) == (7, 3)
    assert v.score == 0.9                               # best similarity among the 7s, not 0.95


def test_tie_goes_to_higher_best_score():
    labels = np.array([[1, 2, 1, 2, 5]])
    scores = np.array([[0.5, 0.9, 0.4, 0.3, 0.2]])
    (v,) = knn_vote(labels, scores)
    assert v.landmark_id == 2 and v.votes == 2 and v.score == 0.9


def test_only_top_k_vote_and_missing_neighbours():
    labels = np.array([[4, 4, 9, 9, 9, 9, 9], [-1, -1, -1, -1, -1, -1, -1], [-1, 6, -1, -1, -1, -1, -1]])
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], [0.0] * 7, [0.0, 0.4, 0, 0, 0, 0, 0]])
    a, b, c = knn_vote(labels, scores, k=3)
    assert a.landmark_id == 4                           # only the first 3 vote: 4,4,9
    assert b.landmark_id is None and b.votes == 0
    assert c.landmark_id == 6 and c.score == 0.4
