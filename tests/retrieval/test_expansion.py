import numpy as np
import pytest

from landmark.config import ExpansionConfig
from landmark.features.whitening import l2n
from landmark.retrieval.expansion import (
    aggregate,
    dba,
    dba_n,
    expanded_search,
    inlier_verifier,
    knn,
    label_verifier,
    move_verified_first,
    qe_n,
    query_expansion,
    rank_weights,
    threshold_verified,
    vote_verified,
)


def test_eq1_and_eq3():
    m = np.array([0, 3, 4, 10, 11, 15, 20, 300])
    assert dba_n(m).tolist() == [10, 10, 10, 10, 11, 15, 20, 20]
    assert qe_n(m).tolist() == [3, 3, 4, 6, 6, 6, 6, 6]


def test_rank_weights_eq2():
    assert np.allclose(rank_weights(4), [1.0, 0.75, 0.5, 0.25])


def test_move_verified_first_is_stable_and_counts_m():
    idx = np.array([[5, 6, 7, 8, -1]])
    sims = np.array([[0.9, 0.8, 0.7, 0.6, -np.inf]], dtype=np.float32)
    ver = np.array([[False, True, False, True, True]])  # the padding slot never counts
    new_idx, new_sims, new_ver, m = move_verified_first(idx, sims, ver)
    assert new_idx.tolist() == [[6, 8, 5, 7, -1]]
    assert np.allclose(new_sims[0, :2], [0.8, 0.6])
    assert new_ver.tolist() == [[True, True, False, False, False]]
    assert m.tolist() == [2]
    # over the database itself (DBA), the row's own entry is never counted
    _, _, own_ver, m_self = move_verified_first(
        np.array([[0, 6, 7]]), sims[:, :3], np.ones((1, 3), bool), self_in_list=True
    )
    assert m_self.tolist() == [2] and own_ver.tolist() == [[True, True, False]]
    with pytest.raises(ValueError, match="aligned"):
        move_verified_first(idx, sims, ver[:, :3])


def test_aggregate_by_hand():
    db = np.eye(4, dtype=np.float32)
    own = np.array([[1, 0, 0, 0]], dtype=np.float32)
    idx, sims = np.array([[2, 1, 3]]), np.array([[0.5, 0.4, 0.3]], dtype=np.float32)
    out = aggregate(own, db, idx, sims, np.array([3]))
    expected = l2n(np.array([[1.0, 1 / 3, 2 / 3, 0.0]]))  # weights 1, 2/3, 1/3 for own, db[2], db[1]
    assert np.allclose(out, expected, atol=1e-6)
    alpha = aggregate(own, db, idx, sims, np.array([3]), weights="alpha", alpha=2.0)
    assert np.allclose(alpha, l2n(np.array([[1.0, 0.16, 0.25, 0.0]])), atol=1e-6)


def test_dba_skips_itself_and_uses_n_from_m():
    rng = np.random.default_rng(0)
    db = l2n(rng.normal(size=(30, 8)))
    sims, idx = knn(db, db, 30)
    assert (idx[:, 0] == np.arange(30)).all()
    out = dba(db, neighbours=(sims, idx))
    # M = 0 -> N = 10: itself with weight 1 and its 9 nearest other vectors with weights 0.9 .. 0.1
    i = 4
    others = [j for j in idx[i] if j != i][:9]
    manual = db[i] + sum((10 - x) / 10 * db[j] for x, j in enumerate(others, start=1))
    assert np.allclose(out[i], l2n(manual[None])[0], atol=1e-5)
    # 12 verified neighbours -> N = 12 and only the verified ones join, in their order
    ver = np.zeros_like(idx, dtype=bool)
    ver[i, 15:27] = True
    out2 = dba(db, ver, neighbours=(sims, idx))
    chosen = [j for j in idx[i, 15:27] if j != i][:11]
    manual2 = db[i] + sum((12 - x) / 12 * db[j] for x, j in enumerate(chosen, start=1))
    assert np.allclose(out2[i], l2n(manual2[None])[0], atol=1e-5)
    # 2 verified neighbours -> N = 10 (eq. 1) but only those 2 join: weights 1, 0.9, 0.8
    ver3 = np.zeros_like(idx, dtype=bool)
    ver3[i, [3, 8]] = True
    out3 = dba(db, ver3, neighbours=(sims, idx))
    manual3 = db[i] + 0.9 * db[idx[i, 3]] + 0.8 * db[idx[i, 8]]
    assert np.allclose(out3[i], l2n(manual3[None])[0], atol=1e-5)


def test_a_photo_without_verified_neighbour_keeps_its_descriptor():
    """DBA and QE move a photo only towards verified photos of its landmark (Baidu §2.3); with no
    verified neighbour (its only neighbours are other places) it stays exactly as it was."""
    rng = np.random.default_rng(1)
    db = l2n(rng.normal(size=(25, 8)))
    q = l2n(rng.normal(size=(4, 8)))
    sims, idx = knn(db, db, 25)
    ver = np.zeros_like(idx, dtype=bool)
    ver[:, 0] = True  # only each row's own entry (itself): no neighbour verified
    assert np.allclose(dba(db, ver, neighbours=(sims, idx)), db, atol=1e-6)
    assert np.allclose(dba(db, np.zeros_like(idx, dtype=bool), neighbours=(sims, idx)), db, atol=1e-6)
    assert np.allclose(query_expansion(q, db, lambda s, i: np.zeros_like(i, dtype=bool)), q, atol=1e-6)
    # a verifier by predicted landmark: photos with no label (-1) verify nothing, so nothing moves
    unlabelled = label_verifier(
        ExpansionConfig(verify="vote+threshold", threshold=0.0), np.full(25, -1), np.full(25, -1)
    )
    assert np.allclose(dba(db, unlabelled, shortlist=25), db, atol=1e-6)


