import numpy as np

from landmark.recognition import knn_vote


def test_majority_label_with_its_best_score():
    labels = np.array([[7, 3, 7, 3, 7]])
    scores = np.array([[0.9, 0.95, 0.8, 0.7, 0.6]])  # 3 is the nearest, but 7 has 3 votes
    (v,) = knn_vote(labels, scores, k=5)
    assert (v.landmark_id, v.votes) == (7, 3)
    assert v.score == 0.9  # best similarity among the 7s, not 0.95


def test_tie_goes_to_higher_best_score():
    labels = np.array([[1, 2, 1, 2, 5]])
    scores = np.array([[0.5, 0.9, 0.4, 0.3, 0.2]])
    (v,) = knn_vote(labels, scores)
    assert v.landmark_id == 2 and v.votes == 2 and v.score == 0.9


def test_only_top_k_vote_and_missing_neighbours():
    labels = np.array([[4, 4, 9, 9, 9, 9, 9], [-1, -1, -1, -1, -1, -1, -1], [-1, 6, -1, -1, -1, -1, -1]])
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], [0.0] * 7, [0.0, 0.4, 0, 0, 0, 0, 0]])
    a, b, c = knn_vote(labels, scores, k=3)
    assert a.landmark_id == 4  # only the first 3 vote: 4,4,9
    assert b.landmark_id is None and b.votes == 0
    assert c.landmark_id == 6 and c.score == 0.4


def test_merge_views_keeps_each_photo_once_at_its_best_similarity():
    from landmark.recognition.knn import merge_views

    # one query, 3 views (global + 2 regions), 3 neighbours each; photo 4 is found by the global and a region
    rows = np.array([[[4, 1, 2], [9, 4, -1], [2, 7, 1]]])
    scores = np.array([[[0.7, 0.6, 0.5], [0.8, 0.75, -np.inf], [0.55, 0.52, 0.51]]], np.float32)
    pos, merged = merge_views(rows, scores, k=4)
    assert rows.reshape(1, -1)[0, pos[0]].tolist() == [9, 4, 1, 2]  # 4 once (0.75 beats 0.7), 2 at 0.55
    assert np.allclose(merged[0], [0.8, 0.75, 0.6, 0.55])
    pos, merged = merge_views(rows, scores, k=7)  # only 5 distinct photos exist
    assert pos[0, 5:].tolist() == [-1, -1] and np.isneginf(merged[0, 5:]).all()
    # a single view is the plain neighbour list
    pos, merged = merge_views(rows[:, :1], scores[:, :1], k=3)
    assert pos[0].tolist() == [0, 1, 2] and np.allclose(merged[0], scores[0, 0])
