"""Inliers of stored photos with their stored neighbours: verified once, kept in the local store."""

from __future__ import annotations

import numpy as np

from landmark.config import RerankConfig
from landmark.features.local import LocalFeatures
from landmark.index.local import LocalStore
from landmark.retrieval.pairs import stored_pair_inliers, verifier_tag
from landmark.retrieval.verification import Verification


def _feats(seed: int) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    kp = np.column_stack([rng.uniform(0, 100, (5, 2)), np.ones((5, 2))]).astype(np.float16)
    return LocalFeatures(kp, rng.integers(0, 255, (5, 128)).astype(np.uint8), 1.0, 100, 100)


class CountingVerifier:
    """A verifier whose inliers are the sum of the two photos' numbers; it counts the pairs it verifies."""

    kind = "rootsift"

    def __init__(self, local: LocalStore, cfg: RerankConfig | None = None):
        self.local, self.cfg, self.pairs = local, cfg or RerankConfig(), []
        self.number = {k: int(k[1:]) for k in local.keys()}

    def stored(self, keys):
        return [(self.local[k], k) if k in self.local else None for k in keys]

    def verify(self, query, keys, prepared=None):
        self.pairs += [(prepared, k) for k in keys]
        return [Verification(inliers=self.number[prepared] + self.number[k]) for k in keys]


def test_pairs_are_verified_once_and_kept(tmp_path):
    local = LocalStore.create(tmp_path / "local", {"kind": "rootsift"})
    local.add(["p1", "p2", "p3"], [_feats(i) for i in range(3)])
    ver = CountingVerifier(local)
    got = stored_pair_inliers(ver, ["p1", "p2"], [["p1", "p2", "p3"], ["p2", "p1"]])
    assert got.tolist() == [[0, 3, 4], [0, 3, -1]]  # itself 0, padding -1
    assert sorted(ver.pairs) == [("p1", "p2"), ("p1", "p3"), ("p2", "p1")]
    again = CountingVerifier(LocalStore.open(tmp_path / "local"))
    assert stored_pair_inliers(again, ["p1", "p2"], [["p1", "p2", "p3"], ["p2", "p1"]]).tolist() == got.tolist()
    assert again.pairs == []  # all kept
    other = CountingVerifier(LocalStore.open(tmp_path / "local"), RerankConfig(ratio=0.9))
    assert verifier_tag(other) != verifier_tag(again)
    stored_pair_inliers(other, ["p1"], [["p2"]])
    assert other.pairs == [("p1", "p2")]  # other matching settings: verified again
