import dataclasses

import numpy as np
import pytest

from landmark.config import load_config
from landmark.evaluation.ablation import ablation, tune_on_validation
from landmark.evaluation.calibration import SIMILARITIES, answerable_queries, fit_category
from landmark.evaluation.spaces import (
    THRESHOLDS,
    Space,
    category_ranks,
    fit_threshold,
    retrieve,
    validation_space,
    validation_split,
)
from landmark.features.whitening import l2n


def clustered_space(seed=0, classes=12, per=15, d=48, noise=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d))
    lab_db = np.repeat(np.arange(classes), per)
    db = l2n(centres[lab_db] + noise * rng.normal(size=(len(lab_db), d)))
    lab_q = np.arange(classes).repeat(2)
    q = l2n(centres[lab_q] + noise * rng.normal(size=(len(lab_q), d)))
    lab_l = np.repeat(np.arange(classes), 5)
    labelled = l2n(centres[lab_l] + noise * rng.normal(size=(len(lab_l), d)))
    return Space.with_votes(db, q, labelled, lab_l), lab_db, lab_q


def scorer(lab_db, lab_q):
    def score(ranks):
        aps = []
        for r, lq in zip(ranks, lab_q):
            rel = lab_db[r] == lq
            hits = np.cumsum(rel)
            aps.append((hits / np.arange(1, len(r) + 1) * rel).sum() / min((lab_db == lq).sum(), len(r)))
        return float(np.mean(aps))

    return score


def test_validation_split_is_disjoint_and_per_landmark():
    labels = [1] * 9 + [2] * 6 + [3] * 2
    vote, db, qs = validation_split([str(i) for i in range(len(labels))], labels, seed=0)
    assert sorted(vote + db + qs) == list(range(len(labels)))
    for fold in (vote, db, qs):
        assert {labels[i] for i in fold} >= {1, 2}
    assert sum(labels[i] == 1 for i in qs) == 3


def test_validation_split_of_a_trained_model_votes_with_its_training_photos():
    labels = [1] * 9 + [2] * 6 + [3] * 2
    held = [i % 3 == 0 for i in range(len(labels))]  # 3 + 2 + 1 photos the model never trained on
    vote, db, qs = validation_split([str(i) for i in range(len(labels))], labels, seed=0, held=held)
    assert sorted(vote) == [i for i in range(len(labels)) if not held[i]]
    assert sorted(db + qs) == [i for i in range(len(labels)) if held[i]]
    # per landmark, the held photos are dealt into database first, then queries
    assert sorted(labels[i] for i in db) == [1, 1, 2, 3] and sorted(labels[i] for i in qs) == [1, 2]
    assert answerable_queries([str(i) for i in range(len(labels))], np.array(labels), 0, held) == 2
    one_each = [i in (0, 9, 15) for i in range(len(labels))]  # one held photo per landmark: nothing to find
    assert answerable_queries([str(i) for i in range(len(labels))], np.array(labels), 0, one_each) == 0


def test_ablation_rows_are_cumulative_and_expansion_helps():
    space, lab_db, lab_q = clustered_space(noise=1.6)
    cfg = load_config(overrides=["whitening.dim=32", "whitening.power=0.0"])
    rows = ablation(space, scorer(lab_db, lab_q), cfg, k=100)
    assert [r["step"] for r in rows] == [
        "plain kNN",
        "+ multi-scale",
        "+ PCA-whitening",
        "+ DBA",
        "+ alpha-QE",
        "+ category re-rank",
    ]
    assert rows[5]["map"] is not None and "best similarity >" in rows[5]["note"]
    assert rows[1]["map"] is None and "--multiscale" in rows[1]["note"]
    assert rows[2]["delta"] == rows[2]["map"] - rows[0]["map"]  # skips the row that was not run
    assert rows[4]["map"] > rows[0]["map"] + 0.03
    # a multi-scale space given: its row is scored and the later rows build on it
    ms = space.map(lambda x: x)
    rows_ms = ablation(space, scorer(lab_db, lab_q), cfg, multiscale=ms, k=100)
    assert rows_ms[1]["map"] == rows_ms[0]["map"] and rows_ms[4]["map"] == rows[4]["map"]


def test_vote_verification_uses_predicted_labels():
    space, lab_db, lab_q = clustered_space(noise=1.4)
    score = scorer(lab_db, lab_q)
    ec = load_config().expansion
    perfect = Space(space.index, space.queries, lab_db, lab_q)
    wrong = Space(space.index, space.queries, (lab_db + 1) % 12, lab_q)
    vote = dataclasses.replace(ec, verify="vote")
    good = score(retrieve(perfect, vote, dba_on=True, qe_on=True))
    bad = score(retrieve(wrong, vote, dba_on=True, qe_on=True))
    assert good > bad + 0.05


def test_tune_on_validation_reports_choices():
    rng = np.random.default_rng(0)
    classes, per, d = 6, 12, 40
    centres = rng.normal(size=(classes, d))
    labels = np.repeat(np.arange(classes), per)
    train = l2n(centres[labels] + rng.normal(size=(len(labels), d)))
    index = l2n(rng.normal(size=(300, d)))
    res = tune_on_validation(train, labels, index, load_config())
    assert res["sizes"] == {"database": 24, "queries": 24}
    assert res["expansion_map"] == max(t["map"] for t in res["trials"] if "expansion" in t)
    assert res["whitening"]["dim"] in (128, 256, 512)


