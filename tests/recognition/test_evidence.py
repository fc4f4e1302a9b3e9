"""A query's own evidence beats a similarity threshold: a unanimous top-k vote whose neighbours are
verified with local features is kept whatever the distractor filter or the object prior say."""

import dataclasses

import numpy as np
import pytest

from landmark.config import RecognitionConfig, load_config
from landmark.features.local import LocalFeatures
from landmark.index.local import LocalStore
from landmark.pipeline import Recognising, StoreContext
from landmark.recognition.filters import DetectorDecision, PriorDecision
from landmark.recognition.knn import knn_vote
from landmark.recognition.pipeline import Evidence, decide, neighbour_inliers

UNANIMOUS = ([7, 7, 7, 7, 7], [0.80, 0.78, 0.75, 0.74, 0.70])
SPLIT = ([7, 7, 7, 7, 3], [0.80, 0.78, 0.75, 0.74, 0.70])  # 4 of 5: not unanimous
# the Space Needle case: min of top-3 similarities to known non-landmarks 0.6035 > the calibrated 0.577
CFG = RecognitionConfig(distractor_threshold=0.577, frequent_rerank=False)


def _evidence(rows, inliers=None, distractor=0.6035, prior=None, detector=None) -> Evidence:
    labels = np.array([r[0] for r in rows], np.int64)
    scores = np.array([r[1] for r in rows], np.float32)
    ev = Evidence(
        [f"q{i}" for i in range(len(rows))],
        labels,
        scores,
        [[f"n{i}{j}" for j in range(labels.shape[1])] for i in range(len(rows))],
        knn_vote(labels, scores, 5),
    )
    ev.distractor = np.full(len(rows), distractor, np.float32)
    ev.inliers = None if inliers is None else np.array(inliers, np.int32)
    ev.prior, ev.detector = prior, detector
    return ev


def test_a_unanimous_verified_vote_overrules_the_distractor_filter():
    ev = _evidence([UNANIMOUS], inliers=[[12, 3, -1, 0, 171]])
    d = decide(ev, CFG)[0]
    assert d.grade != "non-landmark" and d.landmark_id == 7
    assert d.evidence["filters"]["non_landmark"] == []
    assert d.evidence["filters"]["overruled_by_evidence"] == ["distractor"]
    v = d.evidence["verification"]
    assert v["best_inliers"] == 171 and v["needed"] == 8 and v["unanimous"] and v["shows_landmark"]
    assert v["inliers"] == [12, 3, None, 0, 171]
    # without the evidence (today's decision) the same query is filtered
    assert decide(_evidence([UNANIMOUS]), CFG)[0].grade == "non-landmark"
    assert "verification" not in decide(_evidence([UNANIMOUS]), CFG)[0].evidence


@pytest.mark.parametrize(
    "rows, inliers",
    [
        (SPLIT, [[50, 40, 30, 20, 10]]),  # verified, but one neighbour votes another landmark
        (UNANIMOUS, [[7, 7, 6, 0, -1]]),  # unanimous, but fewer than 8 inliers with any neighbour
        (UNANIMOUS, [[-1, -1, -1, -1, -1]]),  # no neighbour verified (the query had no local features)
    ],
)
def test_without_both_a_unanimous_vote_and_verified_inliers_the_filter_stands(rows, inliers):
    d = decide(_evidence([rows], inliers=inliers), CFG)[0]
    assert d.grade == "non-landmark"
    assert d.evidence["filters"]["non_landmark"] == ["distractor"]
    assert d.evidence["filters"]["overruled_by_evidence"] == []
    assert d.evidence["verification"]["shows_landmark"] is False


def test_the_object_prior_is_overruled_too_but_not_the_detector_nor_a_switched_off_rule():
    obj = PriorDecision("non_landmark", 0.0, 0.9, "food")
    ev = _evidence(
        [UNANIMOUS, UNANIMOUS],
        inliers=[[20, 0, 0, 0, 0]] * 2,
        prior=[obj, obj],
        detector=[None, DetectorDecision("non_landmark", "a person covers 80% of the photo")],
    )
    kept, detected = decide(ev, CFG)
    assert kept.grade == "A3" and kept.evidence["filters"]["overruled_by_evidence"] == ["object_prior", "distractor"]
    assert detected.grade == "non-landmark" and detected.evidence["filters"]["non_landmark"] == ["detector"]
    assert detected.evidence["filters"]["overruled_by_evidence"] == ["distractor"]
    off = decide(ev, dataclasses.replace(CFG, evidence_overrules=False))
    assert [d.grade for d in off] == ["non-landmark"] * 2
    assert off[0].evidence["filters"]["non_landmark"] == ["object_prior", "distractor"]
    stricter = decide(ev, dataclasses.replace(CFG, evidence_inliers=21))
    assert stricter[0].grade == "non-landmark"


