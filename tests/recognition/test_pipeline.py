"""The recognizer's store-side evidence: which photos count as known non-landmarks."""

import numpy as np

from landmark.config import RecognitionConfig, load_config
from landmark.index import Store
from landmark.recognition.filters import PROBE_NAME, ClassGroups
from landmark.recognition.pipeline import DISTRACTOR_SPLIT, Recognizer, nearest_other
from store_helpers import SIG

TOWER = np.eye(8, dtype=np.float32)[0]


def _around(direction, n, seed, spread=0.05):
    rng = np.random.default_rng(seed)
    v = direction + spread * rng.normal(size=(n, len(direction)))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _object_pairs(n_pairs, seed):
    """UKBench-like: each object photographed twice, all far from the tower."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_pairs, 8))
    centres[:, 0] = -np.abs(centres[:, 0]) - 1.0
    return np.concatenate([_around(c / np.linalg.norm(c), 2, seed + i, 0.02) for i, c in enumerate(centres)])


def _groups_and_objects():
    groups = ClassGroups.load()
    objects = np.zeros(len(groups.names), np.float32)
    objects[list(groups.names).index("food")] = 1.0  # the prior calls these photos objects
    return groups, objects


def test_nearest_other_skips_the_row_itself():
    pool = np.array([[1, 0], [0.8, 0.6], [0, 1]], np.float32)
    got = nearest_other(pool[1:], pool, offset=1)
    assert np.allclose(got, [0.8, 0.6])
    assert np.isneginf(nearest_other(pool[:1], pool[:1], offset=0)).all()


def test_flagged_photos_nearer_to_a_labelled_landmark_are_not_known_non_landmarks(tmp_path):
    groups, objects = _groups_and_objects()
    st = Store.create(tmp_path / "s", load_config(), SIG)
    st.add([f"lab{i}" for i in range(6)], _around(TOWER, 6, 0, 0.01), landmark_ids=[7] * 6, split="train")
    unlabelled = np.concatenate([_around(TOWER, 3, 1), _object_pairs(3, 10)])
    keys = [f"tower{i}" for i in range(3)] + [f"obj{i}" for i in range(6)]
    st.add(keys, unlabelled, split="index", extras={PROBE_NAME: np.tile(objects, (9, 1))})
    st.add(["given"], _around(TOWER, 1, 3), split=DISTRACTOR_SPLIT)  # user-given: kept whatever it looks like
    known, vecs = Recognizer(st, RecognitionConfig(), groups=groups).known_non_landmarks()
    assert sorted(known) == ["given"] + [f"obj{i}" for i in range(6)]
    assert vecs.shape == (7, 8) and np.allclose(vecs[0], st.vectors(["given"])[0])
    # without labelled photos nothing says landmark: every flagged photo counts
    bare = Store.create(tmp_path / "b", load_config(), SIG)
    bare.add(keys, unlabelled, split="index", extras={PROBE_NAME: np.tile(objects, (9, 1))})
    assert sorted(Recognizer(bare, RecognitionConfig(), groups=groups).known_non_landmarks()[0]) == sorted(keys)


def test_flagged_queries_join_the_distractor_set_only_when_nearer_to_it_than_to_a_landmark(tmp_path):
    groups, objects = _groups_and_objects()
    st = Store.create(tmp_path / "s", load_config(), SIG)
    st.add([f"lab{i}" for i in range(6)], _around(TOWER, 6, 0, 0.01), landmark_ids=[7] * 6, split="train")
    st.add(
        [f"obj{i}" for i in range(4)],
        _object_pairs(2, 20),
        split="index",
        extras={PROBE_NAME: np.tile(objects, (4, 1))},
    )
    queries = np.concatenate([_around(TOWER, 4, 5), _object_pairs(1, 30)[:1]])  # 4 tower photos, 1 new object
    probs = np.tile(objects, (5, 1))
    probs[3] = np.nan  # the 4th tower photo is not flagged
    cfg = RecognitionConfig(distractor_k=3)
    ev = Recognizer(st, cfg, groups=groups).gather(queries, [f"q{i}" for i in range(5)], prior_probs=probs)
    assert [p.decision for p in ev.prior[:3]] == ["non_landmark"] * 3
    assert ev.distractor_set == 4 + 1  # the stored objects + the new object photo
    assert ev.distractor[3] < 0.5  # the tower query stays far from them


def test_a_query_whose_landmark_part_the_detector_found_is_no_batch_distractor(tmp_path):
    from landmark.recognition.filters import DetectorDecision

    groups, objects = _groups_and_objects()
    st = Store.create(tmp_path / "s", load_config(), SIG)
    st.add([f"lab{i}" for i in range(6)], _around(TOWER, 6, 0, 0.01), landmark_ids=[7] * 6, split="train")
    st.add(
        [f"obj{i}" for i in range(4)],
        _object_pairs(2, 20),
        split="index",
        extras={PROBE_NAME: np.tile(objects, (4, 1))},
    )
    queries = _object_pairs(1, 40)  # two photos the prior calls objects
    rec = Recognizer(st, RecognitionConfig(distractor_k=3), groups=groups)
    both = rec.gather(queries, ["a", "b"], prior_probs=np.tile(objects, (2, 1)))
    assert both.distractor_set == 4 + 2
    # a landmark part found in "a" overrules the prior: "a" is neither filtered nor a distractor for others
    found = [DetectorDecision("landmark", "Tower 0.90"), None]
    one = rec.gather(queries, ["a", "b"], prior_probs=np.tile(objects, (2, 1)), detections=found)
    assert one.distractor_set == 4 + 1


def test_the_classifier_of_a_whitened_store_reads_the_queries_unwhitened_descriptors(tmp_path):
    """Store vectors (whitened) feed the kNN vote; the head reads the descriptors passed beside them, and
    predicts nothing without them rather than misreading whitened vectors."""
    import torch

    from landmark.models.heads import ArcFace
    from landmark.recognition.classifier import LandmarkClassifier

    store = Store.create(tmp_path / "s", load_config(), SIG)
    store.add(["a", "b"], np.eye(8, dtype=np.float32)[:2], landmark_ids=[1, 2], split="train")
    torch.manual_seed(0)
    clf = LandmarkClassifier.from_payload(
        {"head": ArcFace(16, 3).state_dict(), "head_kind": "arcface", "classes": [1, 2, 3]}
    ).reading_unwhitened()
    rec = Recognizer(store, RecognitionConfig(), clf, None)
    queries = np.eye(8, dtype=np.float32)[:2]  # in the store's (whitened) space
    raw = _around(np.eye(16)[3], 2, 0)  # 16-d: what the trained head reads
    ev = rec.gather(queries, ["q0", "q1"], descriptors=raw)
    want = clf.predict(raw, 5)
    assert np.array_equal(ev.classifier.labels, want.labels) and np.allclose(ev.classifier.probs, want.probs)
    assert [v.landmark_id for v in ev.votes] == [1, 2]
    assert rec.gather(queries, ["q0", "q1"]).classifier is None


def test_a_region_that_sees_the_landmark_wins_the_vote(tmp_path):
    """The whole frame is nearest to landmark 2 (a wide view); one region of it shows landmark 1 close up."""
    store = Store.create(tmp_path / "s", load_config(), SIG)
    e = np.eye(8, dtype=np.float32)
    store.add(
        [f"t{i}" for i in range(3)] + [f"w{i}" for i in range(3)],
        np.concatenate([_around(e[0], 3, 1), _around(e[1], 3, 2)]),
        landmark_ids=[1] * 3 + [2] * 3,
        split="train",
    )
    query = (0.6 * e[0] + 0.8 * e[1])[None]  # the frame: more like landmark 2
    regions = np.stack([e[0] * 0.99 + 0.14 * e[5], e[3]])[None]  # a region on landmark 1, one on nothing
    regions /= np.linalg.norm(regions, axis=2, keepdims=True)
    rec = Recognizer(store, RecognitionConfig(k=3))
    plain = rec.gather(query, ["q"])
    assert plain.votes[0].landmark_id == 2
    ev = rec.gather(query, ["q"], regions=regions)
    assert ev.votes[0].landmark_id == 1 and ev.votes[0].votes == 3
    assert sorted(ev.keys[0]) == ["t0", "t1", "t2"] and ev.labels[0].tolist() == [1, 1, 1]
    assert np.allclose(ev.scores[0], np.sort(regions[0, 0] @ store.vectors(ev.keys[0]).T)[::-1], atol=1e-5)
    # switched off (no regions, no zoom), the other views are ignored; the zoomed read alone is one
    off = Recognizer(store, RecognitionConfig(k=3, regions=1, zoom=1.0)).gather(query, ["q"], regions=regions)
    assert off.votes[0].landmark_id == 2
    zoom_only = Recognizer(store, RecognitionConfig(k=3, regions=1, zoom=2.0)).gather(query, ["q"], regions=regions)
    assert zoom_only.votes[0].landmark_id == 1
