"""``Landmarks.expand`` (DBA through the index) and search over its augmented vectors, on real stores made
with the stand-in network (tests/stand_ins.py)."""

from __future__ import annotations

import numpy as np
import pytest

from landmark.api import Landmarks
from landmark.config import load_config
from landmark.retrieval import ExpandedSearch
from landmark.retrieval.augment import IndexedExpansion
from stand_ins import noise_photos, unit_of, use_content_extractor

# expansion.search_max=5: more photos than that go through the index, as a large store's do
CONFIG = [
    "whitening.kind=none",
    "local.enabled=false",
    "rerank.enabled=false",
    "category.enabled=false",
    "expansion.search_max=5",
    "expansion.verify=threshold",
    "expansion.threshold=0.3",
]


@pytest.fixture
def lm(monkeypatch, tmp_path):
    use_content_extractor(monkeypatch)
    lm = Landmarks.create(tmp_path / "store", load_config(overrides=CONFIG))
    for lab in range(3):
        names = [f"l{lab}-{i}.png" for i in range(8)]
        lm.add_photos(noise_photos(tmp_path / f"photos{lab}", names, seed=lab), landmark_id=lab, progress=False)
    return lm


def test_search_goes_through_the_augmented_vectors_and_equals_the_exact_expansion(lm, tmp_path):
    photos = sorted((tmp_path / "photos1").glob("*.png"))[:3]
    assert not lm.searching.in_memory and not lm.searching.expands_by_default  # never calibrated
    report = lm.expand(progress=False)
    assert report.augmented == 24 and report.status.current and lm.searching.augmented_current
    got = lm.search([str(p) for p in photos], k=10, expand=True)
    assert isinstance(lm.searching.expanded_search(), IndexedExpansion) and lm.searching.expanded_search().dba
    exact = ExpandedSearch(lm.store, lm.config.expansion, vote_k=lm.recognising.recognition_config.k)
    want = exact.rank(np.stack([unit_of(p.read_bytes()) for p in photos]), 10)
    assert [[m.id for m in o.matches] for o in got] == [w.keys for w in want]
    assert np.allclose([[m.score for m in o.matches] for o in got], [w.scores for w in want], atol=1e-5)
    plain = lm.search([str(p) for p in photos], k=10, expand=False)
    assert not np.allclose([[m.score for m in o.matches] for o in got], [[m.score for m in o.matches] for o in plain])


def test_photos_added_after_the_job_are_augmented_when_added(lm, tmp_path):
    lm.expand(progress=False)
    new = noise_photos(tmp_path / "later", ["n0.png", "n1.png"], seed=7)
    lm.add_photos(new, landmark_id=1, progress=False)
    assert lm.searching.augmented_current  # no second run needed
    top = lm.search([str(new[0])], k=1, expand=True)[0].matches[0]
    assert top.id == "n0"
    assert lm.remove(["n1"]) == 1 and lm.searching.augmented_current  # removed in the store's commit
    assert "n1" not in [m.id for m in lm.search([str(new[1])], k=30, expand=True)[0].matches]