def labelled_with_negatives(seed=0, classes=6, per=12, d=40, negatives=200):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d))
    labels = np.repeat(np.arange(classes), per)
    train = l2n(centres[labels] + 0.9 * rng.normal(size=(len(labels), d)))
    return train, labels, l2n(rng.normal(size=(negatives, d)))


def test_validation_space_adds_negatives_relevant_to_no_query():
    train, labels, neg = labelled_with_negatives()
    plain, score_plain = validation_space(train, labels)
    space, score = validation_space(train, labels, negatives=neg)
    assert len(space.index) == len(plain.index) + len(neg)
    assert np.allclose(space.index[len(plain.index) :], neg) and np.allclose(space.queries, plain.queries)
    assert (space.index_pred[len(plain.index) :] >= 0).all()  # a non-landmark still gets a voted label
    ranks = retrieve(plain, load_config().expansion, dba_on=False, qe_on=False)
    assert score(ranks) == score_plain(ranks)  # same truth: the negatives are nobody's match
    # the negatives ranked first instead lower the score
    negs_first = np.concatenate(
        [np.tile(np.arange(len(plain.index), len(space.index))[:20], (len(ranks), 1)), ranks], 1
    )
    assert score(negs_first) < score_plain(ranks) - 0.1


def test_fit_threshold_keeps_voted_non_landmarks_out_of_dba():
    train, labels, neg = labelled_with_negatives()
    space, score = validation_space(train, labels, negatives=neg)
    ec = dataclasses.replace(load_config().expansion, verify="vote+threshold")
    fitted, trials = fit_threshold(space, score, ec)
    assert [t["threshold"] for t in trials] == list(THRESHOLDS)
    assert fitted.threshold == trials[int(np.argmax([t["map"] for t in trials]))]["threshold"] > 0.0
    vote_only = score(retrieve(space, dataclasses.replace(ec, verify="vote"), dba_on=True, qe_on=True))
    assert max(t["map"] for t in trials) > vote_only + 0.02
    # nothing to fit where no verifier reads a threshold
    for other in (dataclasses.replace(ec, verify="vote"), dataclasses.replace(ec, dba=False, qe=False)):
        assert fit_threshold(space, score, other) == (other, [])


def test_ablation_refits_the_expansion_only_in_the_space_its_pca_makes():
    space, lab_db, lab_q = clustered_space(noise=1.4)
    cfg = load_config(overrides=["whitening.dim=32", "expansion.verify=vote+threshold"])
    seen = []

    def refit(transform):
        seen.append(transform(space.index[:2]).shape)
        return dataclasses.replace(cfg.expansion, threshold=0.123)

    rows = ablation(space, scorer(lab_db, lab_q), cfg, k=100, refit=refit)
    assert seen == [(2, 32)] and "0.12" in rows[3]["note"]  # fitted after the PCA row, in its space
    whitened = dataclasses.replace(cfg, whitening=dataclasses.replace(cfg.whitening, kind="pca"))
    rows = ablation(space, scorer(lab_db, lab_q), whitened, k=100, refit=refit)
    assert len(seen) == 1 and f"{cfg.expansion.threshold:.2f}" in rows[3]["note"]  # the store's own settings


def test_fit_category_puts_confidently_voted_photos_first_and_keeps_the_better_choice():
    train, labels, neg = labelled_with_negatives()
    space, score = validation_space(train, labels, negatives=neg)
    ec = dataclasses.replace(load_config().expansion, dba=False, qe=False)
    ranks = retrieve(space, ec, dba_on=False, qe_on=False)
    fitted, trials, before = fit_category(space, score, ranks, load_config().category)
    assert before == score(ranks) and [t["min_similarity"] for t in trials] == list(SIMILARITIES)
    best = max(trials, key=lambda t: t["map"])
    assert fitted.enabled and fitted.min_similarity == best["min_similarity"] and best["map"] > before
    moved = category_ranks(ranks, space, fitted)
    assert sorted(moved[0][moved[0] >= 0]) == sorted(ranks[0][ranks[0] >= 0])  # a reordering of what was retrieved
    # where no similarity scores better than the ranking as it is, the re-rank is switched off
    off, _, _ = fit_category(space, lambda r: 1.0, ranks, load_config().category)
    assert not off.enabled


def test_multiscale_rows_stay_aligned_when_a_photo_is_missing_there():
    from landmark.evaluation.ablation import _replace_rows

    base = np.arange(6, dtype=np.float32).reshape(3, 2)
    new = np.array([[10, 10], [20, 20]], np.float32)
    out, missing = _replace_rows(base, ["a", "b", "c"], ["c", "a"], new)
    # "b" was not in the multi-scale pass: it keeps its row, the others take theirs by name, not position
    assert missing == 1 and out.tolist() == [[20, 20], [2, 3], [10, 10]]
    assert base.tolist() == [[0, 1], [2, 3], [4, 5]]  # the single-scale rows are untouched


@pytest.mark.real_minimums
def test_a_stage_is_not_validated_on_too_few_queries():
    from landmark.evaluation.calibration import MIN_VALIDATION_QUERIES, Validation, too_few_to_validate

    def validation(n):
        space = Space(
            np.zeros((50, 4), np.float32), np.zeros((n, 4), np.float32), np.zeros(50, np.int64), np.zeros(n, np.int64)
        )
        return Validation(space, lambda ranks: 0.0, 0, "by photo")

    assert MIN_VALIDATION_QUERIES == 30
    assert "no labelled photos" in too_few_to_validate(None)
    assert "29 validation queries" in too_few_to_validate(validation(29))
    assert too_few_to_validate(validation(30)) is None