def test_verified_as_a_function_of_the_lists():
    rng = np.random.default_rng(2)
    db, q = l2n(rng.normal(size=(40, 8))), l2n(rng.normal(size=(3, 8)))
    seen = {}

    def verify(sims, idx):
        seen["shape"] = idx.shape
        return idx % 2 == 0

    a = query_expansion(q, db, verify, shortlist=20)
    sims, idx = knn(q, db, 20)
    b = query_expansion(q, db, idx % 2 == 0, neighbours=(sims, idx))
    assert seen["shape"] == (3, 20) and np.allclose(a, b)


def test_label_and_threshold_verification():
    assert vote_verified(np.array([3, -1]), np.array([[3, 4, -1], [-1, 2, 2]])).tolist() == [
        [True, False, False],
        [False, False, False],
    ]
    assert threshold_verified(np.array([[0.9, 0.5, 0.2]]), 0.5).tolist() == [[True, False, False]]


def test_label_verifier_combines_agreement_and_similarity():
    own = np.array([7, 7])
    db_labels = np.array([7, 7, 8, -1])
    sims = np.array([[0.9, 0.3, 0.95, 0.99], [0.6, 0.2, 0.1, 0.0]])
    idx = np.array([[0, 1, 2, 3], [1, 0, -1, 3]])
    vote = label_verifier(ExpansionConfig(verify="vote"), own, db_labels)(sims, idx)
    assert vote.tolist() == [[True, True, False, False], [True, True, False, False]]
    both = label_verifier(ExpansionConfig(verify="vote+threshold", threshold=0.5), own, db_labels)(sims, idx)
    assert both.tolist() == [[True, False, False, False], [True, False, False, False]]
    assert label_verifier(ExpansionConfig(verify="none"), own, db_labels) is None
    with pytest.raises(ValueError, match="vote\\+threshold"):
        label_verifier(ExpansionConfig(verify="votes"), own, db_labels)


def test_dba_and_qe_improve_clustered_retrieval():
    rng = np.random.default_rng(3)
    classes, per, d = 40, 12, 32
    centres = rng.normal(size=(classes, d))
    labels = np.repeat(np.arange(classes), per)
    db = l2n(centres[labels] + rng.normal(size=(classes * per, d)) * 1.1)
    q_labels = np.arange(classes)
    q = l2n(centres + rng.normal(size=(classes, d)) * 1.1)

    def precision(idx):
        return (labels[idx[:, :10]] == q_labels[:, None]).mean()

    base = precision(knn(q, db, 10)[1])
    expanded = precision(expanded_search(q, db, 10)[1])
    assert expanded > base + 0.05


def test_inlier_verified_dba_moves_only_photos_with_a_verified_neighbour():
    rng = np.random.default_rng(3)
    db = l2n(rng.normal(size=(6, 16)).astype(np.float32))
    db[1] = l2n(db[None, 0] + 0.3 * db[None, 1])[0]  # 0 and 1 are near each other (and each other's first neighbour)
    sims, idx = knn(db, db, 4)
    seen = []

    def pair_inliers(lists):  # only the pair (0, 1) verifies, in both directions
        seen.append(lists.shape[1])
        return np.where(
            ((np.arange(len(lists))[:, None] == 0) & (lists == 1))
            | ((np.arange(len(lists))[:, None] == 1) & (lists == 0)),
            50,
            2,
        )

    out = dba(db, inlier_verifier(pair_inliers, 2, 8), neighbours=(sims, idx))
    assert seen == [3]  # the photo itself and its first k = 2 neighbours are looked at, no more
    assert np.allclose(out[2:], db[2:], atol=1e-6)  # no verified neighbour: the photo keeps its descriptor
    assert np.allclose(out[0], l2n(db[None, 0] + 0.9 * db[None, 1])[0], atol=1e-6)  # eq. (2), N = 10: weights 1 and 0.9
    assert np.allclose(out[1], l2n(db[None, 1] + 0.9 * db[None, 0])[0], atol=1e-6)


def test_inlier_verifier_without_local_features_verifies_nothing():
    idx = np.array([[0, 1, 2], [1, 0, -1]])
    assert not inlier_verifier(None, 10, 8)(np.zeros(idx.shape), idx).any()
    always = inlier_verifier(lambda lists: np.full(lists.shape, 99), 10, 8)(np.zeros(idx.shape), idx)
    assert always.tolist() == [[True, True, True], [True, True, False]]  # padding never counts
    assert not label_verifier(ExpansionConfig(verify="inliers"), None, None)(np.zeros(idx.shape), idx).any()
