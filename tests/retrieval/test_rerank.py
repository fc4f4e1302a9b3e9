"""Re-ranking: the score combination, shortlist re-sorting, and verified-neighbour matrices."""

from __future__ import annotations

import dataclasses

import numpy as np

from landmark.config import RerankConfig
from landmark.features.local import LocalFeatures
from landmark.index.local import LocalStore
from landmark.retrieval.rerank import Verifier, combine, rerank, rerank_shortlist, verified_matrix

SIG = {"kind": "rootsift", "image_size": 1024, "max_keypoints": 1000, "opencv": "4"}


def test_combine_boosts_only_verified_and_saturates():
    cfg = dataclasses.replace(RerankConfig(), min_inliers=10, weight=1.0, saturation=50)
    s = combine(np.array([0.9, 0.5, 0.5, 0.4]), np.array([5, 10, 500, 50]), cfg)
    assert np.allclose(s, [0.9, 0.5 + 10 / 50, 1.5, 1.4])
    keys, scores = rerank(["a", "b", "c", "d"], [0.9, 0.5, 0.5, 0.4], np.array([5, 10, 500, 50]), cfg)
    assert keys == ["c", "d", "a", "b"] and np.all(np.diff(scores) <= 0)


def _scene(n, seed):
    """Random keypoints and descriptors; a 'view' of it is a shifted copy with some points dropped."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 500, (n, 2))
    kp = np.column_stack([xy, np.full(n, 5.0), np.zeros(n)]).astype(np.float16)
    return LocalFeatures(kp, rng.integers(0, 120, (n, 128)).astype(np.uint8), 1.0, 600, 600)


def _view(f, shift, keep, seed):
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(f), keep, replace=False))
    kp = np.array(f.keypoints[idx], np.float32)
    kp[:, :2] += shift
    return LocalFeatures(kp.astype(np.float16), f.descriptors[idx], 1.0, 600, 600)


def test_shortlist_rerank_and_verified_matrix(tmp_path):
    scene, other = _scene(300, 0), _scene(300, 1)
    st = LocalStore.create(tmp_path / "local", SIG)
    st.add(
        ["same1", "same2", "other", "blank"],
        [
            _view(scene, (10, 5), 200, 2),
            _view(scene, (-20, 30), 150, 3),
            other,
            LocalFeatures(np.zeros((0, 4), np.float16), np.zeros((0, 128), np.uint8)),
        ],
    )
    ver = Verifier(st, RerankConfig())
    query = _view(scene, (0, 0), 250, 4)
    r = rerank_shortlist(
        ver, query, ["other", "blank", "same2", "missing", "same1"], [0.9, 0.8, 0.7, 0.6, 0.5], top_k=4
    )
    assert r.keys[:2] == ["same2", "other"]  # same1 is beyond top_k: it stays at the bottom
    assert r.keys[-1] == "same1" and r.inliers[-1] == -1
    assert r.inliers[0] > 50 and r.inliers[1] < 12
    m = verified_matrix(st, ["same1", query], [["same2", "other", "blank"], ["same1"]], RerankConfig())
    assert m.shape == (2, 3) and m[1, 1] == -1 and m[1, 2] == -1
    verified = m >= RerankConfig().verified_inliers
    assert verified.tolist() == [[True, False, False], [True, False, False]]
    assert ver.timings.pairs == 4 and ver.timings.matching > 0


def test_threaded_verification_equals_serial(tmp_path):
    scene = _scene(300, 5)
    st = LocalStore.create(tmp_path / "local", SIG)
    keys = [f"v{i}" for i in range(6)]
    st.add(
        keys,
        [_view(scene, (3 * i, -2 * i), 120 + 20 * i, 10 + i) if i % 2 == 0 else _scene(200, 20 + i) for i in range(6)],
    )
    query = _view(scene, (0, 0), 250, 9)
    serial = Verifier(st, RerankConfig(), threads=1).inliers(query, keys)
    threaded = Verifier(st, RerankConfig(), threads=2).inliers(query, keys)
    assert np.array_equal(serial, threaded)
    assert (serial[::2] >= 50).all() and (serial[1::2] < 8).all()
