"""`ExpandedSearch`: DBA / alpha-QE over a store, as `Landmarks.search` and `landmark evaluate` run it."""

import dataclasses

import numpy as np
import pytest

from landmark.config import ExpansionConfig, load_config
from landmark.evaluation.spaces import Space, retrieve_scored
from landmark.index import Store
from landmark.recognition.knn import voted_labels
from landmark.retrieval import ExpandedSearch, rank

from ..store_helpers import SIG, four_landmarks


@pytest.fixture
def data(tmp_path):
    return four_landmarks(tmp_path / "s")


@pytest.mark.parametrize("verify", ["none", "vote", "threshold", "vote+threshold"])
@pytest.mark.parametrize("dba_on,qe_on", [(True, True), (True, False), (False, True)])
def test_same_ranking_as_the_array_pipeline_evaluate_measures(data, verify, dba_on, qe_on):
    ec = ExpansionConfig(dba=dba_on, qe=qe_on, verify=verify, threshold=0.5)
    got = ExpandedSearch(data.store, ec, ["index"], vote_k=5).rank(data.queries, 20)
    space = Space.with_votes(data.index, data.queries, data.train, np.repeat([10, 11, 12, 13], 6), 5)
    sims, idx = retrieve_scored(space, ec, dba_on=dba_on, qe_on=qe_on, k=20)
    assert [r.keys for r in got] == [[f"i{j}" for j in row] for row in idx]
    assert np.allclose([r.scores for r in got], sims, atol=1e-5)


def test_expansion_changes_the_ranking_and_off_is_plain_search(data):
    store = data.store
    plain = rank(store, data.queries, 20, splits=["index"])
    off = ExpandedSearch(store, ExpansionConfig(dba=False, qe=False), ["index"]).rank(data.queries, 20)
    assert [r.keys for r in off] == [r.keys for r in plain]
    on = ExpandedSearch(store, ExpansionConfig(), ["index"]).rank(data.queries, 20)
    assert [r.keys for r in on] != [r.keys for r in plain]
    assert all(np.all(np.diff(r.scores) <= 1e-6) for r in on)


def test_vote_labels_come_from_labels_or_the_labelled_photos(data):
    store = data.store
    ex = ExpandedSearch(store, ExpansionConfig(dba=False), None, vote_k=5)  # every stored photo
    assert ex.keys[:24] == [f"t{i}" for i in range(24)]
    assert ex.labels[:24].tolist() == np.repeat([10, 11, 12, 13], 6).tolist()  # their own labels
    # the unlabelled photos get the vote of their 5 nearest labelled photos, as recognition predicts
    res = store.search(data.index, 5, labelled_only=True)
    assert ex.labels[24:].tolist() == voted_labels(res.landmark_ids, res.scores, 5).tolist()
    assert set(ex.labels[24:].tolist()) <= {10, 11, 12, 13}


def test_empty_database_and_no_queries(data, tmp_path):
    store = data.store
    empty = Store.create(tmp_path / "e", load_config(), SIG)
    assert [r.keys for r in ExpandedSearch(empty, ExpansionConfig()).rank(data.queries[:2], 5)] == [[], []]
    assert ExpandedSearch(store, ExpansionConfig(), ["index"]).rank(np.zeros((0, 8), np.float32), 5) == []
    # k beyond the database size returns the whole database, ranked
    ex = ExpandedSearch(store, dataclasses.replace(ExpansionConfig(), qe=False), ["index"])
    assert sorted(ex.rank(data.queries[:1], 500)[0].keys) == sorted(store.keys("index"))
