"""The store's second vector set (augmented vectors, landmark.index.augmented): committed parts, their
index, and removals that take a photo's rows with it in the store's own commit."""

import sqlite3

import numpy as np
import pytest

from landmark.config import load_config
from landmark.index import Store
from landmark.index.augmented import MISSING, AugmentedVectors
from store_helpers import SIG, unit

SETTINGS = {"verify": "vote", "threshold": None, "shortlist": 300, "vote_k": 5}


@pytest.fixture
def store(tmp_path):
    st = Store.create(tmp_path / "s", load_config(), SIG)
    st.add([f"p{i}" for i in range(6)], unit(6), landmark_ids=[1, 1, 2, None, None, None])
    return st


def test_parts_are_committed_then_indexed_and_searched(store):
    aug = AugmentedVectors(store)
    assert aug.state() is None and aug.index() is None and aug.todo().tolist() == [1, 2, 3, 4, 5, 6]
    assert aug.start(SETTINGS) and not aug.start(SETTINGS)  # the second call goes on with it
    v = unit(6, seed=9)
    aug.add_part(np.array([1, 2, 3]), ["p0", "p1", "p2"], v[:3])
    assert aug.todo().tolist() == [4, 5, 6] and aug.counts() == (0, 3) and aug.index() is None
    aug.add_part(np.array([4, 5, 6]), ["p3", "p4", "wrong"], v[3:])  # row 6 holds another photo: left out
    assert aug.todo().tolist() == [6]
    aug.add_part(np.array([6]), ["p5"], v[5:])
    assert aug.finish() and aug.counts() == (6, 0) and aug.indexed and not aug.finish()
    assert sorted(p.name for p in aug.root.iterdir()) == ["index-000001.faiss"]  # the parts are gone
    assert np.allclose(aug.vectors(np.array([5, 1])), v[[4, 0]])
    scores, rows = aug.search(v[[2]], 2)
    assert rows[0, 0] == 3 and scores[0, 0] == pytest.approx(1.0)
    assert aug.current(SETTINGS) and not aug.current({**SETTINGS, "vote_k": 7})


def test_a_removed_photo_takes_its_rows_with_it_and_searches_skip_it(store):
    aug = AugmentedVectors(store)
    aug.start(SETTINGS)
    v = unit(6, seed=9)
    aug.add_part(np.arange(1, 7), [f"p{i}" for i in range(6)], v)
    aug.set_votes(np.array([4, 5]), ["p3", "p4"], np.array([2, -1]))
    aug.finish()
    labels = aug.labels()
    assert labels.tolist() == [-1, 1, 1, 2, 2, -1, MISSING]  # row 0 is no photo's; p5 has no vote yet
    store.remove(["p3"])
    conn = sqlite3.connect(store.root / "meta.sqlite")
    assert conn.execute("SELECT count(*) FROM augmented WHERE row = 4").fetchone()[0] == 0
    assert conn.execute("SELECT row FROM votes").fetchall() == [(5,)]
    assert aug.current(SETTINGS)  # every stored photo is still augmented
    scores, rows = aug.search(v[[3]], 6)
    assert 4 not in rows[0] and rows[0, -1] == -1 and np.isinf(scores[0, -1])  # 5 photos left
    assert aug.finish() and aug.index().ntotal == 5


def test_other_settings_begin_anew_and_a_restart_drops_the_votes(store):
    aug = AugmentedVectors(store)
    aug.start(SETTINGS)
    aug.add_part(np.array([1]), ["p0"], unit(1))
    aug.set_votes(np.array([4]), ["p3"], np.array([2]))
    assert aug.start({**SETTINGS, "threshold": 0.5})
    assert aug.counts() == (0, 0) and aug.labels()[4] == 2 and not aug.root.exists()  # votes kept
    assert aug.start({**SETTINGS, "threshold": 0.5}, restart=True) and aug.labels()[4] == MISSING


def test_a_store_made_before_augmented_vectors_opens_and_gets_their_tables(tmp_path):
    st = Store.create(tmp_path / "s", load_config(), SIG)
    st.add(["a", "b"], unit(2))
    st.close()
    conn = sqlite3.connect(tmp_path / "s" / "meta.sqlite")
    conn.execute("DROP TABLE augmented")
    conn.execute("DROP TABLE votes")
    conn.commit()
    conn.close()
    again = Store.open(tmp_path / "s")
    again.remove(["a"])  # deletes from the tables the open made
    assert AugmentedVectors(again).todo().tolist() == [2]
