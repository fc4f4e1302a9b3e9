"""Mutual nearest neighbours + ratio test on constructed descriptors."""

from __future__ import annotations

import numpy as np

from landmark.features.local import rootsift
from landmark.retrieval import matching
from landmark.retrieval.matching import match_many, match_pair, prepare


def sift_like(n, seed):
    return np.random.default_rng(seed).integers(0, 120, (n, 128)).astype(np.uint8)


def test_permuted_copy_matches_exactly():
    a = sift_like(200, 0)
    perm = np.random.default_rng(1).permutation(200)
    m = match_pair(prepare(a), prepare(a[perm]), ratio=0.8)
    assert len(m) == 200
    assert np.array_equal(perm[m[:, 1]], m[:, 0])  # b[j] = a[perm[j]]


def test_ratio_test_drops_ambiguous_and_mutual_drops_one_sided():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(3, 128)) ** 2
    # query 0 has a unique match; query 1 has two equally good candidates; query 2 has none
    q = np.stack([base[0], base[1], rng.normal(size=128) ** 2])
    twin = base[1] + rng.normal(scale=1e-3, size=128) ** 2
    c = np.stack([base[0], base[1], twin])
    qp, cp = prepare(rootsift(q)), prepare(rootsift(c))
    loose = {tuple(x) for x in match_pair(qp, cp, ratio=1.0, mutual=False)}
    strict = {tuple(x) for x in match_pair(qp, cp, ratio=0.8, mutual=True)}
    assert (0, 0) in strict
    assert not any(i == 1 for i, _ in strict)  # ambiguous: removed by the ratio test
    assert any(i == 1 for i, _ in loose)
    # with the ratio test off, mutual NN still keeps a one-to-one set
    mutual = match_pair(qp, cp, ratio=1.0, mutual=True)
    assert len(set(mutual[:, 0])) == len(mutual) and len(set(mutual[:, 1])) == len(mutual)


def test_match_many_equals_pairwise_and_float_path(monkeypatch):
    q = prepare(sift_like(150, 3))
    cands = [prepare(sift_like(n, 10 + n)) for n in (0, 40, 150, 7)]
    cands.append(prepare(np.concatenate([sift_like(30, 3)[:30], sift_like(20, 99)])))  # shares 30 with q
    batched = match_many(q, cands, ratio=0.9)
    for c, m in zip(cands, batched):
        assert np.array_equal(m, match_pair(q, c, ratio=0.9))
    assert len(batched[-1]) >= 30 and len(batched[0]) == 0
    monkeypatch.setattr(matching, "_INT_MM", False)  # the float32 fallback gives identical results
    for a, b in zip(batched, match_many(q, cands, ratio=0.9)):
        assert np.array_equal(a, b)


def test_binary_descriptors_use_hamming():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (50, 32)).astype(np.uint8)
    b = a.copy()
    b[:, 0] ^= 0b00000111  # 3 bits off everywhere: still the nearest
    m = match_pair(prepare(a, "orb"), prepare(b, "orb"), ratio=0.8)
    assert len(m) == 50 and np.array_equal(m[:, 0], m[:, 1])
    sims = matching.similarities(prepare(a, "orb").mat, prepare(b, "orb").mat)
    assert sims[0, 0] == 256 - 2 * 3