def test_an_overruled_query_ranks_in_its_grade_and_is_not_dropped():
    ev = _evidence([UNANIMOUS, SPLIT], inliers=[[12, 0, 0, 0, 0], [12, 0, 0, 0, 0]])
    kept, filtered = decide(ev, dataclasses.replace(CFG, filtered="drop"))
    assert kept.landmark_id == 7 and kept.score > 0
    assert filtered.landmark_id is None and filtered.score == 0.0


def test_neighbour_inliers_verifies_only_present_neighbours_of_queries_with_features():
    calls = []

    def inliers_of(feats, keys):
        calls.append((feats, keys))
        return [10 * len(k) for k in keys]

    keys = [["a", "bb", None], ["c", None, None], ["dddd", "e", "f"]]
    got = neighbour_inliers(keys, 3, iter(["F0", None, "F2"]), inliers_of)
    assert got.tolist() == [[10, 20, -1], [-1, -1, -1], [40, 10, 10]]
    assert calls == [("F0", ["a", "bb"]), ("F2", ["dddd", "e", "f"])]
    assert neighbour_inliers(keys, 2, iter(["F0", "F1", None]), inliers_of).shape == (3, 2)


# -- filling the evidence from a tiny store's local features ------------------------------------------
SIG = {"kind": "rootsift", "image_size": 1024, "max_keypoints": 1000, "opencv": "4"}


def _scene(n, seed):
    """Random keypoints and descriptors; a 'view' of it is a shifted copy with some points dropped."""
    rng = np.random.default_rng(seed)
    kp = np.column_stack([rng.uniform(0, 500, (n, 2)), np.full(n, 5.0), np.zeros(n)]).astype(np.float16)
    return LocalFeatures(kp, rng.integers(0, 120, (n, 128)).astype(np.uint8), 1.0, 600, 600)


def _view(f, shift, keep, seed):
    idx = np.sort(np.random.default_rng(seed).choice(len(f), keep, replace=False))
    kp = np.array(f.keypoints[idx], np.float32)
    kp[:, :2] += shift
    return LocalFeatures(kp.astype(np.float16), f.descriptors[idx], 1.0, 600, 600)


def _local_only(local: LocalStore) -> Recognising:
    """The recognition part over a bare :class:`LocalStore` (no model, no global store)."""
    ctx = StoreContext.__new__(StoreContext)
    ctx.local, ctx.config, ctx._verifier = local, load_config(), None
    return Recognising(ctx, embedding=None)


def test_verify_neighbours_fills_the_inliers_that_keep_a_query(tmp_path):
    tower = _scene(300, 0)
    stored = LocalStore.create(tmp_path / "local", SIG)
    stored.add(["t1", "t2", "other"], [_view(tower, (10, 5), 200, 1), _view(tower, (-20, 30), 150, 2), _scene(300, 3)])
    queries = LocalStore.create(tmp_path / "queries", SIG)  # as `landmark evaluate` caches its test queries
    queries.add(["q0"], [_view(tower, (0, 0), 250, 4)])
    labels = np.array([[7, 7, 7], [7, 7, -1]])
    ev = Evidence(
        ["q0", "q1"],
        labels,
        np.full((2, 3), 0.7, np.float32),
        [["t1", "other", "t2"], ["t1", "t2", None]],
        knn_vote(labels, np.full((2, 3), 0.7), 3),
        distractor=np.array([0.9, 0.9], np.float32),
    )
    rec = _local_only(stored)
    assert rec.verify_neighbours(ev, queries) is ev  # q1 has no local features: unverified
    assert ev.inliers.shape == (2, 3) and ev.inliers[0, 0] > 50 and ev.inliers[0, 2] > 50 and ev.inliers[0, 1] < 8
    assert (ev.inliers[1] == -1).all()
    cfg = RecognitionConfig(k=3, distractor_threshold=0.8)
    kept, unverified = decide(ev, cfg)
    assert kept.grade != "non-landmark" and kept.evidence["filters"]["overruled_by_evidence"] == ["distractor"]
    assert unverified.grade == "non-landmark"
    # a mapping by id does the same; a store without local features leaves the evidence unverified
    again = dataclasses.replace(ev, inliers=None)
    assert np.array_equal(rec.verify_neighbours(again, queries.get(["q0"])).inliers, ev.inliers)
    bare = dataclasses.replace(ev, inliers=None)
    assert _local_only(LocalStore.create(tmp_path / "empty", SIG)).verify_neighbours(bare, queries).inliers is None
