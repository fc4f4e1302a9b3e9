"""The local-feature inverted index: votes find the photos that share descriptors; save/load; merging."""

from __future__ import annotations

import numpy as np

from landmark.features.local import LocalFeatures
from landmark.index.local import LocalStore
from landmark.retrieval.inverted import LocalInvertedIndex, merge_shortlists

SIG = {"kind": "rootsift", "image_size": 1024, "max_keypoints": 1000, "opencv": "4"}


def _feats(desc):
    n = len(desc)
    return LocalFeatures(np.zeros((n, 4), np.float16), desc, 1.0, 100, 100)


def test_votes_rank_photos_sharing_descriptors(tmp_path):
    rng = np.random.default_rng(0)
    scenes = [rng.integers(0, 120, (300, 128)).astype(np.uint8) for _ in range(3)]
    st = LocalStore.create(tmp_path / "local", SIG)
    keys, feats = [], []
    for s, desc in enumerate(scenes):  # two photos per scene, each a different half-overlapping subset
        for v in range(2):
            idx = rng.choice(300, 200, replace=False)
            keys.append(f"s{s}v{v}")
            feats.append(_feats(desc[idx]))
    st.add(keys, feats)
    inv = LocalInvertedIndex.build(st, centres=8, nprobe=3)
    query = _feats(scenes[1][rng.choice(300, 150, replace=False)])
    top, votes = inv.search(query, k=3)
    assert set(top[:2]) == {"s1v0", "s1v1"} and votes[0] > 50
    assert (len(top) < 3) or votes[2] < votes[1] / 5  # other scenes get (almost) nothing
    inv.save(tmp_path / "inv.faiss")
    again = LocalInvertedIndex.load(tmp_path / "inv.faiss")
    assert np.array_equal(again.votes(query), inv.votes(query)) and again.keys == inv.keys


def test_merge_shortlists_appends_with_true_global_scores():
    keys, scores = merge_shortlists(
        ["a", "b"], [0.9, 0.5], ["c", "a", "d"], lambda ks: np.array([{"c": 0.7, "d": 0.1}[k] for k in ks])
    )
    assert keys == ["a", "c", "b", "d"] and np.allclose(scores, [0.9, 0.7, 0.5, 0.1])
